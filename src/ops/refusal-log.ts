/** Refusals kept for the status page. */
export const RECENT_REFUSALS_MAX = 50;
/** What refusals are counted under when no plugin refused (relay policy, header checks, server errors). */
export const HOST_REFUSER = '(policy)';

export interface RefusalRecord {
  readonly at: string;
  /** The plugin that refused, or HOST_REFUSER. */
  readonly plugin: string;
  /** The hook, or policy, headers, auth. */
  readonly hook: string;
  readonly code: number;
  /** The reply text the client got (it starts with the enhanced status code). */
  readonly reason: string;
}

/** The last refusals and a count per refuser, in memory (the metrics hold the lasting counts). */
export class RefusalLog {
  readonly #recent: RefusalRecord[] = [];
  readonly #byPlugin = new Map<string, number>();

  add(plugin: string | undefined, hook: string, code: number, reason: string): void {
    const who = plugin ?? HOST_REFUSER;
    this.#recent.push({ at: new Date().toISOString(), plugin: who, hook, code, reason });
    if (this.#recent.length > RECENT_REFUSALS_MAX) this.#recent.shift();
    this.#byPlugin.set(who, (this.#byPlugin.get(who) ?? 0) + 1);
  }

  /** Newest first. */
  recent(): RefusalRecord[] {
    return [...this.#recent].reverse();
  }

  byPlugin(): Record<string, number> {
    return Object.fromEntries(this.#byPlugin);
  }
}
