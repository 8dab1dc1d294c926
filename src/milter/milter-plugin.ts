/**
 * A milter (rspamd, opendkim, clamav-milter...) as a plugin of the chain:
 * the backend behind a `[[plugins.plugin]]` entry with `milter = "inet:..."`.
 * It speaks the MTA side of the milter protocol (client-session.ts), one
 * milter connection per SMTP session, and maps the hooks to milter steps:
 *
 *   connection_opened          -> connect
 *   command_received HELO/EHLO -> helo
 *   command_validated MAIL     -> mail (an open message is aborted first)
 *   command_validated RCPT     -> rcpt
 *   message_filtered           -> data, headers, body, end of message
 *   connection_closed          -> quit
 *
 * Verdicts become the hook's answer (reject and tempfail with the milter's
 * own reply when it gave one); end-of-message modifications are applied to
 * the message and its envelope (edits.ts), handed to the message pipeline
 * through src/server/message-edits.ts; quarantine sets the host's
 * quarantine key. A milter that is down, slow or broken fails the call with
 * a coded error, and the entry's on_error policy answers (tempfail by
 * default, as Postfix's milter_default_action = tempfail).
 */
import { hostname as osHostname } from 'node:os';
import { ABI_VERSION, HookCode, hookValue, type HookName } from '../abi/hooks.js';
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HookContext } from '../plugin/hook-context.js';
import type { PluginOptions } from '../plugin/options.js';
import type { Plugin, PluginMetadata } from '../plugin/plugin.js';
import { editMessage } from '../server/message-edits.js';
import { SERVER_VERSION } from '../version.js';
import { formatMilterAddress, parseMilterAddress, type MilterAddress } from './address.js';
import { MilterClientSession, MILTER_CONNECT_TIMEOUT_MS_DEFAULT, MILTER_REPLY_BYTES_MAX_DEFAULT, type MilterMacros, type MilterVerdict } from './client-session.js';
import { applyMilterEdits } from './edits.js';
import { SMFIA_INET, SMFIA_INET6, SMFIP_HDR_LEADSPC, SMFIR_QUARANTINE } from './protocol.js';

/** The scheme of a milter entry's source: `milter:<address>#<entry name>` (src/config/plugins-config.ts writes it). */
export const MILTER_SOURCE_PREFIX = 'milter:';

export function milterSource(address: string, name: string): string {
  return `${MILTER_SOURCE_PREFIX}${address}#${name}`;
}

export function isMilterSource(path: string): boolean {
  return path.startsWith(MILTER_SOURCE_PREFIX);
}

/** The steps a milter can be given, as Stalwart names them; all by default. */
export const MILTER_STAGES = ['connect', 'helo', 'mail', 'rcpt', 'data'] as const;
export type MilterStage = (typeof MILTER_STAGES)[number];

/** The milter entry's init config (its `config` JSON). */
interface MilterSettings {
  readonly stages: readonly MilterStage[];
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly replyBytesMax: number;
  /** The `j` macro: this server's name. */
  readonly hostname: string;
}

const SETTINGS_KEYS = ['stages', 'connect_timeout_ms', 'command_timeout_ms', 'reply_bytes_max', 'hostname'] as const;
/** The most SMTP sessions with a milter connection open at once, per milter entry. */
export const MILTER_SESSIONS_MAX = 4096;

interface SessionState {
  readonly milter: MilterClientSession;
  /** A message is under way at the milter (MAIL sent, end of message not yet). */
  messageOpen: boolean;
  /** The milter accepted the connection (or the message): no more steps until the next MAIL. */
  accepted: 'no' | 'connection' | 'message';
}

const REJECTED = 'Command rejected';

function integer(value: unknown, key: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw hostError('SMTP_E_CONFIG', `milter config: expected an integer from ${min} to ${max} for ${key}, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function parseMilterSettings(json: string, hookTimeoutMs: number): MilterSettings {
  const raw = JSON.parse(json) as Record<string, unknown>;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw hostError('SMTP_E_CONFIG', 'milter config: expected a JSON object');
  for (const key of Object.keys(raw)) {
    if (!(SETTINGS_KEYS as readonly string[]).includes(key)) throw hostError('SMTP_E_CONFIG', `milter config: unknown key "${key}" (known: ${SETTINGS_KEYS.join(', ')})`);
  }
  const stages = raw.stages ?? MILTER_STAGES;
  if (!Array.isArray(stages) || stages.some((stage) => !(MILTER_STAGES as readonly unknown[]).includes(stage))) {
    throw hostError('SMTP_E_CONFIG', `milter config: stages: expected a list of ${MILTER_STAGES.join(', ')}, got ${JSON.stringify(raw.stages)}`);
  }
  if (raw.hostname !== undefined && (typeof raw.hostname !== 'string' || raw.hostname === '')) throw hostError('SMTP_E_CONFIG', 'milter config: hostname: expected a non-empty string');
  return Object.freeze({
    stages: Object.freeze([...new Set(stages as MilterStage[])]),
    connectTimeoutMs: integer(raw.connect_timeout_ms, 'connect_timeout_ms', MILTER_CONNECT_TIMEOUT_MS_DEFAULT, 1, 300_000),
    // A session waits for the milter at most as long as for any plugin.
    commandTimeoutMs: integer(raw.command_timeout_ms, 'command_timeout_ms', hookTimeoutMs, 1, 600_000),
    replyBytesMax: integer(raw.reply_bytes_max, 'reply_bytes_max', MILTER_REPLY_BYTES_MAX_DEFAULT, 1024, 2 ** 30),
    hostname: (raw.hostname as string | undefined) ?? osHostname(),
  });
}

/** "550 5.7.1 text" -> the host's reply keys; a multi-line reply keeps its last line's text. */
function replyKeys(reply: string): { code: string; text: string } | null {
  const lines = reply.split(/\r?\n/).filter((line) => line.length > 0);
  const last = lines.at(-1) ?? '';
  const match = /^([45]\d\d)[ -](.*)$/.exec(last);
  if (match === null) return null;
  const texts = lines.map((line) => line.slice(4)).join(' ');
  return { code: match[1]!, text: (texts || match[2]!).replace(/%%/g, '%') };
}

class MilterPlugin implements Plugin {
  readonly kind = 'milter' as const;
  readonly backend = 'milter' as const;
  readonly path: string;
  readonly abiVersion = ABI_VERSION;
  readonly metadata: PluginMetadata;
  readonly blocking = true;
  readonly #address: MilterAddress;
  readonly #options: PluginOptions;
  readonly #logger: Logger;
  #settings: MilterSettings | null = null;
  #enabled = false;
  readonly #sessions = new Map<string, SessionState>();

  constructor(path: string, address: MilterAddress, name: string, options: PluginOptions, logger: Logger) {
    this.path = path;
    this.#address = address;
    this.#options = options;
    this.#logger = logger;
    const hooks: HookName[] = ['connection_opened', 'command_received', 'command_validated', 'message_filtered', 'connection_closed'];
    this.metadata = Object.freeze({
      name,
      version: SERVER_VERSION,
      author: '',
      description: `milter at ${formatMilterAddress(address)}`,
      license: '',
      dependencies: Object.freeze([]),
      minServerVersion: null,
      maxServerVersion: null,
      handledHooks: hooks.reduce((mask, hook) => mask | (1n << BigInt(hookValue(hook))), 0n),
      flags: 0n,
    });
  }

  init(configJson: string): number {
    try {
      this.#settings = parseMilterSettings(configJson, this.#options.limits.hookTimeoutMs);
      return 0;
    } catch (error) {
      this.#logger.error({ code: 'SMTP_E_CONFIG', err: (error as Error).message }, 'milter config refused');
      return 1;
    }
  }

  enable(): number {
    this.#enabled = true;
    return 0;
  }

  disable(): number {
    this.#enabled = false;
    this.#closeAll();
    return 0;
  }

  deinit(): void {
    this.#closeAll();
  }

  unload(): void {
    this.#closeAll();
  }

  executeHook(context: HookContext): Promise<number> {
    return this.#execute(context);
  }

  async #execute(context: HookContext): Promise<number> {
    const settings = this.#settings;
    if (settings === null || !this.#enabled) throw hostError('SMTP_E_PLUGIN_STATE', `milter ${this.metadata.name}: called while not enabled`);
    const sessionId = context.getMetadata('session_id') ?? '';
    if (context.hook === 'connection_closed') {
      this.#close(sessionId);
      return HookCode.CONTINUE;
    }
    const stage = this.#stageOf(context);
    if (stage === null || !settings.stages.includes(stage)) return HookCode.CONTINUE;
    const state = await this.#session(sessionId, context, settings);
    if (state === null) return HookCode.CONTINUE;
    const macros = this.#macros(context, settings);
    switch (stage) {
      case 'connect':
        return this.#answer(context, state, await state.milter.connect(this.#connectInfo(context), macros), 'connection');
      case 'helo':
        return this.#answer(context, state, await state.milter.helo(this.#heloName(context), macros), 'connection');
      case 'mail': {
        if (state.messageOpen) state.milter.abort();
        if (state.accepted === 'message') state.accepted = 'no';
        if (state.accepted !== 'no') return HookCode.CONTINUE;
        state.messageOpen = true;
        return this.#answer(context, state, await state.milter.mail(context.getMetadata('sender') ?? '', [], { ...macros, '{mail_addr}': context.getMetadata('sender') ?? '' }), 'message');
      }
      case 'rcpt':
        if (state.accepted !== 'no') return HookCode.CONTINUE;
        // A rejected recipient refuses that RCPT only: the message goes on with the others.
        return this.#answer(context, state, await state.milter.rcpt(context.getMetadata('recipient') ?? '', [], { ...macros, '{rcpt_addr}': context.getMetadata('recipient') ?? '' }), 'message', true);
      case 'data':
        return this.#message(context, state, macros);
    }
  }

  async #message(context: HookContext, state: SessionState, macros: MilterMacros): Promise<number> {
    if (state.accepted !== 'no') {
      state.messageOpen = false;
      return HookCode.CONTINUE;
    }
    const data = await state.milter.data(macros);
    if (data.kind !== 'continue') {
      state.messageOpen = false;
      return this.#answer(context, state, data, 'message');
    }
    const raw = Buffer.from(context.getMetadataBytes('message_body') ?? new Uint8Array());
    const { verdict, modifications } = await state.milter.message(raw, { eoh: macros, eom: macros });
    state.messageOpen = false;
    if (verdict.kind === 'discard') {
      editMessage(context, { discard: true });
      return HookCode.CONTINUE;
    }
    if (verdict.kind === 'reject' || verdict.kind === 'tempfail') return this.#answer(context, state, verdict, 'message');
    if (modifications.length > 0) {
      const envelope = { sender: context.getMetadata('sender') ?? '', recipients: (context.getMetadata('recipients') ?? '').split(',').filter((each) => each.length > 0) };
      const edited = applyMilterEdits(raw, envelope, modifications, (state.milter.protocol & SMFIP_HDR_LEADSPC) !== 0);
      editMessage(context, {
        ...(edited.contentChanged ? { raw: edited.raw } : {}),
        ...(edited.sender !== envelope.sender ? { sender: edited.sender } : {}),
        ...(edited.recipients.join(',') !== envelope.recipients.join(',') ? { recipients: edited.recipients } : {}),
      });
      if (modifications.some((each) => each.command === SMFIR_QUARANTINE)) {
        context.applyPluginChange('quarantine', Buffer.from('true'));
        this.#logger.info({ session: context.getMetadata('session_id'), reason: edited.quarantine }, 'milter asked for quarantine');
      }
    }
    return HookCode.CONTINUE;
  }

  /** The verdict as the hook's code: a refusal carries the milter's reply (or Postfix's default text). */
  #answer(context: HookContext, state: SessionState, verdict: MilterVerdict, scope: 'connection' | 'message', recipientOnly = false): number {
    switch (verdict.kind) {
      case 'continue':
      case 'skip':
        return HookCode.CONTINUE;
      case 'accept':
        state.accepted = scope;
        return HookCode.CONTINUE;
      case 'discard':
        // Before the message there is nothing to discard yet: Postfix treats it as accept for the message.
        state.accepted = 'message';
        return HookCode.CONTINUE;
      case 'reject':
      case 'tempfail': {
        if (!recipientOnly) state.messageOpen = false;
        const own = verdict.reply === null ? null : replyKeys(verdict.reply);
        const code = own?.code ?? (verdict.kind === 'reject' ? '550' : '451');
        const text = own?.text ?? (verdict.kind === 'reject' ? `5.7.1 ${REJECTED}` : '4.7.1 Service unavailable - try again later');
        context.applyPluginChange('smtp_reply_code', Buffer.from(code));
        context.applyPluginChange('smtp_reply_text', Buffer.from(text));
        return HookCode.STOP;
      }
    }
  }

  /** The milter step a hook event is, if any. */
  #stageOf(context: HookContext): MilterStage | null {
    const command = (context.getMetadata('command') ?? '').toUpperCase();
    switch (context.hook) {
      case 'connection_opened':
        return 'connect';
      case 'command_received':
        return command === 'HELO' || command === 'EHLO' ? 'helo' : null;
      case 'command_validated':
        return command === 'MAIL' ? 'mail' : command === 'RCPT' ? 'rcpt' : null;
      case 'message_filtered':
        return 'data';
      default:
        return null;
    }
  }


  /** The session's milter connection, opened (and told of the connection) on first use; null past MILTER_SESSIONS_MAX. */
  async #session(sessionId: string, context: HookContext, settings: MilterSettings): Promise<SessionState | null> {
    const open = this.#sessions.get(sessionId);
    if (open !== undefined) return open;
    if (this.#sessions.size >= MILTER_SESSIONS_MAX) throw hostError('SMTP_E_MILTER_UNAVAILABLE', `milter ${this.metadata.name}: ${MILTER_SESSIONS_MAX} sessions already hold a connection to it`);
    const milter = await MilterClientSession.open({ address: this.#address, connectTimeoutMs: settings.connectTimeoutMs, commandTimeoutMs: settings.commandTimeoutMs, replyBytesMax: settings.replyBytesMax });
    const state: SessionState = { milter, messageOpen: false, accepted: 'no' };
    this.#sessions.set(sessionId, state);
    // A session that began before this milter was enabled still tells it of the connection first.
    if (context.hook !== 'connection_opened' && settings.stages.includes('connect')) {
      const verdict = await milter.connect(this.#connectInfo(context), this.#macros(context, settings));
      if (verdict.kind === 'accept') state.accepted = 'connection';
    }
    return state;
  }

  #connectInfo(context: HookContext): Parameters<MilterClientSession['connect']>[0] {
    const ip = context.getMetadata('remote_ip') ?? '';
    const hostname = Buffer.from(context.getMetadata('client_hostname') || `[${ip}]`);
    const port = Number(context.getMetadata('remote_port') ?? 0);
    return { hostname, family: ip.includes(':') ? SMFIA_INET6 : SMFIA_INET, port: Number.isInteger(port) ? port : 0, address: Buffer.from(ip.replace(/^::ffff:/, '')) };
  }

  #heloName(context: HookContext): string {
    return (context.getMetadata('line') ?? '').trim().split(/\s+/)[1] ?? '';
  }

  /** The macros milters read most, from what the hook's context carries. */
  #macros(context: HookContext, settings: MilterSettings): MilterMacros {
    const ip = (context.getMetadata('remote_ip') ?? '').replace(/^::ffff:/, '');
    const name = context.getMetadata('client_hostname') || `[${ip}]`;
    const macros: Record<string, string> = {
      j: settings.hostname,
      '{daemon_name}': 'smtp-plugin-host',
      '{client_addr}': ip,
      '{client_name}': name,
      '{client_ptr}': name,
      _: `${name} [${ip}]`,
      '{if_name}': settings.hostname,
    };
    const port = context.getMetadata('remote_port');
    if (port !== undefined) macros['{client_port}'] = port;
    const user = context.getMetadata('username');
    if (user !== undefined && user !== '') macros['{auth_authen}'] = user;
    const messageId = context.getMetadata('message_id');
    if (messageId !== undefined) macros.i = context.getMetadata('session_id') ?? messageId;
    return macros;
  }

  #close(sessionId: string): void {
    const state = this.#sessions.get(sessionId);
    if (state === undefined) return;
    this.#sessions.delete(sessionId);
    state.milter.close();
  }

  #closeAll(): void {
    for (const id of [...this.#sessions.keys()]) this.#close(id);
  }
}

/** Opens a milter entry's source (`milter:<address>#<name>`): nothing connects until a session needs it. */
export function loadMilterPlugin(path: string, options: PluginOptions, logger: Logger): Plugin {
  const rest = path.slice(MILTER_SOURCE_PREFIX.length);
  const hash = rest.lastIndexOf('#');
  if (!isMilterSource(path) || hash <= 0) throw hostError('SMTP_E_CONFIG', `${path}: expected milter:<address>#<name>`);
  return new MilterPlugin(path, parseMilterAddress(rest.slice(0, hash)), rest.slice(hash + 1), options, logger);
}
