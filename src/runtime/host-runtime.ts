import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { hostError } from '../errors.js';
import { RUNTIME_LIBRARY } from '../paths.js';
import type { DenialLog } from '../plugin/denied-log.js';
import type { HookContext, MetadataLimits, PendingChanges } from '../plugin/hook-context.js';
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
  setCounters: (ctx: NativePointer, name: Buffer, len: number) => number;
  denied: (ctx: NativePointer, out: Buffer, cap: number) => number;
  callHook: (fn: NativePointer, ctx: NativePointer) => number;
  loadAndCall: (ctx: NativePointer, hook: number, head: Buffer, headLen: number, tail: Buffer | null, tailLen: number, fn: NativePointer) => number;
  callChain: (executeHooks: BigUint64Array, n: number, ctx: NativePointer, results: Int32Array) => number;
  loadAndCallChain: (ctx: NativePointer, hook: number, head: Buffer, headLen: number, tail: Buffer | null, tailLen: number, executeHooks: BigUint64Array, n: number, results: Int32Array) => number;
  callBatch: { async: (fn: NativePointer, contexts: NativePointer, states: NativePointer, results: NativePointer, n: number, done: AsyncCallback<undefined>) => void };
  shareNet: (ctx: NativePointer, first: NativePointer) => void;
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
let library: ReturnType<typeof koffi.load> | undefined;

/** The runtime library, loaded once in this thread (and kept loaded for the process's life). */
export function runtimeLibrary(): ReturnType<typeof koffi.load> {
  if (library) return library;
  if (!existsSync(RUNTIME_LIBRARY)) {
    throw hostError('SMTP_E_RUNTIME_MISSING', `the native host runtime ${RUNTIME_LIBRARY} is missing: run "node scripts/setup.mjs" (npm install runs it)`);
  }
  library = koffi.load(RUNTIME_LIBRARY);
  return library;
}

function loadRuntime(): RuntimeFunctions {
  if (runtime) return runtime;
  const lib = runtimeLibrary();
  runtime = {
    allocator: lib.func('void *smtp_host_allocator(void)'),
    contextCreate: lib.func('void *smtp_host_context_create(size_t, size_t, size_t)'),
    contextDestroy: lib.func('void smtp_host_context_destroy(void *ctx)'),
    contextLoad: lib.func('int smtp_host_context_load(void *ctx, int hook, const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len)'),
    contextApply: lib.func('int smtp_host_context_apply(void *ctx, const uint8_t *buf, size_t len)'),
    setGrants: lib.func('int smtp_host_context_set_grants(void *ctx, const uint8_t *buf, size_t len)'),
    setCounters: lib.func('int smtp_host_context_set_counters(void *ctx, const uint8_t *name, size_t len)'),
    denied: lib.func('size_t smtp_host_context_denied(void *ctx, uint8_t *out, size_t cap)'),
    callHook: lib.func('int64_t smtp_host_call_hook(void *fn, void *ctx)'),
    loadAndCall: lib.func('int64_t smtp_host_load_and_call(void *ctx, int hook, const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len, void *fn)'),
    callChain: lib.func('size_t smtp_host_call_chain(void *execute_hooks, size_t n, void *ctx, void *results)'),
    loadAndCallChain: lib.func('int64_t smtp_host_load_and_call_chain(void *ctx, int hook, const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len, void *execute_hooks, size_t n, void *results)'),
    callBatch: lib.func('void smtp_host_call_batch(void *fn, void *contexts, void *states, void *results, size_t n)'),
    shareNet: lib.func('void smtp_host_context_share_net(void *ctx, void *first)'),
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

/** smtp_host_call_hook's packing, above bit 32 (src/runtime/host_runtime.zig): cancel, a connect refused, 18 bits of changed keys, a counter call refused. */
const PACKED = { CANCEL: 1, NET_DENIED: 2, CHANGED_SHIFT: 2, CHANGED_MASK: 0x3ffff, COUNTERS_DENIED: 1 << 20 } as const;

/** Hears of what a plugin was refused for want of a grant (src/plugin/denied-log.ts). */
export type DeniedListener = DenialLog;

/** What a plugin's native context may reach: its allow_connect grants, and the counters under its name (null: not granted). */
export interface ContextGrants {
  readonly connect: readonly string[];
  readonly counters: string | null;
}

const NO_GRANTS: ContextGrants = Object.freeze({ connect: Object.freeze([]) as readonly string[], counters: null });

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
 * set meanwhile is applied as a delta. What a call in this thread sets is
 * copied back only when the context is next read or changed
 * (HookContext.deferChanges): a chain of native plugins on one slot copies
 * its keys back once.
 */
export class NativeContextSlot implements PendingChanges {
  readonly pointer: NativePointer;
  #contextId = 0;
  #contextVersion = -1;
  /** The context whose changes this slot's native copy still holds (deferred): collected before the copy is loaded with another. */
  #pendingContext: HookContext | null = null;
  /** The encoding the runtime's entries point into: kept referenced until the next load. */
  #loadedBase: EncodedMetadata | null = null;
  readonly #onDenied: DeniedListener | undefined;
  #destroyed = false;

  constructor(limits: MetadataLimits, grants: ContextGrants = NO_GRANTS, onDenied?: DeniedListener) {
    const fns = loadRuntime();
    const pointer = fns.contextCreate(limits.keyBytesMax, limits.valueBytesMax, limits.keysMax);
    if (pointer === null || pointer === 0n) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not allocate a hook context');
    this.pointer = pointer;
    this.#onDenied = onDenied;
    if (grants.connect.length > 0) {
      const text = Buffer.from(grants.connect.join('\n'), 'utf8');
      if (fns.setGrants(pointer, text, text.length) !== 0) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not store the grants');
    }
    if (grants.counters !== null) {
      const name = Buffer.from(grants.counters, 'utf8');
      if (fns.setCounters(pointer, name, name.length) !== 0) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not store the counters grant');
    }
  }

  /**
   * Runs the hook in this thread; returns the code (the cancel flag and
   * changes land in `context`). `onDenied` hears of a refused connect: the
   * calling plugin's, since the shared context serves several.
   */
  call(executeHook: NativePointer, context: HookContext, onDenied = this.#onDenied): number {
    const fns = loadRuntime();
    if (this.#prepare(fns, context, true)) {
      // The usual first call of an event: the load and the call cross into the runtime once.
      const { base } = context;
      const packed = fns.loadAndCall(this.pointer, context.hookValue, base.head, base.head.length, base.tail, base.tail === null ? 0 : base.tail.length, executeHook);
      if (packed < 0) throw this.#refusedLoad(-packed);
      this.#loaded(context);
      return this.#finish(fns, context, packed, onDenied, true);
    }
    return this.#finish(fns, context, fns.callHook(executeHook, this.pointer), onDenied, true);
  }

  /**
   * Runs `n` plugins' execute_hook (`executeHooks[0..n)`, n >= 1) in this
   * thread, one after another, in one crossing (smtp_host_call_chain):
   * the chain stops after a call that answers other than continue, cancels,
   * or was refused a connect or a counter. Returns how many were called.
   * `results` gets each call's packed result as two int32s, the code first.
   * What `call` takes in from its call (cancel, changes, a refusal, told to
   * `onDenied` of that call's index) is taken in from the last call here.
   */
  callChain(executeHooks: BigUint64Array, n: number, context: HookContext, results: Int32Array, onDenied: (index: number) => DeniedListener | undefined): number {
    const fns = loadRuntime();
    let made: number;
    if (this.#prepare(fns, context, true)) {
      const { base } = context;
      made = fns.loadAndCallChain(this.pointer, context.hookValue, base.head, base.head.length, base.tail, base.tail === null ? 0 : base.tail.length, executeHooks, n, results);
      if (made < 0) throw this.#refusedLoad(-made);
      this.#loaded(context);
    } else {
      made = fns.callChain(executeHooks, n, this.pointer, results);
    }
    const last = made - 1;
    const packed = results[2 * last + 1]! * TWO_POW_32 + (results[2 * last]! >>> 0);
    this.#finish(fns, context, packed, onDenied(last), true);
    return made;
  }

  /**
   * Loads `context` for a call made elsewhere (a batch on a pool thread,
   * CallBatch): the native copy is brought up to date, as for `call`.
   */
  load(context: HookContext): void {
    this.#prepare(loadRuntime(), context);
  }

  /** Takes in what a call made elsewhere returned (packed as smtp_host_call_hook packs it): its code, and its cancel flag and changes into `context`. */
  finish(context: HookContext, packed: number): number {
    // Collected at once: a pool thread may load this slot for another call before the context is read again.
    return this.#finish(loadRuntime(), context, packed, this.#onDenied, false);
  }

  /** PendingChanges: copies back what calls in this thread set and deferred. */
  collect(context: HookContext): void {
    if (this.#pendingContext === context) this.#pendingContext = null;
    this.#collect(loadRuntime(), context);
  }

  /** What the last call did is dropped (its session was answered at the deadline): the native copy is reloaded before the next call. */
  forget(): void {
    this.#contextId = 0;
  }

  /** This context reaches the connections of `first`, the same plugin's first context (smtp_host_context_share_net). */
  shareNet(first: NativeContextSlot): void {
    if (first !== this) loadRuntime().shareNet(this.pointer, first.pointer);
  }

  /** The wall-clock time (Date.now() ms) the next call's network waits are cut to; 0: none. */
  setCallDeadline(deadlineMs: number): void {
    if (!this.#destroyed) loadRuntime().setDeadline(this.pointer, deadlineMs);
  }

  /** Frees the context and closes every connection opened through it. */
  destroy(): void {
    if (this.#destroyed) return;
    try {
      this.#pendingContext?.settle();
    } catch {
      // The plugin is going away: a change the host refuses now is dropped with it.
    }
    this.#destroyed = true;
    loadRuntime().contextDestroy(this.pointer);
    this.#loadedBase = null;
  }

  /**
   * Brings the native copy up to date with `context`. With `loadLeft`, a
   * load that is all there is to do is left to the caller (returns true),
   * which makes it together with the call.
   */
  #prepare(fns: RuntimeFunctions, context: HookContext, loadLeft = false): boolean {
    if (this.#destroyed) throw hostError('SMTP_E_PLUGIN_STATE', 'the plugin\'s native context was released');
    // Deferred changes of this very context: the native copy is the newest state, nothing to send.
    if (context.pendingFrom(this)) return false;
    // Another context's deferred changes live in the native copy about to be reloaded: collect them first.
    this.#pendingContext?.settle();
    if (this.#contextId !== context.id || this.#loadedBase !== context.base) {
      // Nothing set on top of the event's keys yet: the load alone makes the copy current.
      if (loadLeft && context.version === 0) return true;
      this.#load(fns, context);
    }
    if (this.#contextVersion !== context.version) this.#apply(fns, context);
    return false;
  }

  #finish(fns: RuntimeFunctions, context: HookContext, packed: number, onDenied: DeniedListener | undefined, defer: boolean): number {
    const code = packed % TWO_POW_32 | 0;
    const high = Math.floor(packed / TWO_POW_32);
    const cancel = (high & PACKED.CANCEL) !== 0;
    const changes = (high >>> PACKED.CHANGED_SHIFT) & PACKED.CHANGED_MASK;
    if ((high & PACKED.NET_DENIED) !== 0) this.#reportDenied(fns, onDenied);
    if ((high & PACKED.COUNTERS_DENIED) !== 0) onDenied?.counters();
    if (changes > 0 && defer && !cancel) {
      context.deferChanges(this);
      this.#pendingContext = context;
    } else if (context.pendingFrom(this)) {
      // Earlier calls' deferred changes and this call's are taken together.
      context.settle();
    } else if (changes > 0) {
      this.#collect(fns, context);
    }
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
    onDenied?.connect(out.subarray(0, length).toString('utf8'));
  }

  #load(fns: RuntimeFunctions, context: HookContext): void {
    const { base } = context;
    const status = fns.contextLoad(this.pointer, context.hookValue, base.head, base.head.length, base.tail, base.tail === null ? 0 : base.tail.length);
    if (status !== 0) throw this.#refusedLoad(status);
    this.#loaded(context);
  }

  /** A refused load may have left the native copy half replaced: whatever comes next reloads it. */
  #refusedLoad(status: number): Error {
    this.#contextId = 0;
    return hostError('SMTP_E_METADATA_LIMIT', `the native runtime refused the hook context (status ${status})`);
  }

  /** The native copy now holds `context`'s event keys and nothing set since. */
  #loaded(context: HookContext): void {
    this.#loadedBase = context.base;
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
    applyChanges(out, 0, written, context, undefined, 'SMTP_E_METADATA_LIMIT', 'native plugin');
    // The native copy already holds these changes.
    this.#contextVersion = context.version;
  }
}

/** A call's state in a batch, as smtp_host_call_batch reads and sets it (src/runtime/host_runtime.zig). */
export const BatchCallState = { queued: 0, started: 1, skipped: 2, done: 3 } as const;

/**
 * Room for one batch of a blocking plugin's calls, in native memory (a pool
 * thread reads and writes it while the event loop goes on): the context of
 * each call, its state and its packed result. smtp_host_call_batch runs the
 * calls in order on one pool thread, so every call that queued while the
 * previous batch ran shares one thread hand-off; the event loop can still
 * skip a call that has not started (its session stopped waiting).
 */
export class CallBatch {
  readonly capacity: number;
  readonly #memory: NativePointer;
  readonly #contexts: DataView;
  readonly #results: DataView;
  /** Changed only with Atomics.compareExchange here, and by compare-and-swap on the pool thread. */
  readonly #states: Int32Array;
  #running = false;
  #released = false;

  constructor(capacity: number) {
    this.capacity = capacity;
    const bytes = capacity * BATCH_CALL_BYTES;
    this.#memory = koffi.alloc('uint8_t', bytes) as NativePointer;
    const view = koffi.view(this.#memory, bytes);
    this.#contexts = new DataView(view, 0, capacity * 8);
    this.#results = new DataView(view, capacity * 8, capacity * 8);
    this.#states = new Int32Array(view, capacity * 16, capacity);
  }

  /** Puts call `index` in the batch: it runs on `slot`'s context, already loaded. */
  set(index: number, slot: NativeContextSlot): void {
    this.#contexts.setBigUint64(index * 8, slot.pointer, true);
    Atomics.store(this.#states, index, BatchCallState.queued);
  }

  /** Runs calls 0 to n-1 on a pool thread; resolves when the thread is done with all of them. */
  run(executeHook: NativePointer, n: number): Promise<void> {
    if (this.#running || this.#released) throw hostError('SMTP_E_PLUGIN_STATE', 'a call batch was started while it ran, or after it was released');
    this.#running = true;
    const base = this.#memory;
    return new Promise((resolve, reject) => {
      loadRuntime().callBatch.async(executeHook, base, base + BigInt(this.capacity * 16), base + BigInt(this.capacity * 8), n, (error) => {
        this.#running = false;
        if (error) reject(hostError('SMTP_E_PLUGIN_HOOK_CODE', `the native hook calls failed on their thread (${String(error)})`, error));
        else resolve();
      });
    });
  }

  /** Keeps call `index` from starting; false when it has already started (or finished). */
  skip(index: number): boolean {
    return Atomics.compareExchange(this.#states, index, BatchCallState.queued, BatchCallState.skipped) === BatchCallState.queued;
  }

  state(index: number): number {
    return Atomics.load(this.#states, index);
  }

  /** What call `index` returned, packed as smtp_host_call_hook packs it (a code, then the status bits). */
  packed(index: number): number {
    return this.#results.getInt32(index * 8 + 4, true) * TWO_POW_32 + this.#results.getUint32(index * 8, true);
  }

  /** Frees the memory; never while a batch runs. */
  release(): void {
    if (this.#running || this.#released) return;
    this.#released = true;
    koffi.free(this.#memory);
  }
}

/** Per call in a batch: its context pointer (8 bytes), its packed result (8), its state (4). */
const BATCH_CALL_BYTES = 20;

const sharedSlots = new Map<MetadataLimits, NativeContextSlot>();

/** Runs a native execute_hook function pointer on `context` in this thread, on the shared context (no grants). */
export function callNativeHook(executeHook: NativePointer, context: HookContext, onDenied?: DeniedListener): number {
  return sharedSlot(context.limits).call(executeHook, context, onDenied);
}

/** The context shared by every native plugin without grants in this thread, one per set of limits. */
function sharedSlot(limits: MetadataLimits): NativeContextSlot {
  let slot = sharedSlots.get(limits);
  if (!slot) {
    slot = new NativeContextSlot(limits);
    sharedSlots.set(limits, slot);
  }
  return slot;
}

/**
 * Runs a chain of native plugins on the shared context in this thread, in
 * one crossing (NativeContextSlot.callChain): what callNativeHook on each
 * in turn would do.
 */
export function callNativeChain(executeHooks: BigUint64Array, n: number, context: HookContext, results: Int32Array, onDenied: (index: number) => DeniedListener | undefined): number {
  return sharedSlot(context.limits).callChain(executeHooks, n, context, results, onDenied);
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
  readonly #onDenied: (address: string) => void;
  /** One context for the worker's life: its pointer is what the main thread frees if the worker is killed. */
  readonly #current: NativeContextSlot;

  constructor(grants: readonly string[], onDenied: (address: string) => void) {
    this.#onDenied = onDenied;
    this.#current = new NativeContextSlot({ keyBytesMax: 1, valueBytesMax: 1, keysMax: 1 }, { connect: grants, counters: null });
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
