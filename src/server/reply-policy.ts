import type { HookName } from '../abi/hooks.js';
import { isHostError } from '../errors.js';
import type { HookOutcome } from '../manager/plugin-manager.js';
import type { HookContext } from '../plugin/hook-context.js';
import { hookSpec, type DefaultRefusal } from './hook-table.js';
import type { RecipientRefusal } from './relay-policy.js';

/**
 * Every SMTP reply the server chooses itself is decided here: what a
 * plugin's verdict answers (its chosen code and text, or the hook's default
 * refusal), what a failing plugin's on_error policy answers, what a host
 * error answers, and the server's own fixed replies. smtp-server's built-in
 * replies (syntax errors, 552 over SIZE...) are its own.
 */

/** A reply: the code and one line of text that starts with the enhanced status code. */
export interface Reply {
  readonly code: number;
  readonly text: string;
}

/** A refusal: the reply, and who or what caused it (for the log). */
export interface Refusal extends Reply {
  /** The plugin that refused, or that failed. */
  readonly plugin: string | undefined;
  readonly reason: 'stop' | 'cancel' | 'error';
}

/** Metadata keys through which a plugin chooses the SMTP reply for a refusal. */
export const REPLY_CODE_KEY = 'smtp_reply_code';
export const REPLY_TEXT_KEY = 'smtp_reply_text';
/** A plugin's reply text is one line of at most this many characters: it must not inject further SMTP replies. */
const REPLY_TEXT_CHARS_MAX = 400;

function reply(code: number, enhanced: string, text: string): Reply {
  return Object.freeze({ code, text: `${enhanced} ${text}` });
}

/** The server's own replies. */
export const REPLIES = Object.freeze({
  /** Anything unexpected inside a session: the client keeps the message and tries again. */
  serverError: reply(451, '4.3.0', 'Temporary server error, try again later'),
  /** A failure while a command line passed the command_received gate. */
  commandGateError: reply(451, '4.3.0', 'Temporary failure, try again later'),
  /** on_error = "tempfail" (the default). */
  pluginTempfail: reply(451, '4.3.0', 'Temporary plugin failure, try again later'),
  /** on_error = "reject". */
  pluginReject: reply(554, '5.3.0', 'Refused after a plugin failure'),
  /** A plugin at auth_started failed under on_error = "continue": it cannot have approved the password. */
  authTemporary: reply(454, '4.7.0', 'Temporary authentication failure'),
  authInvalid: reply(535, '5.7.8', 'Authentication credentials invalid'),
  /** [server] auth_required = true and the client has not logged in (smtp-server's own 530, when AUTH is not offered). */
  authRequired: reply(530, '5.7.0', 'Authentication required'),
  /** One client address over max_clients_per_ip: Postfix's anvil answer, then the socket closes. */
  tooManyConnections: reply(421, '4.7.0', 'Too many connections from your address'),
  /** smtp-server's own answer to a message over SIZE, repeated when the stream says so. */
  messageTooBig: reply(552, '5.3.4', 'Message too big'),
});

/** [policy] refusals at RCPT, with Postfix's codes and texts. */
export function recipientRefused(refusal: RecipientRefusal, recipient: string): Reply {
  switch (refusal) {
    case 'too-many-recipients': return reply(452, '4.5.3', 'Too many recipients');
    case 'relay-denied': return reply(554, '5.7.1', `<${recipient}>: Relay access denied`);
    case 'unknown-user': return reply(550, '5.1.1', `<${recipient}>: Recipient address rejected: User unknown in local recipient table`);
  }
}

/** A client past command_timeout_ms, data_timeout_ms or min_data_rate: Postfix's words, then the connection closes. */
export function timedOut(serverName: string): Reply {
  return reply(421, '4.4.2', `${serverName} Error: timeout exceeded`);
}

/** 550 5.6.0 for headers the server's checks refused. */
export function malformedHeaders(problem: string): Reply {
  return reply(550, '5.6.0', `Malformed message headers: ${problem}`);
}

/** The 250 text for a message taken (smtp-server adds the code). */
export function acceptedText(spoolId: string | null): string {
  return spoolId === null ? '2.0.0 Ok: accepted' : `2.0.0 Ok: queued as ${spoolId}`;
}

/** Reads a plugin-chosen reply; an invalid code falls back to the default. */
function chosenReply(context: HookContext, fallback: DefaultRefusal): Reply {
  const codeText = context.changed(REPLY_CODE_KEY);
  const code = codeText !== undefined && /^[45][0-9][0-9]$/.test(codeText) ? Number(codeText) : fallback.code;
  const raw = context.changed(REPLY_TEXT_KEY);
  const text = raw === undefined ? undefined : raw.replace(/[\r\n\0]+/g, ' ').trim().slice(0, REPLY_TEXT_CHARS_MAX);
  if (text !== undefined && text !== '') return { code, text };
  const enhanced = code === fallback.code ? fallback.enhanced : `${String(code)[0]}.7.1`;
  return { code, text: `${enhanced} ${fallback.text}` };
}

/** What a failing plugin's on_error policy answers. */
function failureReply(outcome: HookOutcome): Reply {
  return outcome.policy === 'reject' ? REPLIES.pluginReject : REPLIES.pluginTempfail;
}

/** What a session answers when the server itself failed: the error's own reply (errors.ts) where it has one. */
export function errorReply(error: unknown): Reply {
  const own = isHostError(error) ? error.reply : undefined;
  if (own === undefined) return REPLIES.serverError;
  return reply(own.code, own.enhanced, own.code >= 500 ? 'Refused after a server error' : 'Temporary server error, try again later');
}

/**
 * The refusal a hook's chain produced, or null when it lets the operation
 * go on. Only gating hooks refuse: a notification's stop or cancel only
 * ended its chain.
 */
export function chainRefusal(hook: HookName, outcome: HookOutcome, context: HookContext | null): Refusal | null {
  const refusal = hookSpec(hook).refusal;
  if (refusal === null || outcome.action === 'continue') return null;
  if (outcome.action === 'error') return { ...failureReply(outcome), plugin: outcome.plugin, reason: 'error' };
  return { ...chosenReply(context!, refusal), plugin: outcome.plugin, reason: outcome.action };
}

/** An Error smtp-server turns into the reply. */
export function replyError(answer: Reply): Error & { responseCode: number } {
  return Object.assign(new Error(answer.text), { responseCode: answer.code });
}
