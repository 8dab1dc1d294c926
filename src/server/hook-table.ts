import { HOOK_NAMES, hookValue, type HookName } from '../abi/hooks.js';

/**
 * What each of the 19 hooks is, in one place: the server fires hooks from
 * it, the runner decides from it whether a verdict can refuse, and
 * docs/hooks.md is kept in step with it by test/server/hook-table.test.ts.
 */

export type HookStage = 'connection' | 'command' | 'auth' | 'message' | 'server';

/** A refusal a gating hook answers with when the plugin chose none. */
export interface DefaultRefusal {
  readonly code: number;
  readonly enhanced: string;
  readonly text: string;
}

export interface HookSpec {
  readonly name: HookName;
  readonly stage: HookStage;
  /** Gating: a stop or cancel refuses what is happening. Otherwise a notification. */
  readonly refusal: DefaultRefusal | null;
  /** Every key the hook's context may carry (a key that does not apply is absent). */
  readonly keys: readonly string[];
  /** Whether the context carries message_body (the raw message). */
  readonly body: boolean;
}

/** The keys every hook of a session carries, once they are known. */
export const SESSION_KEYS = ['session_id', 'remote_ip', 'client_hostname', 'helo', 'username'] as const;
/** The key holding the raw message at the message stages. */
export const BODY_KEY = 'message_body';

const ENVELOPE_KEYS = ['sender', 'sender_domain', 'recipients', 'recipient', 'recipient_count', 'message_id', 'subject', 'header_from', 'size'] as const;
const SERVER_KEYS = ['hostname', 'host', 'port', 'version'] as const;

const refuse = (code: number, enhanced: string, text: string): DefaultRefusal => Object.freeze({ code, enhanced, text });

const SPECS: Record<HookName, Omit<HookSpec, 'name'>> = {
  connection_opened: { stage: 'connection', refusal: refuse(554, '5.7.1', 'Connection refused'), keys: [...SESSION_KEYS, 'remote_port'], body: false },
  connection_upgraded: { stage: 'connection', refusal: null, keys: [...SESSION_KEYS, 'tls_protocol', 'tls_cipher'], body: false },
  connection_closed: { stage: 'connection', refusal: null, keys: [...SESSION_KEYS], body: false },
  command_received: { stage: 'command', refusal: refuse(550, '5.7.1', 'Command refused'), keys: ['session_id', 'remote_ip', 'command', 'line'], body: false },
  command_validated: {
    stage: 'command',
    refusal: refuse(550, '5.7.1', 'Refused by policy'),
    keys: [...SESSION_KEYS, 'command', 'sender', 'sender_domain', 'recipient', 'recipient_domain'],
    body: false,
  },
  auth_started: { stage: 'auth', refusal: refuse(535, '5.7.8', 'Authentication credentials invalid'), keys: [...SESSION_KEYS, 'method', 'password'], body: false },
  auth_completed: { stage: 'auth', refusal: null, keys: [...SESSION_KEYS, 'method'], body: false },
  auth_failed: { stage: 'auth', refusal: null, keys: [...SESSION_KEYS, 'method', 'reason'], body: false },
  message_received: { stage: 'message', refusal: refuse(550, '5.7.1', 'Message refused'), keys: [...SESSION_KEYS, ...ENVELOPE_KEYS, BODY_KEY], body: true },
  message_validated: { stage: 'message', refusal: refuse(550, '5.6.0', 'Message refused: invalid content'), keys: [...SESSION_KEYS, ...ENVELOPE_KEYS, BODY_KEY], body: true },
  message_filtered: { stage: 'message', refusal: refuse(554, '5.7.1', 'Message refused by content filter'), keys: [...SESSION_KEYS, ...ENVELOPE_KEYS, BODY_KEY], body: true },
  message_stored: { stage: 'message', refusal: null, keys: [...SESSION_KEYS, ...ENVELOPE_KEYS, 'spool_id', 'message_path', 'quarantined'], body: false },
  message_delivered: {
    stage: 'message',
    refusal: null,
    keys: ['spool_id', 'message_id', 'sender', 'sender_domain', 'recipient', 'recipients', 'size', 'delivery_mode', 'delivered_path'],
    body: false,
  },
  config_loaded: { stage: 'server', refusal: null, keys: ['config_path'], body: false },
  config_changed: { stage: 'server', refusal: null, keys: ['config_path', 'changed_plugins'], body: false },
  server_starting: { stage: 'server', refusal: null, keys: [...SERVER_KEYS], body: false },
  server_started: { stage: 'server', refusal: null, keys: [...SERVER_KEYS], body: false },
  server_stopping: { stage: 'server', refusal: null, keys: [...SERVER_KEYS], body: false },
  server_stopped: { stage: 'server', refusal: null, keys: [...SERVER_KEYS], body: false },
};

/** By hook value (the header's order). */
export const HOOK_TABLE: readonly HookSpec[] = Object.freeze(HOOK_NAMES.map((name) => Object.freeze({ name, ...SPECS[name], keys: Object.freeze([...SPECS[name].keys]) })));

export function hookSpec(hook: HookName): HookSpec {
  return HOOK_TABLE[hookValue(hook)]!;
}

/** The message-stage hooks that carry the body, in the order they run. */
export const BODY_HOOKS: readonly HookName[] = Object.freeze(HOOK_TABLE.filter((spec) => spec.body).map((spec) => spec.name));
