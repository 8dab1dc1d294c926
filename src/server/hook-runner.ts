import { performance } from 'node:perf_hooks';
import type { HookName } from '../abi/hooks.js';
import type { Logger } from '../log.js';
import type { ChainRole, HookOutcome, PluginManager } from '../manager/plugin-manager.js';
import { HookContext } from '../plugin/hook-context.js';
import type { MetadataValue } from '../plugin/hook-context.js';
import { EncodedMetadata, encodeFields, type MetadataFields } from '../plugin/metadata-wire.js';
import { BODY_KEY, hookSpec } from './hook-table.js';
import { chainRefusal, type Refusal } from './reply-policy.js';

/** A message-stage plugin sets this to "true" to have the message kept in quarantine instead of delivered. */
export const QUARANTINE_KEY = 'quarantine';
/** With quarantine: the folder to keep the message in, honoured only inside [storage] quarantine_dir. */
export const QUARANTINE_PATH_KEY = 'quarantine_path';

/** What a hook event produced. */
export interface HookResult {
  /** The context after the chain (null when no plugin handles the hook). */
  readonly context: HookContext | null;
  readonly outcome: HookOutcome;
  /** Set when a gating hook refused. */
  readonly refusal: Refusal | null;
}

const CONTINUED: HookOutcome = Object.freeze({ action: 'continue', answered: 0 });
const NOTHING: HookResult = Object.freeze({ context: null, outcome: CONTINUED, refusal: null });

/**
 * Fires hooks for the server: builds the event's context (only when some
 * plugin handles the hook), runs the chain, and turns the outcome into a
 * refusal through the reply policy. When every plugin of the chain answers
 * at once, so does run(): no promise is made.
 */
export class HookRunner {
  readonly #manager: PluginManager;
  readonly #logger: Logger;
  /** Log every hook event, handled or not (with log_hook_calls and in test mode). */
  readonly #trace: boolean;

  constructor(manager: PluginManager, logger: Logger, trace = false) {
    this.#manager = manager;
    this.#logger = logger;
    this.#trace = trace;
  }

  /** Whether firing `hook` does anything: a plugin handles it, or every hook is logged. */
  wants(hook: HookName): boolean {
    return this.#trace || this.#manager.handles(hook);
  }

  /** Whether some enabled plugin (of `role`) handles `hook`. */
  handles(hook: HookName, role: ChainRole = 'all'): boolean {
    return this.#manager.handles(hook, role);
  }

  /** The hooks of `hooks` some enabled plugin handles, in order (PluginManager.handledAmong). */
  handledAmong(hooks: readonly HookName[]): readonly HookName[] {
    return this.#manager.handledAmong(hooks);
  }

  /** How many copies of a message body the plugins of `hooks` take into memory of their own (PluginManager.bodyCopies). */
  bodyCopies(hooks: readonly HookName[]): number {
    return this.#manager.bodyCopies(hooks);
  }

  /**
   * Runs `hook`; `event` gives its keys (as fields, or already encoded),
   * called only when a plugin handles the hook. `carried` are keys earlier
   * stages' plugins set, added on top; `role` picks the plugins (auth_started
   * runs authenticators apart). Gating hooks (the hook table says which) can
   * refuse.
   */
  run(hook: HookName, event: () => MetadataFields | EncodedMetadata, carried?: Iterable<readonly [string, MetadataValue]>, role: ChainRole = 'all'): HookResult | Promise<HookResult> {
    if (!this.#manager.handles(hook, role)) {
      if (this.#trace) this.#logger.info({ hook, handled: false, outcome: 'continue', duration_us: 0 }, 'hook');
      return NOTHING;
    }
    const started = this.#trace ? performance.now() : 0;
    const made = event();
    const context = new HookContext(hook, undefined, made instanceof EncodedMetadata ? made : encodeFields(made, hookSpec(hook).body ? BODY_KEY : undefined));
    if (carried !== undefined) for (const [key, value] of carried) context.setMetadata(key, value);
    const outcome = this.#manager.runChain(context, role);
    if (outcome instanceof Promise) return outcome.then((settled) => this.#result(hook, context, settled, started));
    return this.#result(hook, context, outcome, started);
  }

  #result(hook: HookName, context: HookContext, outcome: HookOutcome, started: number): HookResult {
    const refusal = chainRefusal(hook, outcome, context);
    if (refusal === null && outcome.action !== 'continue' && outcome.action !== 'error') {
      this.#logger.debug({ hook, plugin: outcome.plugin, action: outcome.action }, 'plugin ended a notification chain');
    }
    if (this.#trace) {
      const verdict = refusal ? `refused ${refusal.code}` : 'continue';
      this.#logger.info({ hook, handled: true, outcome: verdict, duration_us: Math.round((performance.now() - started) * 1000) }, 'hook');
    }
    return { context, outcome, refusal };
  }

  /** Runs a notification hook whose outcome nobody waits for; a failure is logged. */
  notify(hook: HookName, fields: () => MetadataFields | EncodedMetadata): void {
    try {
      const result = this.run(hook, fields);
      if (result instanceof Promise) result.catch((error: unknown) => this.#logger.error({ hook, err: String(error) }, 'hook failed'));
    } catch (error) {
      this.#logger.error({ hook, err: String(error) }, 'hook failed');
    }
  }
}

/** Resolves a result that may or may not be a promise, without a promise when it is not. */
export function andThen<T, R>(value: T | Promise<T>, next: (settled: T) => R | Promise<R>): R | Promise<R> {
  return value instanceof Promise ? value.then(next) : next(value);
}
