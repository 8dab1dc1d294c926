import { performance } from 'node:perf_hooks';
import type { HookName } from '../abi/hooks.js';
import type { ErrorCode, SmtpReply } from '../errors.js';
import type { Logger } from '../log.js';
import type { PluginManager } from '../manager/plugin-manager.js';
import { HookContext, type MetadataValue } from '../plugin/hook-context.js';

/** Metadata keys through which a plugin chooses the SMTP reply for a refusal. */
export const REPLY_CODE_KEY = 'smtp_reply_code';
export const REPLY_TEXT_KEY = 'smtp_reply_text';
/** A message-stage plugin sets this to "true" to have the message kept in quarantine instead of delivered. */
export const QUARANTINE_KEY = 'quarantine';
/** With quarantine: the folder to keep the message in, honoured only inside [storage] quarantine_dir. */
export const QUARANTINE_PATH_KEY = 'quarantine_path';
/** The code logged (a warning: the message is still kept) when a quarantine_path is refused. */
export const QUARANTINE_PATH_REFUSED: ErrorCode = 'SMTP_E_QUARANTINE_PATH';

/** A refusal: the SMTP reply to send. */
export interface Refusal {
  readonly code: number;
  readonly text: string;
  /** The plugin that refused, or that failed. */
  readonly plugin: string | undefined;
  readonly reason: 'stop' | 'cancel' | 'error';
}

/** What a hook event produced. */
export interface HookResult {
  /** The context after the chain (null when no plugin handles the hook). */
  readonly context: HookContext | null;
  /** Set when a gating hook refused. */
  readonly refusal: Refusal | null;
}

const NOTHING: HookResult = Object.freeze({ context: null, refusal: null });
const REPLY_TEXT_CHARS_MAX = 400;

/** The default refusal of each gating hook (permanent, per stage). */
export const DEFAULT_REFUSALS: Partial<Record<HookName, SmtpReply & { text: string }>> = {
  connection_opened: { code: 554, enhanced: '5.7.1', text: 'Connection refused' },
  command_received: { code: 550, enhanced: '5.7.1', text: 'Command refused' },
  command_validated: { code: 550, enhanced: '5.7.1', text: 'Refused by policy' },
  auth_started: { code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid' },
  message_received: { code: 550, enhanced: '5.7.1', text: 'Message refused' },
  message_validated: { code: 550, enhanced: '5.6.0', text: 'Message refused: invalid content' },
  message_filtered: { code: 554, enhanced: '5.7.1', text: 'Message refused by content filter' },
};

/** Reads a plugin-chosen reply; an invalid code falls back to the default. */
function chosenReply(context: HookContext, fallback: SmtpReply & { text: string }): { code: number; text: string } {
  const codeText = context.getMetadata(REPLY_CODE_KEY);
  const code = codeText !== undefined && /^[45][0-9][0-9]$/.test(codeText) ? Number(codeText) : fallback.code;
  const raw = context.getMetadata(REPLY_TEXT_KEY);
  // One line, bounded: a plugin must not inject further SMTP replies.
  const text = raw === undefined ? undefined : raw.replace(/[\r\n\0]+/g, ' ').trim().slice(0, REPLY_TEXT_CHARS_MAX);
  if (text !== undefined && text !== '') return { code, text };
  const enhanced = code === fallback.code ? fallback.enhanced : `${String(code)[0]}.7.1`;
  return { code, text: `${enhanced} ${fallback.text}` };
}

/**
 * Fires hooks for the server: builds the context, runs the chain, and turns
 * stop, cancel or a failure on a gating hook into the SMTP reply.
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

  handles(hook: HookName): boolean {
    return this.#manager.handles(hook);
  }

  /** Runs `hook` with `metadata`; `gating` hooks can refuse. */
  async run(hook: HookName, metadata: Readonly<Record<string, MetadataValue | undefined>>, gating = false): Promise<HookResult> {
    if (!this.#trace) return this.#run(hook, metadata, gating);
    const started = performance.now();
    const result = await this.#run(hook, metadata, gating);
    const outcome = result.refusal ? `refused ${result.refusal.code}` : 'continue';
    this.#logger.info({ hook, handled: result.context !== null, outcome, duration_us: Math.round((performance.now() - started) * 1000) }, 'hook');
    return result;
  }

  async #run(hook: HookName, metadata: Readonly<Record<string, MetadataValue | undefined>>, gating: boolean): Promise<HookResult> {
    if (!this.#manager.handles(hook)) return NOTHING;
    const context = new HookContext(hook);
    for (const [key, value] of Object.entries(metadata)) if (value !== undefined) context.setMetadata(key, value);
    const outcome = await this.#manager.executeHook(hook, context);
    if (hook === 'auth_started' && outcome.skipped !== undefined && outcome.action !== 'cancel' && outcome.action !== 'stop') {
      // An authentication plugin that failed cannot have approved the password, whatever its on_error.
      return { context, refusal: { code: 454, text: '4.7.0 Temporary authentication failure', plugin: outcome.skipped[0], reason: 'error' } };
    }
    if (outcome.action === 'continue') return { context, refusal: null };
    if (outcome.action === 'error') {
      // The failure policy decided: continue never reaches here; tempfail and reject carry a reply.
      const reply = outcome.reply ?? { code: 451, enhanced: '4.3.0' };
      const text = reply.code >= 500 ? 'Refused after a plugin failure' : 'Temporary plugin failure, try again later';
      const refusal: Refusal = { code: reply.code, text: `${reply.enhanced} ${text}`, plugin: outcome.plugin, reason: 'error' };
      return { context, refusal: gating ? refusal : null };
    }
    if (!gating) {
      this.#logger.debug({ hook, plugin: outcome.plugin, action: outcome.action }, 'plugin ended a notification chain');
      return { context, refusal: null };
    }
    const reply = chosenReply(context, DEFAULT_REFUSALS[hook] ?? { code: 550, enhanced: '5.7.1', text: 'Refused' });
    return { context, refusal: { ...reply, plugin: outcome.plugin, reason: outcome.action } };
  }
}

/** The Error smtp-server turns into a reply. */
export function replyError(refusal: Pick<Refusal, 'code' | 'text'>): Error & { responseCode: number } {
  return Object.assign(new Error(refusal.text), { responseCode: refusal.code });
}
