import type { HookContext, MetadataValue, PluginChangeSet } from '../plugin/hook-context.js';
import { BODY_KEY } from './hook-table.js';

/**
 * The keys plugins set at a message's earlier stages, carried to its later
 * ones (the filters' verdicts reach message_stored): each stage's plugin
 * changes (HookContext.pluginChangeSet, which holds neither the event's keys
 * nor the body buffer), read only when a later stage runs. Copying them out after each
 * stage made a Buffer of every key a plugin set, for every message, even
 * when no later stage runs (16 sandboxed plugins: about 2.4 us per message
 * under smtp-source, CPU profile). A key set at several stages is given
 * once per stage, oldest first: applied in order, the last one wins.
 */
export class CarriedKeys implements Iterable<readonly [string, MetadataValue]> {
  readonly #stages: PluginChangeSet[] = [];

  /** Carries what plugins set in `context` (a finished stage's: it no longer changes). */
  add(context: HookContext): void {
    this.#stages.push(context.pluginChangeSet());
  }

  [Symbol.iterator](): IterableIterator<readonly [string, MetadataValue]> {
    // Arrays, not generators (hook-context.ts pluginChangeSet says why).
    const entries: (readonly [string, MetadataValue])[] = [];
    for (const stage of this.#stages) for (const entry of stage.list()) if (entry[0] !== BODY_KEY) entries.push(entry);
    return entries[Symbol.iterator]();
  }
}
