import type { DenialLog } from '../plugin/denied-log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { callNativeChain } from '../runtime/host-runtime.js';
import type { Entry } from './plugin-manager.js';

/**
 * Consecutive plugins of one hook's chain that are native, run in the event
 * loop's thread and share the runtime's context (no grants, not blocking:
 * Plugin.sharedNativeHook). The runtime calls them one after another in one
 * crossing from JavaScript (smtp_host_call_chain), stopping where a call
 * would have ended the chain or has something to report. Measured by hand
 * in one process (16 native plugins against 1): 855-924 ns per added plugin
 * called one by one, 463-584 in runs.
 */
export class NativeRun {
  /** The run's entries, in chain order. */
  readonly entries: readonly Entry[];
  /** execute_hook pointers from each offset to the run's end (views of one array, made once). */
  readonly #hooksFrom: readonly BigUint64Array[];
  /** Two int32s per call: what smtp_host_call_chain packs (its code first). */
  readonly #results: Int32Array;
  /** The plugin of the call at index i of the current run (offset + i) hears of its refusals: bound once. */
  readonly #onDenied: (index: number) => DenialLog | undefined;
  #offset = 0;

  constructor(entries: readonly Entry[]) {
    this.entries = entries;
    const hooks = new BigUint64Array(entries.map(({ instance }) => instance.plugin.sharedNativeHook!.executeHook));
    this.#hooksFrom = entries.map((_, offset) => hooks.subarray(offset));
    this.#results = new Int32Array(2 * entries.length);
    const listeners = entries.map(({ instance }) => instance.plugin.sharedNativeHook!.onDenied);
    this.#onDenied = (index) => listeners[this.#offset + index];
  }

  /** Whether every plugin from `offset` on is enabled (one that is not leaves the run to plugin-by-plugin calls). */
  enabledFrom(offset: number): boolean {
    for (let index = offset; index < this.entries.length; index++) if (this.entries[index]!.instance.state !== 'enabled') return false;
    return true;
  }

  /**
   * Calls the plugins from `offset` on; returns how many were called (at
   * least one). Throws what the first call would have (a context the runtime
   * refuses). Every call but the last answered continue without a cancel;
   * the last one's code is code(made).
   */
  call(offset: number, context: HookContext): number {
    this.#offset = offset;
    runsCalled++;
    return callNativeChain(this.#hooksFrom[offset]!, this.entries.length - offset, context, this.#results, this.#onDenied);
  }

  /** The code of the last call of a run that made `made` calls. */
  code(made: number): number {
    return this.#results[2 * (made - 1)]!;
  }
}

let runsCalled = 0;

/** How many native runs this thread has called (each one crossing for all its plugins): what shows a chain was run that way. */
export function nativeRunsCalled(): number {
  return runsCalled;
}

/** Where a chain's entry starts a native run: the run and the entry's place in it. */
export interface NativeRunStart {
  readonly run: NativeRun;
  readonly offset: number;
}

/**
 * For each entry of `chain`, the native run it starts, or null (not such a
 * plugin, or the last of its run: a single call gains nothing).
 */
export function nativeRuns(chain: readonly Entry[]): readonly (NativeRunStart | null)[] {
  const starts: (NativeRunStart | null)[] = chain.map(() => null);
  for (let first = 0; first < chain.length; ) {
    let end = first;
    while (end < chain.length && chain[end]!.instance.plugin.sharedNativeHook) end++;
    if (end - first >= 2) {
      const run = new NativeRun(chain.slice(first, end));
      for (let index = first; index < end - 1; index++) starts[index] = { run, offset: index - first };
    }
    first = Math.max(end, first + 1);
  }
  return starts;
}
