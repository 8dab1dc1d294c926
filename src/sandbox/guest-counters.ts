import { COUNTER_LIMITS, CounterStatus } from '../abi/hooks.js';
import type { Logger } from '../log.js';
import { deniedCountersLogger } from '../plugin/denied-log.js';

/** The counter import of the "smtp_host" module (ABI 1.2; abi/zig/wasm_guest.zig). */
export const COUNTER_IMPORT_NAMES: readonly string[] = ['counter_incr'];

/**
 * What a sandboxed plugin's counter calls reach: the host's counters
 * (src/runtime/counters.ts) under the plugin's name, or a refusal without
 * allow_counters. `deadlineMs` (a Date.now() time) bounds a wait on Redis.
 * Results follow the header: a count >= 0, or an smtp_counter_status.
 */
export interface GuestCounters {
  incr(namespace: string, key: Uint8Array, by: number, windowSeconds: number, deadlineMs: number): number;
}

/** The counters of a plugin without allow_counters: every call is refused and logged (SMTP_E_COUNTER_DENIED). */
export function deniedCounters(logger: Logger): GuestCounters {
  const logDenied = deniedCountersLogger(logger, 'sandboxed plugin called counter_incr without the allow_counters grant');
  return {
    incr() {
      logDenied();
      return CounterStatus.DENIED;
    },
  };
}

/**
 * The "smtp_host" counter import over `counters`, for the plugin `name()`
 * (known once its metadata is read): reads the key from guest memory with a
 * bounds check (out of bounds: SMTP_COUNTER_E_INVALID), and bounds a Redis
 * wait by what is left of the hook's deadline.
 */
export function counterImports(memory: () => WebAssembly.Memory, counters: GuestCounters, name: () => string | undefined, remainingMs: () => number): WebAssembly.ModuleImports {
  return {
    counter_incr: (ptr: number, len: number, by: bigint, windowSeconds: number): bigint => {
      const start = ptr >>> 0;
      const length = len >>> 0;
      const buffer = memory().buffer;
      if (length > COUNTER_LIMITS.keyBytesMax || start + length > buffer.byteLength) return BigInt(CounterStatus.INVALID);
      if (by < 0n || by > BigInt(COUNTER_LIMITS.byMax)) return BigInt(CounterStatus.INVALID);
      const namespace = name();
      if (namespace === undefined) return BigInt(CounterStatus.DENIED);
      const deadlineMs = Date.now() + Math.max(0, Math.floor(remainingMs()));
      return BigInt(counters.incr(namespace, new Uint8Array(buffer, start, length), Number(by), windowSeconds >>> 0, deadlineMs));
    },
  };
}
