import { HOOK_NAMES, type HookName } from '../abi/hooks.js';
import type { HookAction } from '../plugin/lifecycle.js';

/**
 * Upper bounds (seconds) of the plugin call latency histogram: from a native
 * call on the event loop (a few µs) to a sandboxed one at its deadline.
 */
export const CALL_LATENCY_BUCKETS_S: readonly number[] = Object.freeze([5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1, 5]);

/** Distinct error codes kept per plugin and hook; more are counted under OTHER_ERROR_CODE (the codes are the host's, so this is never reached in practice). */
const ERROR_CODES_MAX = 32;
const OTHER_ERROR_CODE = 'other';

export const VERDICTS: readonly HookAction[] = ['continue', 'stop', 'cancel'];
const VERDICT_INDEX: Readonly<Record<HookAction, number>> = { continue: 0, stop: 1, cancel: 2 };

/**
 * Calls of one plugin at one hook. Plain numbers and typed arrays: recording
 * a call is a few increments (the prom-client objects are filled from these
 * only when /metrics is scraped), so it stays far below 1 µs per call.
 */
export class HookCallStats {
  readonly plugin: string;
  readonly hook: HookName;
  /** By VERDICTS index: calls that answered. */
  readonly verdicts = new Float64Array(VERDICTS.length);
  /** Failed calls by error code. */
  readonly errors = new Map<string, number>();
  /** Per CALL_LATENCY_BUCKETS_S bound, then +Inf: calls at most that long (not cumulative here). */
  readonly buckets = new Float64Array(CALL_LATENCY_BUCKETS_S.length + 1);
  seconds = 0;
  count = 0;

  constructor(plugin: string, hook: HookName) {
    this.plugin = plugin;
    this.hook = hook;
  }

  answered(action: HookAction, seconds: number): void {
    this.verdicts[VERDICT_INDEX[action]]!++;
    this.#observe(seconds);
  }

  failed(code: string, seconds: number): void {
    const key = this.errors.has(code) || this.errors.size < ERROR_CODES_MAX ? code : OTHER_ERROR_CODE;
    this.errors.set(key, (this.errors.get(key) ?? 0) + 1);
    this.#observe(seconds);
  }

  #observe(seconds: number): void {
    this.seconds += seconds;
    this.count++;
    let bucket = 0;
    while (bucket < CALL_LATENCY_BUCKETS_S.length && seconds > CALL_LATENCY_BUCKETS_S[bucket]!) bucket++;
    this.buckets[bucket]!++;
  }

  get errorCount(): number {
    let total = 0;
    for (const count of this.errors.values()) total += count;
    return total;
  }
}

/** Why a plugin was disabled: max_consecutive_failures, the admin API/CLI, or a dependency that went down. */
export type DisableReason = 'failures' | 'admin' | 'dependency';
export const DISABLE_REASONS: readonly DisableReason[] = ['failures', 'admin', 'dependency'];

/**
 * Every plugin's call statistics, by plugin name and hook. Kept across a
 * plugin's reload (a new build under the same name continues its counters,
 * as Prometheus expects of a counter).
 */
export class PluginCallStats {
  readonly #byPlugin = new Map<string, (HookCallStats | undefined)[]>();
  readonly #disables = new Map<string, Record<DisableReason, number>>();

  /** The stats of `plugin` at the hook of value `hookValue` (made on first use). */
  of(plugin: string, hookValue: number): HookCallStats {
    let hooks = this.#byPlugin.get(plugin);
    if (hooks === undefined) {
      hooks = HOOK_NAMES.map(() => undefined);
      this.#byPlugin.set(plugin, hooks);
    }
    return (hooks[hookValue] ??= new HookCallStats(plugin, HOOK_NAMES[hookValue]!));
  }

  disabled(plugin: string, reason: DisableReason): void {
    let counts = this.#disables.get(plugin);
    if (counts === undefined) {
      counts = { failures: 0, admin: 0, dependency: 0 };
      this.#disables.set(plugin, counts);
    }
    counts[reason]++;
  }

  /** Disables so far, by plugin and reason. */
  disables(): ReadonlyMap<string, Readonly<Record<DisableReason, number>>> {
    return this.#disables;
  }

  /** Every (plugin, hook) that was called at least once. */
  *all(): IterableIterator<HookCallStats> {
    for (const hooks of this.#byPlugin.values()) for (const stats of hooks) if (stats !== undefined) yield stats;
  }

  /** Totals of one plugin over its hooks. */
  totals(plugin: string): { calls: number; errors: number; seconds: number } {
    let calls = 0;
    let errors = 0;
    let seconds = 0;
    for (const stats of this.#byPlugin.get(plugin) ?? []) {
      if (stats === undefined) continue;
      calls += stats.count;
      errors += stats.errorCount;
      seconds += stats.seconds;
    }
    return { calls, errors, seconds };
  }
}
