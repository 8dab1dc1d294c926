import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { hostError } from '../errors.js';
import { RUNTIME_LIBRARY } from '../paths.js';
import type { HookContext, MetadataLimits } from '../plugin/hook-context.js';
import { applyChanges, encodeEntries, scratchBuffer, type EncodedMetadata } from '../plugin/metadata-wire.js';

/** koffi pointers are BigInt in koffi 3. */
export type NativePointer = bigint;


type AsyncCallback<T> = (error: unknown, result: T) => void;

interface RuntimeFunctions {
  allocator: () => NativePointer;
  contextCreate: (keyBytesMax: number, valueBytesMax: number, keysMax: number) => NativePointer | null;
  contextDestroy: (ctx: NativePointer) => void;
  contextLoad: (ctx: NativePointer, hook: number, head: Buffer, headLen: number, tail: Buffer | null, tailLen: number) => number;
  contextApply: (ctx: NativePointer, buf: Buffer, len: number) => number;
  setGrants: (ctx: NativePointer, buf: Buffer, len: number) => number;
  denied: (ctx: NativePointer, out: Buffer, cap: number) => number;
  callHook: ((fn: NativePointer, ctx: NativePointer) => number) & { async: (fn: NativePointer, ctx: NativePointer, done: AsyncCallback<number>) => void };
  exitNow: (code: number) => void;
  setDeadline: (ctx: NativePointer, deadlineMs: number) => void;
  takeChanges: (ctx: NativePointer, out: Buffer, cap: number) => number;
  strnlen: (s: NativePointer, max: number) => number;
  netConnect: (ctx: NativePointer, address: Buffer, len: number, timeoutMs: number) => number;
  netSend: (ctx: NativePointer, handle: number, data: Uint8Array, len: number, timeoutMs: number) => number;
  netRecv: (ctx: NativePointer, handle: number, buf: Buffer, cap: number, timeoutMs: number) => number;
  netClose: (ctx: NativePointer, handle: number) => number;
  netCloseAll: (ctx: NativePointer) => void;
}

let runtime: RuntimeFunctions | undefined;

function loadRuntime(): RuntimeFunctions {
  if (runtime) return runtime;
  if (!existsSync(RUNTIME_LIBRARY)) {
    throw hostError('SMTP_E_RUNTIME_MISSING', `the native host runtime ${RUNTIME_LIBRARY} is missing: run "npm run build:native" (npm install does it)`);
  }
  const lib = koffi.load(RUNTIME_LIBRARY);
  runtime = {
    allocator: lib.func('void *smtp_host_allocator(void)'),
    contextCreate: lib.func('void *smtp_host_context_create(size_t, size_t, size_t)'),
    contextDestroy: lib.func('void smtp_host_context_destroy(void *ctx)'),
    contextLoad: lib.func('int smtp_host_context_load(void *ctx, int hook, const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len)'),
    contextApply: lib.func('int smtp_host_context_apply(void *ctx, const uint8_t *buf, size_t len)'),
    setGrants: lib.func('int smtp_host_context_set_grants(void *ctx, const uint8_t *buf, size_t len)'),
    denied: lib.func('size_t smtp_host_context_denied(void *ctx, uint8_t *out, size_t cap)'),
    callHook: lib.func('int64_t smtp_host_call_hook(void *fn, void *ctx)'),
    exitNow: lib.func('void smtp_host_exit_now(int code)'),
    setDeadline: lib.func('void smtp_host_context_set_deadline(void *ctx, int64_t deadline_ms)'),
    takeChanges: lib.func('int64_t smtp_host_take_changes(void *ctx, uint8_t *out, size_t cap)'),
    strnlen: lib.func('intptr_t smtp_host_strnlen(void *s, size_t max)'),
    netConnect: lib.func('int32_t smtp_host_net_connect(void *ctx, const uint8_t *address, size_t len, uint32_t timeout_ms)'),
    netSend: lib.func('int32_t smtp_host_net_send(void *ctx, int32_t handle, const uint8_t *data, size_t len, uint32_t timeout_ms)'),
    netRecv: lib.func('int32_t smtp_host_net_recv(void *ctx, int32_t handle, uint8_t *buf, size_t cap, uint32_t timeout_ms)'),
    netClose: lib.func('int32_t smtp_host_net_close(void *ctx, int32_t handle)'),
    netCloseAll: lib.func('void smtp_host_net_close_all(void *ctx)'),
  };
  return runtime;
}

/** Loads the runtime library in this thread (and keeps it loaded for the process's life). */
export function ensureRuntimeLoaded(): void {
  loadRuntime();
}

/** The smtp_allocator every native plugin's init receives (libc malloc). */
export function hostAllocator(): NativePointer {
  return loadRuntime().allocator();
}

/**
 * Ends the process at once with `code` (_exit): no exit handlers, no wait.
 * For when a native hook call is stuck on a pool thread: process.exit()
 * would join that thread and wait for it forever.
 */
export function exitNow(code: number): never {
  let fns: RuntimeFunctions;
  try {
    fns = loadRuntime();
  } catch {
    // No runtime, so no native call can hold a pool thread: Node's own exit cannot hang on one.
    process.exit(code);
  }
  fns.exitNow(code);
  throw new Error('unreachable: _exit returned');
}

/** Length of the C string at `s`, or -1 when it has no NUL within `max` bytes. */
export function boundedStrlen(s: NativePointer, max: number): number {
  return loadRuntime().strnlen(s, max);
}

const TWO_POW_32 = 2 ** 32;

/** Called with an address a plugin asked for without a grant. */
export type DeniedListener = (address: string) => void;

/**
 * One native context. The shared one serves every plugin without grants
 * that runs in the event loop's thread; a plugin with grants, or one that
 * blocks, gets its own (its grants and connections live in it, and a call
 * on a pool thread must not share a context with the main thread).
 * A load references the event's encoded bytes in place (the runtime copies
 * nothing), and the slot keeps them alive until its next load; it remembers
 * which JS context and version it holds, so a chain of native plugins on the
 * shared context loads an event once: what a plugin sets is already in the
 * native copy and only copied back out, and what another backend's plugin
 * set meanwhile is applied as a delta.
 */
export class NativeContextSlot {
  readonly pointer: NativePointer;
  #contextId = 0;
  #contextVersion = -1;
  /** The encoding the runtime's entries point into: kept referenced until the next load. */
  #loaded: EncodedMetadata | null = null;
  readonly #onDenied: DeniedListener | undefined;
  #destroyed = false;

  constructor(limits: MetadataLimits, grants: readonly string[] = [], onDenied?: DeniedListener) {
    const fns = loadRuntime();
    const pointer = fns.contextCreate(limits.keyBytesMax, limits.valueBytesMax, limits.keysMax);
    if (pointer === null || pointer === 0n) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not allocate a hook context');
    this.pointer = pointer;
    this.#onDenied = onDenied;
    if (grants.length > 0) {
      const text = Buffer.from(grants.join('\n'), 'utf8');
      if (fns.setGrants(pointer, text, text.length) !== 0) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not store the grants');
    }
  }

  /**
   * Runs the hook in this thread; returns the code (the cancel flag and
   * changes land in `context`). `onDenied` hears of a refused connect: the
   * calling plugin's, since the shared context serves several.
   */
  call(executeHook: NativePointer, context: HookContext, onDenied = this.#onDenied): number {
    const fns = loadRuntime();
    this.#prepare(fns, context);
    return this.#finish(fns, context, fns.callHook(executeHook, this.pointer), onDenied);
  }

  /**
   * Runs the hook on a thread of koffi's pool; the event loop goes on
   * meanwhile. When `abandoned()` is true by the time the call returns (its
   * session was answered at the deadline), what the plugin did is dropped:
   * `context` is not touched, and the native copy is reloaded before the
   * next call.
   */
  callAsync(executeHook: NativePointer, context: HookContext, abandoned: () => boolean = () => false): Promise<number> {
    const fns = loadRuntime();
    this.#prepare(fns, context);
    return new Promise((resolve, reject) => {
      fns.callHook.async(executeHook, this.pointer, (error, packed) => {
        if (error) reject(hostError('SMTP_E_PLUGIN_HOOK_CODE', `the native hook call failed on its thread (${String(error)})`, error));
        else if (abandoned()) {
          this.#contextId = 0;
          resolve(packed % TWO_POW_32 | 0);
        } else {
          try {
            resolve(this.#finish(fns, context, packed, this.#onDenied));
          } catch (failure) {
            reject(failure);
          }
        }
      });
    });
  }

  /** The wall-clock time (Date.now() ms) the next call's network waits are cut to; 0: none. */
  setCallDeadline(deadlineMs: number): void {
    if (!this.#destroyed) loadRuntime().setDeadline(this.pointer, deadlineMs);
  }

  /** Frees the context and closes every connection opened through it. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    loadRuntime().contextDestroy(this.pointer);
    this.#loaded = null;
  }

  #prepare(fns: RuntimeFunctions, context: HookContext): void {
    if (this.#destroyed) throw hostError('SMTP_E_PLUGIN_STATE', 'the plugin\'s native context was released');
    if (this.#contextId !== context.id || this.#loaded !== context.base) this.#load(fns, context);
    if (this.#contextVersion !== context.version) this.#apply(fns, context);
  }

  #finish(fns: RuntimeFunctions, context: HookContext, packed: number, onDenied: DeniedListener | undefined): number {
    const code = packed % TWO_POW_32 | 0;
    const high = Math.floor(packed / TWO_POW_32);
    const cancel = (high & 1) === 1;
    const denied = (high & 2) === 2;
    const changes = high >>> 2;
    if (denied) this.#reportDenied(fns, onDenied);
    if (changes > 0) this.#collect(fns, context);
    if (cancel) {
      context.cancel = true;
      // The native copy now carries cancel; reload before any further call.
      this.#contextId = 0;
    }
    return code;
  }

  #reportDenied(fns: RuntimeFunctions, onDenied: DeniedListener | undefined): void {
    const out = Buffer.alloc(256);
    const length = fns.denied(this.pointer, out, out.length);
    onDenied?.(out.subarray(0, length).toString('utf8'));
  }

  #load(fns: RuntimeFunctions, context: HookContext): void {
    const { base } = context;
    const status = fns.contextLoad(this.pointer, context.hookValue, base.head, base.head.length, base.tail, base.tail === null ? 0 : base.tail.length);
    if (status !== 0) throw hostError('SMTP_E_METADATA_LIMIT', `the native runtime refused the hook context (status ${status})`);
    this.#loaded = base;
    this.#contextId = context.id;
    this.#contextVersion = 0;
  }

  /** Sends what was set since the native copy was made (by the host, or a plugin of another backend). */
  #apply(fns: RuntimeFunctions, context: HookContext): void {
    const delta = encodeEntries(context.changesSince(this.#contextVersion));
    if (delta.length > 0) {
      const status = fns.contextApply(this.pointer, delta, delta.length);
      if (status !== 0) throw hostError('SMTP_E_METADATA_LIMIT', `the native runtime refused the metadata set since the load (status ${status})`);
    }
    this.#contextVersion = context.version;
  }

  #collect(fns: RuntimeFunctions, context: HookContext): void {
    let out = scratchBuffer(0);
    let written = fns.takeChanges(this.pointer, out, out.length);
    if (written < 0) {
      out = scratchBuffer(-written);
      written = fns.takeChanges(this.pointer, out, out.length);
    }
    applyChanges(out, written, context, undefined, 'SMTP_E_METADATA_LIMIT', 'native plugin');
    // The native copy already holds these changes.
    this.#contextVersion = context.version;
  }
}

const sharedSlots = new Map<MetadataLimits, NativeContextSlot>();

/** Runs a native execute_hook function pointer on `context` in this thread, on the shared context (no grants). */
export function callNativeHook(executeHook: NativePointer, context: HookContext, onDenied?: DeniedListener): number {
  let target = sharedSlots.get(context.limits);
  if (!target) {
    target = new NativeContextSlot(context.limits);
    sharedSlots.set(context.limits, target);
  }
  return target.call(executeHook, context, onDenied);
}

/** Frees a runtime context made in another thread (a sandbox worker that was killed), closing its connections. */
export function destroyRuntimeContext(pointer: NativePointer): void {
  loadRuntime().contextDestroy(pointer);
}

/**
 * The network functions of the native runtime, on a context of their own:
 * what the sandbox's worker thread calls on behalf of a WebAssembly plugin.
 * Grants are checked by the runtime, exactly as for a native plugin.
 */
export class RuntimeNet {
  readonly #onDenied: DeniedListener;
  /** One context for the worker's life: its pointer is what the main thread frees if the worker is killed. */
  readonly #current: NativeContextSlot;

  constructor(grants: readonly string[], onDenied: DeniedListener) {
    this.#onDenied = onDenied;
    this.#current = new NativeContextSlot({ keyBytesMax: 1, valueBytesMax: 1, keysMax: 1 }, grants);
  }

  /** The native context holding the grants and the connections (to close them if the worker is killed). */
  contextPointer(): NativePointer {
    return this.#current.pointer;
  }

  connect(address: string, timeoutMs: number): number {
    const text = Buffer.from(address, 'utf8');
    const handle = loadRuntime().netConnect(this.#current.pointer, text, text.length, timeoutMs);
    if (handle === -1) this.#onDenied(address);
    return handle;
  }

  send(handle: number, data: Uint8Array, timeoutMs: number): number {
    return loadRuntime().netSend(this.#current.pointer, handle, data, data.length, timeoutMs);
  }

  recv(handle: number, cap: number, timeoutMs: number): Uint8Array | number {
    const buf = Buffer.allocUnsafe(cap);
    const got = loadRuntime().netRecv(this.#current.pointer, handle, buf, cap, timeoutMs);
    return got < 0 ? got : buf.subarray(0, got);
  }

  close(handle: number): number {
    return loadRuntime().netClose(this.#current.pointer, handle);
  }

  /** Closes every connection. */
  closeAll(): void {
    loadRuntime().netCloseAll(this.#current.pointer);
  }

}
