import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { hostError } from '../errors.js';
import { RUNTIME_LIBRARY } from '../paths.js';
import type { HookContext, MetadataLimits } from '../plugin/hook-context.js';
import { applyChanges, encodeMetadata, scratchBuffer } from '../plugin/metadata-wire.js';

/** koffi pointers are BigInt in koffi 3. */
export type NativePointer = bigint;


interface RuntimeFunctions {
  allocator: () => NativePointer;
  contextCreate: (keyBytesMax: number, valueBytesMax: number, keysMax: number) => NativePointer | null;
  contextLoad: (ctx: NativePointer, hook: number, buf: Buffer, len: number) => number;
  callHook: (fn: NativePointer, ctx: NativePointer) => number;
  takeChanges: (ctx: NativePointer, out: Buffer, cap: number) => number;
  strnlen: (s: NativePointer, max: number) => number;
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
    contextLoad: lib.func('int smtp_host_context_load(void *ctx, int hook, const uint8_t *buf, size_t len)'),
    callHook: lib.func('int64_t smtp_host_call_hook(void *fn, void *ctx)'),
    takeChanges: lib.func('int64_t smtp_host_take_changes(void *ctx, uint8_t *out, size_t cap)'),
    strnlen: lib.func('intptr_t smtp_host_strnlen(void *s, size_t max)'),
  };
  return runtime;
}

/** The smtp_allocator every native plugin's init receives (libc malloc). */
export function hostAllocator(): NativePointer {
  return loadRuntime().allocator();
}

/** Length of the C string at `s`, or -1 when it has no NUL within `max` bytes. */
export function boundedStrlen(s: NativePointer, max: number): number {
  return loadRuntime().strnlen(s, max);
}

const TWO_POW_32 = 2 ** 32;

/**
 * One native context, reused for every call made with the same limits.
 * It remembers which JS context (id and version) it last copied, so a chain
 * of native plugins copies the metadata in once: what a plugin sets is
 * already in the native copy and is only copied back out.
 */
class NativeContextSlot {
  readonly pointer: NativePointer;
  #contextId = 0;
  #contextVersion = -1;

  constructor(limits: MetadataLimits) {
    const fns = loadRuntime();
    const pointer = fns.contextCreate(limits.keyBytesMax, limits.valueBytesMax, limits.keysMax);
    if (pointer === null || pointer === 0n) throw hostError('SMTP_E_METADATA_LIMIT', 'the native runtime could not allocate a hook context');
    this.pointer = pointer;
  }

  /** Runs the hook; returns the code (the cancel flag and changes land in `context`). */
  call(executeHook: NativePointer, context: HookContext): number {
    const fns = loadRuntime();
    if (this.#contextId !== context.id || this.#contextVersion !== context.version) this.#load(fns, context);
    const packed = fns.callHook(executeHook, this.pointer);
    const code = packed % TWO_POW_32 | 0;
    const high = Math.floor(packed / TWO_POW_32);
    const cancel = (high & 1) === 1;
    const changes = high >>> 1;
    if (changes > 0) this.#collect(fns, context);
    if (cancel) {
      context.cancel = true;
      // The native copy now carries cancel; reload before any further call.
      this.#contextId = 0;
    }
    return code;
  }

  #load(fns: RuntimeFunctions, context: HookContext): void {
    const { buf, length } = encodeMetadata(context);
    const status = fns.contextLoad(this.pointer, context.hookValue, buf, length);
    if (status !== 0) throw hostError('SMTP_E_METADATA_LIMIT', `the native runtime refused the hook context (status ${status})`);
    this.#contextId = context.id;
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

const slots = new Map<MetadataLimits, NativeContextSlot>();

/** Runs a native execute_hook function pointer on `context`. */
export function callNativeHook(executeHook: NativePointer, context: HookContext): number {
  let slot = slots.get(context.limits);
  if (!slot) {
    slot = new NativeContextSlot(context.limits);
    slots.set(context.limits, slot);
  }
  return slot.call(executeHook, context);
}
