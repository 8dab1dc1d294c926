import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { hostError } from '../errors.js';
import { CHILD_PROGRAM, RUNTIME_LIBRARY } from '../paths.js';

/**
 * The host's end of the shared-memory channel to a plugin's child process
 * (src/runtime/isolation_channel.zig describes the layout and the
 * protocol; src/runtime/isolation_host.zig implements what is called here).
 * The header, the request area and the reply area are read and written in
 * place through views of the mapping.
 */

type Pointer = bigint;
type AsyncCallback<T> = (error: unknown, result: T) => void;

/** Header.op. */
export const Op = { LOAD: 1, INIT: 2, ENABLE: 3, DISABLE: 4, DEINIT: 5, HOOK: 6 } as const;
export type OpCode = (typeof Op)[keyof typeof Op];

/** What call() and wait() return. */
export const Outcome = { PENDING: 0, DONE: 1, DIED: -1, DEADLINE: -2 } as const;

/** Header.fault: a failure in the child outside the plugin's own return code. */
export const Fault = {
  NONE: 0,
  LOAD_DLOPEN: 1,
  LOAD_NO_MARKER: 2,
  LOAD_ABI: 3,
  LOAD_MISSING_EXPORT: 4,
  LOAD_NULL_METADATA: 5,
  CONTEXT_REFUSED: 6,
  CHANGES_TOO_LARGE: 7,
  CONFINE: 8,
  BAD_REQUEST: 9,
  LOAD_READ: 10,
} as const;

/** Byte offsets of the header fields read here, in the order of isolation_channel.zig `offsets`. */
export const HEADER_OFFSETS = Object.freeze({
  requestOffset: 16,
  requestBytesMax: 24,
  replyOffset: 32,
  replyBytesMax: 40,
  requestSeq: 128,
  op: 132,
  hookType: 136,
  requestLen: 144,
  replySeq: 256,
  kind: 260,
  code: 264,
  status: 268,
  replyLen: 272,
  fault: 280,
  abiVersion: 284,
  landlockAbi: 296,
});
export const HEADER_BYTES = 4096;
/** Header.status bit: the plugin set the context's cancel flag. */
export const STATUS_CANCEL = 1;

const I32 = {
  code: HEADER_OFFSETS.code / 4,
  status: HEADER_OFFSETS.status / 4,
  replyLenLow: HEADER_OFFSETS.replyLen / 4,
  replyLenHigh: HEADER_OFFSETS.replyLen / 4 + 1,
  fault: HEADER_OFFSETS.fault / 4,
  abiVersion: HEADER_OFFSETS.abiVersion / 4,
  landlockAbi: HEADER_OFFSETS.landlockAbi / 4,
};

interface Functions {
  create: (requestBytesMax: number, replyBytesMax: number, keyBytesMax: number, valueBytesMax: number, keysMax: number, memoryBytesMax: number, childSpinNs: number) => Pointer | null;
  base: (channel: Pointer) => Pointer;
  size: (channel: Pointer) => number;
  childFds: (channel: Pointer, out: Int32Array) => void;
  attach: (channel: Pointer, pid: number) => number;
  setGrants: (channel: Pointer, buf: Buffer, len: number) => number;
  setCounters: (channel: Pointer, name: Buffer, len: number) => number;
  countersDeniedWord: (channel: Pointer) => Pointer;
  denied: (channel: Pointer, out: Buffer, cap: number) => number;
  call: (channel: Pointer, op: number, hook: number, requestLen: number, spinNs: number) => number;
  wait: ((channel: Pointer, timeoutMs: number) => number) & { async: (channel: Pointer, timeoutMs: number, done: AsyncCallback<number>) => void };
  kill: (channel: Pointer) => void;
  cpuLimit: (channel: Pointer, pid: number, budgetS: number) => number;
  release: (channel: Pointer, offset: number, len: number) => void;
  destroy: (channel: Pointer) => void;
  offsets: (out: Uint32Array, cap: number) => number;
}

let functions: Functions | undefined;

function load(): Functions {
  if (functions) return functions;
  if (!existsSync(RUNTIME_LIBRARY) || !existsSync(CHILD_PROGRAM)) {
    throw hostError('SMTP_E_RUNTIME_MISSING', `the native host runtime (${RUNTIME_LIBRARY} and ${CHILD_PROGRAM}) is missing: run "npm run setup" (npm install does it)`);
  }
  const lib = koffi.load(RUNTIME_LIBRARY);
  functions = {
    create: lib.func('void *smtp_isolation_create(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t)'),
    base: lib.func('void *smtp_isolation_base(void *)'),
    size: lib.func('uint64_t smtp_isolation_size(void *)'),
    childFds: lib.func('void smtp_isolation_child_fds(void *, _Out_ int32_t *out)'),
    attach: lib.func('int32_t smtp_isolation_attach(void *, int32_t pid)'),
    setGrants: lib.func('int32_t smtp_isolation_set_grants(void *, const uint8_t *buf, size_t len)'),
    setCounters: lib.func('int32_t smtp_isolation_set_counters(void *, const uint8_t *name, size_t len)'),
    countersDeniedWord: lib.func('void *smtp_isolation_counters_denied_word(void *)'),
    denied: lib.func('intptr_t smtp_isolation_denied(void *, uint8_t *out, size_t cap)'),
    call: lib.func('int32_t smtp_isolation_call(void *, uint32_t op, int32_t hook, uint64_t len, uint64_t spin_ns)'),
    wait: lib.func('int32_t smtp_isolation_wait(void *, uint32_t timeout_ms)'),
    kill: lib.func('void smtp_isolation_kill(void *)'),
    cpuLimit: lib.func('int32_t smtp_isolation_cpu_limit(void *, int32_t pid, uint64_t budget_s)'),
    release: lib.func('void smtp_isolation_release(void *, uint64_t offset, uint64_t len)'),
    destroy: lib.func('void smtp_isolation_destroy(void *)'),
    offsets: lib.func('size_t smtp_isolation_offsets(_Out_ uint32_t *out, size_t cap)'),
  };
  return functions;
}

/** The header offsets as the runtime was built with them (for the layout test). */
export function runtimeHeaderOffsets(): number[] {
  const out = new Uint32Array(32);
  const count = load().offsets(out, out.length);
  return [...out.subarray(0, count)];
}

export interface ChannelSizes {
  readonly requestBytesMax: number;
  readonly replyBytesMax: number;
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly keysMax: number;
  readonly memoryBytesMax: number;
  readonly childSpinNs: number;
}

/** One channel, for one child process: made before the child is spawned, destroyed when it is gone. */
export class Channel {
  readonly #fns: Functions;
  readonly #pointer: Pointer;
  /** The header as 32-bit words (the fields read on every call). */
  readonly #words: Int32Array;
  /** The request area: the host writes the hook context (or the config) here. */
  readonly request: Buffer;
  /** The reply area: the child writes the changed keys (or the metadata, or a fault's text) here. */
  readonly reply: Buffer;
  readonly requestOffset: number;
  readonly replyOffset: number;
  /** The host's word set when the child's plugin called counter_incr without the grant (host memory, out of the child's reach). */
  readonly #countersDenied: Int32Array;
  #destroyed = false;

  constructor(sizes: ChannelSizes) {
    this.#fns = load();
    const pointer = this.#fns.create(sizes.requestBytesMax, sizes.replyBytesMax, sizes.keyBytesMax, sizes.valueBytesMax, sizes.keysMax, sizes.memoryBytesMax, sizes.childSpinNs);
    if (pointer === null || pointer === 0n) throw hostError('SMTP_E_METADATA_LIMIT', `the system refused a ${sizes.requestBytesMax + sizes.replyBytesMax}-byte shared memory channel for a plugin process`);
    this.#pointer = pointer;
    const memory = koffi.view(this.#fns.base(pointer), Number(this.#fns.size(pointer)));
    const view = new DataView(memory, 0, HEADER_BYTES);
    this.requestOffset = Number(view.getBigUint64(HEADER_OFFSETS.requestOffset, true));
    this.replyOffset = Number(view.getBigUint64(HEADER_OFFSETS.replyOffset, true));
    this.#words = new Int32Array(memory, 0, HEADER_BYTES / 4);
    this.request = Buffer.from(memory, this.requestOffset, Number(view.getBigUint64(HEADER_OFFSETS.requestBytesMax, true)));
    this.reply = Buffer.from(memory, this.replyOffset, Number(view.getBigUint64(HEADER_OFFSETS.replyBytesMax, true)));
    this.#countersDenied = new Int32Array(koffi.view(this.#fns.countersDeniedWord(pointer), 4));
  }

  /** The memfd and the child's socket end: the child's fds 3 and 4. */
  childFds(): [number, number] {
    const out = new Int32Array(2);
    this.#fns.childFds(this.#pointer, out);
    return [out[0]!, out[1]!];
  }

  /** Watches `pid` (a pidfd) and closes the descriptors the child took; false when it is gone already. */
  attach(pid: number): boolean {
    return this.#fns.attach(this.#pointer, pid) === 0;
  }

  setGrants(grants: readonly string[]): void {
    const text = Buffer.from(grants.join('\n'), 'utf8');
    if (this.#fns.setGrants(this.#pointer, text, text.length) !== 0) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not store the grants');
  }

  /** Grants the counters under `name` (the plugin's name), or refuses them (null). */
  setCounters(name: string | null): void {
    const text = Buffer.from(name ?? '', 'utf8');
    if (this.#fns.setCounters(this.#pointer, text, text.length) !== 0) throw hostError('SMTP_E_METADATA_LIMIT', `the plugin name "${name}" is too long for the counters`);
  }

  /** Whether a counter call was refused for want of allow_counters since the last look. */
  countersDenied(): boolean {
    return !this.#destroyed && Atomics.exchange(this.#countersDenied, 0, 0) !== 0;
  }

  /** The last address refused for want of a grant since the last look, or null. */
  deniedAddress(): string | null {
    const out = Buffer.alloc(256);
    const length = this.#fns.denied(this.#pointer, out, out.length);
    return length < 0 ? null : out.toString('utf8', 0, length);
  }

  /** Posts `op` and spins up to `spinNs` for the answer: Outcome.DONE or PENDING. */
  call(op: OpCode, hook: number, requestLen: number, spinNs: number): number {
    return this.#fns.call(this.#pointer, op, hook, requestLen, spinNs);
  }

  /** Waits on a thread of koffi's pool until the answer, the child's death or `timeoutMs` after the call (then the child is killed). */
  wait(timeoutMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#fns.wait.async(this.#pointer, timeoutMs, (error, outcome) => (error ? reject(error) : resolve(outcome)));
    });
  }

  kill(): void {
    if (!this.#destroyed) this.#fns.kill(this.#pointer);
  }

  /** Re-arms the child's RLIMIT_CPU: `budgetS` CPU seconds beyond what it used so far. */
  limitCpu(pid: number, budgetS: number): boolean {
    return this.#fns.cpuLimit(this.#pointer, pid, budgetS) === 0;
  }

  /** Gives back the pages of the request and reply areas past their first `keepBytes`. */
  releaseBeyond(keepBytes: number): void {
    this.#fns.release(this.#pointer, this.requestOffset + keepBytes, this.request.length - keepBytes);
    this.#fns.release(this.#pointer, this.replyOffset + keepBytes, this.reply.length - keepBytes);
  }

  get code(): number {
    return this.#words[I32.code]!;
  }

  get status(): number {
    return this.#words[I32.status]!;
  }

  /** Bytes of the reply area in use (negative with Fault.CHANGES_TOO_LARGE). */
  get replyLen(): number {
    return this.#words[I32.replyLenHigh]! * 2 ** 32 + (this.#words[I32.replyLenLow]! >>> 0);
  }

  get fault(): number {
    return this.#words[I32.fault]!;
  }

  get abiVersion(): number {
    return this.#words[I32.abiVersion]! >>> 0;
  }

  get landlockAbi(): number {
    return this.#words[I32.landlockAbi]!;
  }

  /** Kills the child if it runs and unmaps the memory: the views must not be used afterwards. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#fns.destroy(this.#pointer);
  }
}
