/** The 19 hooks of abi/smtp_plugin.h, in the header's order: index = value. */
export const HOOK_NAMES = [
  'message_received',
  'message_validated',
  'message_filtered',
  'message_stored',
  'message_delivered',
  'auth_started',
  'auth_completed',
  'auth_failed',
  'connection_opened',
  'connection_closed',
  'connection_upgraded',
  'command_received',
  'command_validated',
  'config_loaded',
  'config_changed',
  'server_starting',
  'server_started',
  'server_stopping',
  'server_stopped',
] as const;

export type HookName = (typeof HOOK_NAMES)[number];

/** SMTP_HOOK_COUNT. */
export const HOOK_COUNT = HOOK_NAMES.length;

const HOOK_INDEX: ReadonlyMap<string, number> = new Map(HOOK_NAMES.map((name, index) => [name, index]));

export function isHookName(name: string): name is HookName {
  return HOOK_INDEX.has(name);
}

export function hookValue(name: HookName): number {
  return HOOK_INDEX.get(name)!;
}

/** smtp_hook_result. */
export const HookCode = { CONTINUE: 0, STOP: 1, CANCEL: 2 } as const;

/** smtp_status, returned by the host functions. */
export const HostStatus = { OK: 0, NO_MEMORY: 1, TOO_LARGE: 2, INVALID: 3 } as const;

/** smtp_net_status: what the network host functions return on failure (ABI 1.1). */
export const NetStatus = { DENIED: -1, ADDRESS: -2, CONNECT: -3, TIMEOUT: -4, CLOSED: -5, IO: -6, LIMIT: -7 } as const;

/** smtp_counter_status: what counter_incr returns on failure (ABI 1.2). */
export const CounterStatus = { DENIED: -1, UNAVAILABLE: -2, INVALID: -3, LIMIT: -4 } as const;

/** The bounds on counter_incr's arguments and the host's memory table (SMTP_COUNTER_* in the header). */
export const COUNTER_LIMITS = Object.freeze({
  keyBytesMax: 256,
  /** 31 days. */
  windowSecondsMax: 2_678_400,
  /** One call adds at most this. */
  byMax: 2_147_483_647,
  /** Keys in the memory table, every plugin and window together. */
  keysMax: 100_000,
});

/** smtp_plugin_metadata.flags bits (ABI 1.1). */
export const PluginFlag = { BLOCKING: 1n } as const;

/** The first ABI version whose metadata has `flags` and whose host table has the clock and network functions. */
export const ABI_VERSION_1_1 = (1 << 16) | 1;

export const ABI_VERSION_MAJOR = 1;
export const ABI_VERSION_MINOR = 3;
export const ABI_VERSION = (ABI_VERSION_MAJOR << 16) | ABI_VERSION_MINOR;

export function formatAbiVersion(version: number): string {
  return `${version >>> 16}.${version & 0xffff}`;
}

/** True when this host can run a plugin built against `version`. */
export function isAbiCompatible(version: number): boolean {
  return version >>> 16 === ABI_VERSION_MAJOR && (version & 0xffff) <= ABI_VERSION_MINOR;
}

/** True when `handledHooks` (a metadata bitmask, 0 = all) includes `hook`. */
export function handlesHook(handledHooks: bigint, hook: HookName): boolean {
  return handledHooks === 0n || ((handledHooks >> BigInt(hookValue(hook))) & 1n) === 1n;
}
