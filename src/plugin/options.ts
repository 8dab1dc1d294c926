import { hostError } from '../errors.js';

/** What the host does when a plugin fails a hook call. */
export const ON_ERROR_POLICIES = ['continue', 'tempfail', 'reject'] as const;
export type OnErrorPolicy = (typeof ON_ERROR_POLICIES)[number];

/** Limits the host enforces on a sandboxed plugin (names carry their units). */
export interface SandboxLimits {
  /** Linear memory maximum, MiB (a 64 KiB page is the granularity). */
  readonly memoryMb: number;
  /** Wall-clock time one hook call may run before it is interrupted. */
  readonly hookTimeoutMs: number;
  /** Bounds on metadata copied into or out of the sandbox. */
  readonly metadataKeyBytesMax: number;
  readonly metadataValueBytesMax: number;
  readonly metadataKeysMax: number;
}

/** Where a native library runs (config `isolation`): in the server's process, or in a child process of its own (src/isolation/). */
export const ISOLATIONS = ['in-process', 'process'] as const;
export type Isolation = (typeof ISOLATIONS)[number];

export interface PluginOptions {
  readonly limits: SandboxLimits;
  readonly onError: OnErrorPolicy;
  /** Failed calls in a row after which the plugin is disabled. */
  readonly maxConsecutiveFailures: number;
  /** Addresses the plugin may connect to (allow_connect), verbatim: "tcp:127.0.0.1:389", "unix:/run/clamd.sock". */
  readonly allowConnect: readonly string[];
  /** The plugin may use the host counters (allow_counters, ABI 1.2), under its name. */
  readonly allowCounters: boolean;
  /** Run hooks off the event loop: true or false overrides the plugin's SMTP_PLUGIN_FLAG_BLOCKING; undefined follows it. */
  readonly blocking: boolean | undefined;
  /** For a native library: where it runs; undefined means in-process. */
  readonly isolation?: Isolation;
}

/** The address forms net_connect understands (abi/smtp_plugin.h). */
const ADDRESS_PATTERN = /^(tcp:(localhost|(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}):([1-9]\d{0,4})|unix:\/[^\0\n]{0,106})$/;
/** How many grants one plugin may hold. */
const GRANTS_MAX = 64;

/** True when `address` is a grantable net_connect address. */
export function isGrantableAddress(address: string): boolean {
  const match = ADDRESS_PATTERN.exec(address);
  return match !== null && (match[6] === undefined || Number(match[6]) <= 65_535);
}

export const DEFAULT_SANDBOX_LIMITS: SandboxLimits = Object.freeze({
  memoryMb: 64,
  hookTimeoutMs: 1000,
  metadataKeyBytesMax: 256,
  metadataValueBytesMax: 16 * 1024 * 1024,
  metadataKeysMax: 256,
});

export const DEFAULT_PLUGIN_OPTIONS: PluginOptions = Object.freeze({
  limits: DEFAULT_SANDBOX_LIMITS,
  onError: 'tempfail',
  maxConsecutiveFailures: 5,
  allowConnect: Object.freeze([]) as readonly string[],
  allowCounters: false,
  blocking: undefined,
});

/** Upper bounds on the limits themselves. */
const LIMIT_RANGES: Record<keyof SandboxLimits, readonly [number, number]> = {
  memoryMb: [1, 4096],
  hookTimeoutMs: [1, 600_000],
  metadataKeyBytesMax: [1, 65_536],
  metadataValueBytesMax: [1, 1024 * 1024 * 1024],
  metadataKeysMax: [1, 100_000],
};

export type PluginOptionsInput = {
  readonly limits?: Partial<SandboxLimits>;
  readonly onError?: string;
  readonly maxConsecutiveFailures?: number;
  readonly allowConnect?: readonly unknown[];
  readonly allowCounters?: boolean;
  readonly blocking?: boolean;
  readonly isolation?: string;
};

/** Fills defaults and checks every value; `where` names the source in errors. */
export function resolvePluginOptions(input: PluginOptionsInput = {}, where = 'plugin options'): PluginOptions {
  const limits: Record<string, number> = { ...DEFAULT_SANDBOX_LIMITS };
  for (const [key, value] of Object.entries(input.limits ?? {})) {
    const range = LIMIT_RANGES[key as keyof SandboxLimits];
    if (range === undefined) throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: unknown limit "${key}" (known: ${Object.keys(LIMIT_RANGES).join(', ')})`);
    if (typeof value !== 'number' || !Number.isInteger(value) || value < range[0] || value > range[1]) {
      throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected an integer from ${range[0]} to ${range[1]} for ${key}, got ${JSON.stringify(value)}`);
    }
    limits[key] = value;
  }
  const onError = input.onError ?? DEFAULT_PLUGIN_OPTIONS.onError;
  if (!ON_ERROR_POLICIES.includes(onError as OnErrorPolicy)) {
    throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected one of ${ON_ERROR_POLICIES.join(', ')} for on_error, got ${JSON.stringify(onError)}`);
  }
  const max = input.maxConsecutiveFailures ?? DEFAULT_PLUGIN_OPTIONS.maxConsecutiveFailures;
  if (!Number.isInteger(max) || max < 1 || max > 1_000_000) {
    throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected an integer >= 1 for max_consecutive_failures, got ${JSON.stringify(max)}`);
  }
  const allowConnect = input.allowConnect ?? [];
  if (!Array.isArray(allowConnect) || allowConnect.length > GRANTS_MAX) {
    throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected a list of at most ${GRANTS_MAX} addresses for allow_connect`);
  }
  for (const address of allowConnect) {
    if (typeof address !== 'string' || !isGrantableAddress(address)) {
      throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: allow_connect entry ${JSON.stringify(address)} is not "tcp:IPV4:PORT", "tcp:localhost:PORT" or "unix:/PATH"`);
    }
  }
  if (input.allowCounters !== undefined && typeof input.allowCounters !== 'boolean') {
    throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected true or false for allow_counters, got ${JSON.stringify(input.allowCounters)}`);
  }
  if (input.blocking !== undefined && typeof input.blocking !== 'boolean') {
    throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected true or false for blocking, got ${JSON.stringify(input.blocking)}`);
  }
  if (input.isolation !== undefined && !ISOLATIONS.includes(input.isolation as Isolation)) {
    throw hostError('SMTP_E_PLUGIN_OPTIONS', `${where}: expected one of ${ISOLATIONS.map((each) => `"${each}"`).join(', ')} for isolation, got ${JSON.stringify(input.isolation)}`);
  }
  return Object.freeze({
    limits: Object.freeze(limits as unknown as SandboxLimits),
    onError: onError as OnErrorPolicy,
    maxConsecutiveFailures: max,
    allowConnect: Object.freeze([...(allowConnect as string[])]),
    allowCounters: input.allowCounters ?? false,
    blocking: input.blocking,
    ...(input.isolation === undefined ? {} : { isolation: input.isolation as Isolation }),
  });
}
