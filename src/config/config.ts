import { existsSync, readFileSync } from 'node:fs';
import { hostname as osHostname, tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { hostError } from '../errors.js';
import { escapeRegExp, parsePluginsSection, type PluginsConfig } from './plugins-config.js';

export const AUTH_METHODS = ['PLAIN', 'LOGIN'] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

export interface ServerConfig {
  readonly host: string;
  readonly port: number;
  readonly hostname: string;
  readonly maxMessageBytes: number;
  readonly maxClients: number;
  readonly tlsKey: string | null;
  readonly tlsCert: string | null;
  readonly auth: boolean;
  readonly authMethods: readonly AuthMethod[];
  /** Require AUTH before MAIL (a submission server); off for a receiving (MX) server. */
  readonly authRequired: boolean;
  /** Allow AUTH on a connection without TLS (only for loopback tests). */
  readonly authInsecure: boolean;
  /** Log every plugin call (plugin, hook, result, duration) at info; always on in test mode. */
  readonly logHookCalls: boolean;
}

export interface StorageConfig {
  readonly spool: 'disk' | 'none';
  readonly spoolDir: string;
  readonly quarantineDir: string;
  readonly fsync: boolean;
  /** Directory fsyncs of messages arriving within this window are shared (0: off). */
  readonly groupCommitMs: number;
}

export interface DeliveryConfig {
  readonly mode: 'maildir' | 'relay' | 'none';
  readonly maildirRoot: string;
  readonly relayHost: string;
  readonly relayPort: number;
  readonly retryInitialMs: number;
  readonly retryMaxMs: number;
  readonly maxAttempts: number;
}

export interface AppConfig {
  /** The file read, or null for the embedded default. */
  readonly file: string | null;
  readonly testMode: boolean;
  readonly server: ServerConfig;
  readonly storage: StorageConfig;
  readonly delivery: DeliveryConfig;
  readonly plugins: PluginsConfig;
}

/** Every default in one place; paths are relative to the config file's folder. */
export const DEFAULTS = Object.freeze({
  server: Object.freeze({
    host: '127.0.0.1',
    port: 2525,
    hostname: osHostname(),
    max_message_bytes: 25 * 1024 * 1024,
    max_clients: 100,
    tls_key: null as string | null,
    tls_cert: null as string | null,
    auth: false,
    auth_methods: ['PLAIN', 'LOGIN'] as string[],
    auth_required: false,
    auth_insecure: false,
    log_hook_calls: false,
  }),
  storage: Object.freeze({ spool: 'disk', spool_dir: './var/spool', quarantine_dir: './var/quarantine', fsync: true, group_commit_ms: 0 }),
  delivery: Object.freeze({
    mode: 'maildir',
    maildir_root: './var/maildir',
    relay_host: '127.0.0.1',
    relay_port: 25,
    retry_initial_ms: 1000,
    retry_max_ms: 300_000,
    max_attempts: 20,
  }),
});

/** Bounds on numeric settings: [min, max]. */
const RANGES: Record<string, readonly [number, number]> = {
  'server.port': [0, 65_535],
  // Bounded by what a hook context may hold (DEFAULT_METADATA_LIMITS.valueBytesMax): message_body is one value.
  'server.max_message_bytes': [1024, 64 * 1024 * 1024],
  'server.max_clients': [1, 100_000],
  'storage.group_commit_ms': [0, 1000],
  'delivery.relay_port': [1, 65_535],
  'delivery.retry_initial_ms': [1, 3_600_000],
  'delivery.retry_max_ms': [1, 86_400_000],
  'delivery.max_attempts': [1, 1000],
};
const CHOICES: Record<string, readonly string[]> = {
  'storage.spool': ['disk', 'none'],
  'delivery.mode': ['maildir', 'relay', 'none'],
};
const TOP_KEYS = ['server', 'storage', 'delivery', 'plugins'] as const;

export interface ConfigOverrides {
  readonly port?: number;
  readonly pluginDir?: string;
  /** The guide's --test-mode: 127.0.0.1:2525, messages in a temp folder, nothing delivered onward. */
  readonly testMode?: boolean;
}

type Table = Record<string, unknown>;

function lineOfKey(source: string, section: string, key: string): number | undefined {
  const lines = source.split('\n');
  let current = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) current = header[1]!;
    else if (current === section && new RegExp(`^${escapeRegExp(key)}\\s*=`).test(line)) return i + 1;
  }
  return undefined;
}

/**
 * Reads, validates and freezes a config file (or the embedded default when
 * `path` is null). Every error is SMTP_E_CONFIG naming the file, the line
 * where known, the key and what was expected; unknown keys are errors.
 */
export function loadConfig(path: string | null, overrides: ConfigOverrides = {}): AppConfig {
  const file = path === null ? null : resolve(path);
  let source = '';
  let document: Table = {};
  if (file !== null) {
    try {
      source = readFileSync(file, 'utf8');
    } catch (cause) {
      throw hostError('SMTP_E_CONFIG', `${file}: cannot read the config file (${(cause as Error).message})`, cause);
    }
    try {
      document = parse(source) as Table;
    } catch (cause) {
      const where = cause instanceof TomlError ? `:${cause.line}` : '';
      throw hostError('SMTP_E_CONFIG', `${file}${where}: not valid TOML (${(cause as Error).message.split('\n')[0]})`, cause);
    }
  }
  const name = file ?? '(embedded default config)';
  const base = file === null ? process.cwd() : dirname(file);
  const fail = (section: string, key: string, expected: string): never => {
    const line = lineOfKey(source, section, key);
    throw hostError('SMTP_E_CONFIG', `${name}${line === undefined ? '' : `:${line}`}: ${section}.${key}: ${expected}`);
  };
  for (const key of Object.keys(document)) {
    if (!(TOP_KEYS as readonly string[]).includes(key)) {
      throw hostError('SMTP_E_CONFIG', `${name}: ${key}: unknown section (known: ${TOP_KEYS.join(', ')})`);
    }
  }

  /** Merges a section over its defaults, checking each value's type against the default's. */
  const section = <T extends Record<string, unknown>>(sectionName: 'server' | 'storage' | 'delivery', defaults: T): T => {
    const raw = document[sectionName] ?? {};
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw hostError('SMTP_E_CONFIG', `${name}: ${sectionName}: expected a table`);
    const out: Record<string, unknown> = { ...defaults };
    for (const [key, value] of Object.entries(raw as Table)) {
      if (!(key in defaults)) fail(sectionName, key, `unknown key (known: ${Object.keys(defaults).join(', ')})`);
      const full = `${sectionName}.${key}`;
      const expected = defaults[key];
      if (RANGES[full]) {
        const [min, max] = RANGES[full]!;
        if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) fail(sectionName, key, `expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
      } else if (CHOICES[full]) {
        if (typeof value !== 'string' || !CHOICES[full]!.includes(value)) fail(sectionName, key, `expected one of ${CHOICES[full]!.map((c) => `"${c}"`).join(', ')}, got ${JSON.stringify(value)}`);
      } else if (Array.isArray(expected)) {
        if (!Array.isArray(value) || value.some((item) => typeof item !== 'string')) fail(sectionName, key, `expected an array of strings, got ${JSON.stringify(value)}`);
      } else if (typeof expected === 'boolean') {
        if (typeof value !== 'boolean') fail(sectionName, key, `expected true or false, got ${JSON.stringify(value)}`);
      } else if (typeof value !== 'string' || value === '') {
        fail(sectionName, key, `expected a non-empty string, got ${JSON.stringify(value)}`);
      }
      out[key] = value;
    }
    return out as T;
  };

  const s = section('server', DEFAULTS.server);
  const st = section('storage', DEFAULTS.storage);
  const d = section('delivery', DEFAULTS.delivery);
  const at = (p: string): string => (isAbsolute(p) ? p : join(base, p));
  for (const method of s.auth_methods) {
    if (!(AUTH_METHODS as readonly string[]).includes(method.toUpperCase())) fail('server', 'auth_methods', `expected methods from ${AUTH_METHODS.join(', ')}, got "${method}"`);
  }
  if ((s.tls_key === null) !== (s.tls_cert === null)) {
    const [missing, given] = s.tls_key === null ? ['tls_key', 'tls_cert'] : ['tls_cert', 'tls_key'];
    fail('server', missing, `required when ${given} is set (STARTTLS needs both)`);
  }
  for (const key of ['tls_key', 'tls_cert'] as const) {
    const value = s[key];
    if (value !== null && !existsSync(at(value))) fail('server', key, `no such file: ${at(value)}`);
  }
  if (d.retry_max_ms < d.retry_initial_ms) fail('delivery', 'retry_max_ms', `expected at least retry_initial_ms (${d.retry_initial_ms})`);

  const testMode = overrides.testMode === true;
  const pluginsRaw = (document.plugins ?? {}) as Table;
  const pluginsSection = overrides.pluginDir === undefined ? pluginsRaw : { ...pluginsRaw, directory: resolve(overrides.pluginDir) };
  const parsed = parsePluginsSection(pluginsSection, file ?? join(base, 'config.toml'), source);
  // Test mode is the guide's development mode: plugins reload when rebuilt.
  const plugins = testMode ? Object.freeze({ ...parsed, hotReload: true }) : parsed;

  // Test mode keeps messages in a fresh temporary folder and delivers nothing onward.
  const scratch = testMode ? mkdtempSync(join(tmpdir(), 'smtp-test-mode-')) : null;
  const storage: StorageConfig = Object.freeze({
    spool: st.spool as StorageConfig['spool'],
    spoolDir: scratch ? join(scratch, 'spool') : at(st.spool_dir),
    quarantineDir: scratch ? join(scratch, 'quarantine') : at(st.quarantine_dir),
    fsync: st.fsync,
    groupCommitMs: st.group_commit_ms,
  });
  const mode = testMode ? 'none' : (d.mode as DeliveryConfig['mode']);
  if (storage.spool === 'none' && mode !== 'none') fail('storage', 'spool', `"none" keeps no copy to deliver from: it needs delivery.mode = "none" (delivery.mode is "${mode}")`);
  return Object.freeze({
    file,
    testMode,
    server: Object.freeze({
      host: testMode ? '127.0.0.1' : s.host,
      port: overrides.port ?? (testMode ? 2525 : s.port),
      hostname: s.hostname,
      maxMessageBytes: s.max_message_bytes,
      maxClients: s.max_clients,
      tlsKey: s.tls_key === null ? null : at(s.tls_key),
      tlsCert: s.tls_cert === null ? null : at(s.tls_cert),
      auth: s.auth,
      authMethods: Object.freeze(s.auth_methods.map((m) => m.toUpperCase() as AuthMethod)),
      authRequired: s.auth_required,
      authInsecure: s.auth_insecure,
      logHookCalls: testMode || s.log_hook_calls,
    }),
    storage,
    delivery: Object.freeze({
      mode,
      maildirRoot: at(d.maildir_root),
      relayHost: d.relay_host,
      relayPort: d.relay_port,
      retryInitialMs: d.retry_initial_ms,
      retryMaxMs: d.retry_max_ms,
      maxAttempts: d.max_attempts,
    }),
    plugins,
  });
}
