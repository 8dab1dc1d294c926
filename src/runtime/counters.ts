import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import { deniedCounters, type GuestCounters } from '../sandbox/guest-counters.js';
import { runtimeLibrary } from './host-runtime.js';

/**
 * The host counters of ABI 1.2 (abi/smtp_plugin.h, counter_incr), as the
 * Node host drives them: the backend lives in the native runtime
 * (src/runtime/counters.zig), one per process, shared by every plugin
 * backend; this file configures it and is the sandbox's way in.
 */

/** What a counter call answers while Redis is down ([cluster] on_redis_down). */
export type RedisDownPolicy = 'tempfail' | 'local';

export interface HostCountersConfig {
  /** "redis://[user:password@]host:port[/db]"; null: counters live in this process's memory. */
  readonly redis: string | null;
  /** Each Redis exchange (connect included) waits at most this long. */
  readonly redisTimeoutMs: number;
  readonly onRedisDown: RedisDownPolicy;
  /** The first part of every Redis key: `<keyPrefix>:ctr:<plugin>:<key>:<window_seconds>:<window index>`. */
  readonly keyPrefix: string;
  /** Where Redis going down and coming back is logged (SMTP_E_COUNTER_UNAVAILABLE); default: nowhere. */
  readonly logger?: Logger;
}

/** How often the host looks whether Redis went down or came back, to log it. */
export const REDIS_WATCH_INTERVAL_MS = 1000;
/** The bounds the runtime enforces on the configuration (src/runtime/counters.zig). */
const PREFIX_BYTES_MAX = 64;
const CREDENTIAL_BYTES_MAX = 256;

interface CounterFunctions {
  incr: (namespace: Buffer, namespaceLen: number, key: Uint8Array, keyLen: number, by: number, windowSeconds: number, deadlineMs: number) => number | bigint;
  configure: (host: string, hostLen: number, port: number, db: number, user: string, userLen: number, password: string, passwordLen: number, timeoutMs: number, policy: number, prefix: string, prefixLen: number, unusable: number) => number;
  state: (numbers: BigInt64Array, error: Buffer, cap: number) => number;
}

let functions: CounterFunctions | undefined;

function load(): CounterFunctions {
  if (functions) return functions;
  const lib = runtimeLibrary();
  functions = {
    incr: lib.func('int64_t smtp_host_counters_incr(const uint8_t *ns, size_t ns_len, const uint8_t *key, size_t key_len, int64_t by, uint32_t window_seconds, int64_t deadline_ms)'),
    configure: lib.func('int smtp_host_counters_configure(const char *host, size_t host_len, uint16_t port, uint32_t db, const char *user, size_t user_len, const char *password, size_t password_len, uint32_t timeout_ms, uint32_t policy, const char *prefix, size_t prefix_len, int unusable)'),
    state: lib.func('size_t smtp_host_counters_state(_Out_ int64_t *numbers, _Out_ uint8_t *error, size_t cap)'),
  };
  return functions;
}

const POLICY_CODES: Record<RedisDownPolicy, number> = { tempfail: 0, local: 1 };

/** The Redis the counters use: an IP address (a name resolved once, here), port, database and credentials. */
interface RedisTarget {
  readonly host: string;
  readonly port: number;
  readonly db: number;
  readonly user: string;
  readonly password: string;
}

/** Parses and resolves `redis://...`; the reason it cannot be used otherwise. */
async function redisTarget(url: string, timeoutMs: number): Promise<RedisTarget | string> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `"${url}" is not a URL`;
  }
  if (parsed.protocol === 'rediss:') return 'rediss:// (TLS) is not supported by the host counters: use redis:// on a trusted network, or a local TLS tunnel';
  if (parsed.protocol !== 'redis:') return `"${url}" is not a redis:// URL`;
  const name = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = parsed.port === '' ? 6379 : Number(parsed.port);
  const path = parsed.pathname.replace(/^\//, '');
  const db = path === '' ? 0 : Number(path);
  if (!Number.isInteger(db) || db < 0 || db > 0xffff_ffff) return `"${url}": the database "${path}" is not a number`;
  const user = decodeURIComponent(parsed.username);
  const password = decodeURIComponent(parsed.password);
  if (Buffer.byteLength(user) > CREDENTIAL_BYTES_MAX || Buffer.byteLength(password) > CREDENTIAL_BYTES_MAX) return `the credentials are over ${CREDENTIAL_BYTES_MAX} bytes`;
  if (isIP(name) !== 0) return { host: name, port, db, user, password };
  try {
    const timer = new Promise<never>((_, fail) => setTimeout(() => fail(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs).unref());
    const found = await Promise.race([lookup(name), timer]);
    return { host: found.address, port, db, user, password };
  } catch (error) {
    return `the host name "${name}" does not resolve (${(error as Error).message})`;
  }
}

let watch: NodeJS.Timeout | undefined;

/**
 * Sets the backend of every plugin's counters in this process (the last
 * call wins; without one they live in memory). A Redis that cannot be used
 * at all (rediss://, a name that does not resolve) is logged as an error and
 * taken as down for good: calls answer per `onRedisDown`. With a logger,
 * Redis going down and coming back are logged as they happen.
 */
export async function configureHostCounters(config: HostCountersConfig): Promise<void> {
  const fns = load();
  if (Buffer.byteLength(config.keyPrefix) > PREFIX_BYTES_MAX || config.keyPrefix === '') throw hostError('SMTP_E_CONFIG', `the counters' key prefix must be 1 to ${PREFIX_BYTES_MAX} bytes, got "${config.keyPrefix}"`);
  if (!Number.isInteger(config.redisTimeoutMs) || config.redisTimeoutMs < 1) throw hostError('SMTP_E_CONFIG', `the counters' Redis timeout must be a positive integer (ms), got ${config.redisTimeoutMs}`);
  const target = config.redis === null ? null : await redisTarget(config.redis, config.redisTimeoutMs);
  const unusable = typeof target === 'string';
  if (unusable) config.logger?.error({ code: 'SMTP_E_COUNTER_UNAVAILABLE', redis: redacted(config.redis!), err: target }, 'the host counters cannot use this Redis; counter calls answer per on_redis_down');
  const usable = target === null || unusable ? null : target;
  const host = usable?.host ?? '';
  const user = usable?.user ?? '';
  const password = usable?.password ?? '';
  const status = fns.configure(host, Buffer.byteLength(host), usable?.port ?? 0, usable?.db ?? 0, user, Buffer.byteLength(user), password, Buffer.byteLength(password), config.redisTimeoutMs, POLICY_CODES[config.onRedisDown], config.keyPrefix, Buffer.byteLength(config.keyPrefix), unusable ? 1 : 0);
  if (status !== 0) throw hostError('SMTP_E_CONFIG', `the native runtime refused the counters' configuration (redis ${config.redis === null ? 'none' : redacted(config.redis)})`);
  if (watch !== undefined) clearInterval(watch);
  watch = undefined;
  if (config.redis !== null && config.logger !== undefined) watch = watchRedis(config.redis, config.logger);
}

/** The URL without its password, for logs. */
function redacted(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    return parsed.toString();
  } catch {
    return url;
  }
}

function watchRedis(url: string, logger: Logger): NodeJS.Timeout {
  let wasDown = hostCounterState().redisDown;
  const timer = setInterval(() => {
    const now = hostCounterState();
    if (now.redisDown === wasDown) return;
    wasDown = now.redisDown;
    if (now.redisDown) logger.warn({ code: 'SMTP_E_COUNTER_UNAVAILABLE', redis: redacted(url), err: now.lastError, failures: now.redisFailures }, 'Redis does not answer the host counters; counter calls answer per on_redis_down');
    else logger.info({ redis: redacted(url) }, 'Redis answers the host counters again');
  }, REDIS_WATCH_INTERVAL_MS);
  timer.unref();
  return timer;
}

export interface HostCounterState {
  /** Keys in the memory table (every plugin and window). */
  readonly keys: number;
  readonly redisConfigured: boolean;
  readonly redisDown: boolean;
  /** Failed Redis exchanges since the process started. */
  readonly redisFailures: number;
  /** The last failure ("Timeout", "ConnectFailed", ...), or "". */
  readonly lastError: string;
}

export function hostCounterState(): HostCounterState {
  const numbers = new BigInt64Array(4);
  const error = Buffer.alloc(128);
  const length = load().state(numbers, error, error.length);
  return {
    keys: Number(numbers[0]),
    redisConfigured: numbers[1] !== 0n,
    redisDown: numbers[2] !== 0n,
    redisFailures: Number(numbers[3]),
    lastError: error.toString('utf8', 0, length),
  };
}

/**
 * counter_incr for the plugin `namespace` (its name): the count in the
 * current window after adding `by`, or an smtp_counter_status. May wait on
 * Redis until `deadlineMs` (a Date.now() time; 0: the Redis timeout only).
 */
export function counterIncr(namespace: string, key: Uint8Array, by: number, windowSeconds: number, deadlineMs = 0): number {
  const name = namespaceBytes(namespace);
  return Number(load().incr(name, name.length, key, key.length, by, windowSeconds, deadlineMs));
}

/** The last namespace encoded: a sandboxed plugin calls with its own name every time (a third of a call's cost, encoded afresh). */
let lastNamespace = { text: '', bytes: Buffer.alloc(0) };

function namespaceBytes(namespace: string): Buffer {
  if (lastNamespace.text !== namespace) lastNamespace = { text: namespace, bytes: Buffer.from(namespace, 'utf8') };
  return lastNamespace.bytes;
}

/** A sandboxed plugin's counters (src/sandbox/guest-counters.ts): the runtime's with allow_counters, else refused and logged. */
export function sandboxCounters(allowed: boolean, logger: Logger): GuestCounters {
  if (!allowed) return deniedCounters(logger);
  load();
  return { incr: counterIncr };
}

