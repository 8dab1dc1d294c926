import type { PluginCallStats } from './plugin-call-stats.js';

/** One point of the status page's chart per this many seconds. */
export const LATENCY_INTERVAL_S = 10;
/** Points kept: 15 minutes. */
export const LATENCY_POINTS_MAX = 90;
/** The window of the "last minute" mean. */
const LAST_MINUTE_S = 60;

interface Snapshot {
  readonly atMs: number;
  /** Per plugin: calls and seconds spent, totals at atMs. */
  readonly totals: ReadonlyMap<string, { readonly calls: number; readonly seconds: number }>;
}

export interface LatencyPoint {
  readonly at: string;
  /** Mean call latency (µs) of each plugin called during the interval. */
  readonly plugins: Readonly<Record<string, number>>;
}

/**
 * Per-plugin mean call latency over the last minutes, for the status page:
 * a snapshot of every plugin's totals each LATENCY_INTERVAL_S, and the mean
 * of each interval from the difference of two snapshots.
 */
export class LatencyHistory {
  readonly #calls: PluginCallStats;
  readonly #plugins: () => readonly string[];
  /** Oldest first; at most LATENCY_POINTS_MAX + 1 (the points are between them). */
  readonly #snapshots: Snapshot[] = [];
  #timer: NodeJS.Timeout | null = null;

  constructor(calls: PluginCallStats, plugins: () => readonly string[]) {
    this.#calls = calls;
    this.#plugins = plugins;
  }

  start(): void {
    this.#snapshots.push(this.#snapshot());
    this.#timer = setInterval(() => {
      this.#snapshots.push(this.#snapshot());
      if (this.#snapshots.length > LATENCY_POINTS_MAX + 1) this.#snapshots.shift();
    }, LATENCY_INTERVAL_S * 1000);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #snapshot(): Snapshot {
    const totals = new Map<string, { calls: number; seconds: number }>();
    for (const name of this.#plugins()) {
      const { calls, seconds } = this.#calls.totals(name);
      totals.set(name, { calls, seconds });
    }
    return { atMs: Date.now(), totals };
  }

  /** Mean µs per call of each plugin between two snapshots; plugins without calls are left out. */
  static #means(from: Snapshot, to: Snapshot): Record<string, number> {
    const means: Record<string, number> = {};
    for (const [name, now] of to.totals) {
      const before = from.totals.get(name) ?? { calls: 0, seconds: 0 };
      const calls = now.calls - before.calls;
      // A plugin reloaded under the same name keeps its counters, so calls never go down; guard anyway.
      if (calls > 0) means[name] = Math.round(((now.seconds - before.seconds) / calls) * 1e7) / 10;
    }
    return means;
  }

  points(): LatencyPoint[] {
    const points: LatencyPoint[] = [];
    for (let index = 1; index < this.#snapshots.length; index++) {
      points.push({ at: new Date(this.#snapshots[index]!.atMs).toISOString(), plugins: LatencyHistory.#means(this.#snapshots[index - 1]!, this.#snapshots[index]!) });
    }
    return points;
  }

  /** Mean µs per call of each plugin over about the last minute (up to now), null for a plugin not called in it. */
  lastMinute(): Map<string, number | null> {
    const now = this.#snapshot();
    const since = now.atMs - LAST_MINUTE_S * 1000;
    const from = this.#snapshots.find((snapshot) => snapshot.atMs >= since) ?? this.#snapshots[this.#snapshots.length - 1];
    const means = from === undefined ? {} : LatencyHistory.#means(from, now);
    return new Map([...now.totals.keys()].map((name) => [name, means[name] ?? null]));
  }
}
