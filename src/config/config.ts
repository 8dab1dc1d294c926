import { existsSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { availableParallelism, hostname as osHostname, tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { hostError, isHostError } from '../errors.js';
import { formatNetwork, isLoopbackHost, parseNetwork } from './networks.js';
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
  /** A client must send each complete command line within this long after the server is ready for it (Postfix smtpd_timeout with per-request deadlines). */
  readonly commandTimeoutMs: number;
  /** The whole message, from the 354 reply to the final dot, must arrive within this long. */
  readonly dataTimeoutMs: number;
  /** In DATA each byte earns 1/rate s more time, never more than commandTimeoutMs ahead (Postfix smtpd_min_data_rate); 0: no rate, commandTimeoutMs between reads. */
  readonly minDataRateBytesPerS: number;
  /** Simultaneous connections from one client IP; the next gets 421 4.7.0 and is closed. */
  readonly maxClientsPerIp: number;
  /** Networks (CIDR, normalised) max_clients_per_ip does not apply to; by default [policy] relay_networks, as Postfix's smtpd_client_event_limit_exceptions = $mynetworks. */
  readonly maxClientsPerIpExceptions: readonly string[];
  /** Worker processes sharing the listener (src/cluster/): 1 runs the server in this process. */
  readonly workers: number;
}

/** The [policy] section: what is accepted at RCPT (src/server/relay-policy.ts decides). */
export interface PolicyConfig {
  /** Mail for these domains (lower-case) is accepted from anyone. */
  readonly localDomains: readonly string[];
  /** Clients in these networks may relay (CIDR text, normalised: "127.0.0.0/8", "::1/128"). */
  readonly relayNetworks: readonly string[];
  /** Recipients per transaction; the next RCPT gets 452 4.5.3. */
  readonly maxRecipients: number;
  /**
   * The known local users (lower-case): "alice" (at every local domain),
   * "alice@example.org" or "@example.org" (everyone there). null: every local
   * user is accepted.
   */
  readonly localRecipients: readonly string[] | null;
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

/** The [admin] section: the HTTP listener for metrics, the admin API and the status page (src/admin/). */
export interface AdminConfig {
  /** Where it listens; null: no listener (the default). */
  readonly listen: { readonly host: string; readonly port: number } | null;
  /** The bearer token every state-changing call (and reading the config) must carry; set whenever listen is. */
  readonly token: string | null;
}

/** What a counter call answers while Redis is down: tempfail (SMTP_COUNTER_E_UNAVAILABLE, the plugin's tempfail) or local (this process's counts). */
export type RedisDownPolicy = 'tempfail' | 'local';

/** The [cluster] section: state shared between workers and instances (docs/scale-out.md). */
export interface ClusterConfig {
  /** redis://host:port[/db] (Valkey works the same); null: counters live in process memory and reloads are not fanned out. */
  readonly redis: string | null;
  /** Each Redis command waits at most this long. */
  readonly redisTimeoutMs: number;
  readonly onRedisDown: RedisDownPolicy;
  /** Prefixes every Redis key and channel, so several clusters can share one Redis. */
  readonly keyPrefix: string;
  /** This instance's name in the cluster (its spool directory, its reload notices): default the host name and the port. */
  readonly instanceId: string;
}

/** The [tracing] section: OpenTelemetry traces over OTLP/HTTP (src/ops/tracing.ts). */
export interface TracingConfig {
  /** Where spans are sent, e.g. http://127.0.0.1:4318/v1/traces. */
  readonly otlpEndpoint: string;
  readonly serviceName: string;
  /** Sessions traced, in percent (a plugin call or message is traced with its session). */
  readonly samplePercent: number;
}

export interface AppConfig {
  /** The file read, or null for the embedded default. */
  readonly file: string | null;
  readonly testMode: boolean;
  readonly server: ServerConfig;
  readonly storage: StorageConfig;
  readonly delivery: DeliveryConfig;
  readonly policy: PolicyConfig;
  readonly plugins: PluginsConfig;
  readonly admin: AdminConfig;
  /** null: no tracing (the default). */
  readonly tracing: TracingConfig | null;
  readonly cluster: ClusterConfig;
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
    // Postfix smtpd_timeout (300s) under smtpd_per_request_deadline; Haraka's inactivity_timeout is 300 s too.
    command_timeout_ms: 300_000,
    // Neither peer bounds DATA as a whole; ours: 25 MiB (max_message_bytes) at 14.6 KB/s.
    data_timeout_ms: 1_800_000,
    // Postfix smtpd_min_data_rate.
    min_data_rate_bytes_per_s: 500,
    // Postfix smtpd_client_connection_count_limit (half its default_process_limit of 100);
    // at most max_clients when not set.
    max_clients_per_ip: 50,
    // null: [policy] relay_networks (Postfix smtpd_client_event_limit_exceptions = $mynetworks).
    max_clients_per_ip_exceptions: null as string[] | null,
    // 1: one process (Haraka's nodes = 1); "auto": one per core.
    workers: 1 as number | string,
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
  policy: Object.freeze({
    // null: [server] hostname and "localhost" (Postfix mydestination = $myhostname, localhost.$mydomain, localhost).
    local_domains: null as string[] | null,
    // Postfix's mynetworks_style = host: this machine only.
    relay_networks: ['127.0.0.0/8', '::1/128'] as string[],
    // RFC 5321 4.5.3.1.8's minimum buffer (Postfix allows 1000).
    max_recipients: 100,
    // null: every local user is accepted (Postfix local_recipient_maps = empty).
    local_recipients: null as string[] | null,
    local_recipients_file: null as string | null,
  }),
  admin: Object.freeze({
    // null: no admin listener. "127.0.0.1:9025" is the documented choice.
    listen: null as string | null,
    token: null as string | null,
    token_file: null as string | null,
  }),
  cluster: Object.freeze({
    redis: null as string | null,
    redis_timeout_ms: 500,
    // Limits fail closed: a rate limit that silently counts per process is wrong the moment there are two.
    on_redis_down: 'tempfail',
    key_prefix: 'smtp-plugin-host',
    instance_id: null as string | null,
  }),
  tracing: Object.freeze({
    // null: no traces.
    otlp_endpoint: null as string | null,
    service_name: 'smtp-plugin-host',
    sample_percent: 100,
  }),
});

/** A shorter admin token is refused: it guards disabling plugins and deleting mail. */
export const ADMIN_TOKEN_CHARS_MIN = 16;
/** A token file is a secret of a line, not a document. */
const ADMIN_TOKEN_FILE_BYTES_MAX = 4096;

/** Bounds on numeric settings: [min, max]. */
const RANGES: Record<string, readonly [number, number]> = {
  'server.port': [0, 65_535],
  // Bounded by what a hook context may hold (DEFAULT_METADATA_LIMITS.valueBytesMax): message_body is one value.
  'server.max_message_bytes': [1024, 64 * 1024 * 1024],
  'server.max_clients': [1, 100_000],
  'server.command_timeout_ms': [1000, 3_600_000],
  'server.data_timeout_ms': [1000, 86_400_000],
  'server.min_data_rate_bytes_per_s': [0, 1_000_000_000],
  'server.max_clients_per_ip': [1, 100_000],
  'policy.max_recipients': [1, 100_000],
  'storage.group_commit_ms': [0, 1000],
  'delivery.relay_port': [1, 65_535],
  'delivery.retry_initial_ms': [1, 3_600_000],
  'delivery.retry_max_ms': [1, 86_400_000],
  'delivery.max_attempts': [1, 1000],
  'tracing.sample_percent': [0, 100],
  'cluster.redis_timeout_ms': [10, 60_000],
};
const CHOICES: Record<string, readonly string[]> = {
  'storage.spool': ['disk', 'none'],
  'delivery.mode': ['maildir', 'relay', 'none'],
  'cluster.on_redis_down': ['tempfail', 'local'],
};
/** Keys of more than one type, checked after the merge by their own function. */
const CHECKED_APART = new Set(['server.workers']);
/** Keys whose value is a list of strings (their default may be null: "derived"). */
const STRING_LISTS = new Set(['server.auth_methods', 'server.max_clients_per_ip_exceptions', 'policy.local_domains', 'policy.relay_networks', 'policy.local_recipients']);
const TOP_KEYS = ['server', 'storage', 'delivery', 'policy', 'plugins', 'admin', 'tracing', 'cluster'] as const;
/** Bounds on the lists and the map file, like every other input. */
const LIST_ENTRIES_MAX = 10_000;
const LOCAL_RECIPIENTS_MAX = 1_000_000;
const LOCAL_RECIPIENTS_FILE_BYTES_MAX = 64 * 1024 * 1024;
const HOST_NAME = /^(?=.{1,253}\.?$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;

/** Why `host` cannot be listened on as written, or null. Names are resolved at listen (SMTP_E_LISTEN). */
function hostProblem(host: string): string | null {
  if (isIP(host) !== 0) return null;
  if (/^\[.*\]$/.test(host)) return `expected an IPv6 address without brackets, got "${host}"`;
  if (/^[\d.]+$/.test(host)) return `"${host}" is not a valid IPv4 address`;
  if (!HOST_NAME.test(host)) return `expected an IP address or a host name, got "${host}"`;
  return null;
}

/** A domain as local_domains holds it: a host name or an address literal ("[192.0.2.1]"), lower-case, no final dot. */
function domainProblem(domain: string): string | null {
  const literal = /^\[(.*)\]$/.exec(domain);
  if (literal) return isIP(literal[1]!.replace(/^ipv6:/i, '')) !== 0 ? null : `"${domain}" is not an address literal`;
  return HOST_NAME.test(domain) ? null : `"${domain}" is not a domain name`;
}

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

type Fail = (section: string, key: string, expected: string) => never;

/** Entries of local_recipients (inline or from the file), checked and lower-cased; `where` names the entry in messages. */
function recipientEntry(raw: string, localDomains: readonly string[], where: string): string {
  const entry = raw.trim().toLowerCase();
  if (entry === '' || /[\s\x00-\x1f\x7f]/.test(entry)) throw new Error(`${where}: ${JSON.stringify(raw)} is not a user, user@domain or @domain`);
  const at = entry.lastIndexOf('@');
  if (at < 0) return entry;
  const domain = entry.slice(at + 1).replace(/\.$/, '');
  if (domain === '') throw new Error(`${where}: ${JSON.stringify(raw)} has no domain`);
  // A user of a domain that is not local would never be looked up: surely a typo.
  if (!localDomains.includes(domain)) throw new Error(`${where}: ${JSON.stringify(raw)}: ${domain} is not in policy.local_domains (${localDomains.join(', ')})`);
  return `${entry.slice(0, at)}@${domain}`;
}

/** Reads a local_recipients_file: one user, user@domain or @domain per line (the first word; "#" starts a comment), so a Postfix map file serves. */
function readRecipientsFile(path: string, localDomains: readonly string[], fail: Fail): string[] {
  let text: string;
  let size: number;
  try {
    size = statSync(path).size;
    text = size > LOCAL_RECIPIENTS_FILE_BYTES_MAX ? '' : readFileSync(path, 'utf8');
  } catch (cause) {
    return fail('policy', 'local_recipients_file', `cannot read ${path} (${(cause as Error).message})`);
  }
  if (size > LOCAL_RECIPIENTS_FILE_BYTES_MAX) fail('policy', 'local_recipients_file', `${path} is ${size} bytes; at most ${LOCAL_RECIPIENTS_FILE_BYTES_MAX} are read`);
  const entries: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const word = lines[i]!.replace(/#.*/, '').trim().split(/\s+/)[0]!;
    if (word === '') continue;
    if (entries.length >= LOCAL_RECIPIENTS_MAX) fail('policy', 'local_recipients_file', `${path} holds more than ${LOCAL_RECIPIENTS_MAX} entries`);
    try {
      entries.push(recipientEntry(word, localDomains, `${path}:${i + 1}`));
    } catch (error) {
      fail('policy', 'local_recipients_file', (error as Error).message);
    }
  }
  return entries;
}

/** CIDR texts checked and normalised, duplicates dropped. */
function networksOf(texts: readonly string[], section: string, key: string, fail: Fail): string[] {
  const networks = texts.map((text) => {
    const network = parseNetwork(text);
    return typeof network === 'string' ? fail(section, key, network) : formatNetwork(network);
  });
  return [...new Set(networks)];
}

/** Validates [policy] and freezes it; defaults that depend on [server] are filled here. */
function policyOf(p: (typeof DEFAULTS)['policy'], hostname: string, at: (path: string) => string, fail: Fail): PolicyConfig {
  const localDomains = [...new Set((p.local_domains ?? [hostname, 'localhost']).map((domain) => domain.trim().toLowerCase().replace(/\.$/, '')))];
  if (p.local_domains !== null) {
    for (const domain of localDomains) {
      const problem = domainProblem(domain);
      if (problem !== null) fail('policy', 'local_domains', problem);
    }
  }
  const relayNetworks = networksOf(p.relay_networks, 'policy', 'relay_networks', fail);
  let localRecipients: string[] | null = null;
  if (p.local_recipients !== null) {
    localRecipients = p.local_recipients.map((entry, i) => {
      try {
        return recipientEntry(entry, localDomains, `entry ${i + 1}`);
      } catch (error) {
        return fail('policy', 'local_recipients', (error as Error).message);
      }
    });
  }
  if (p.local_recipients_file !== null) {
    localRecipients = [...(localRecipients ?? []), ...readRecipientsFile(at(p.local_recipients_file), localDomains, fail)];
  }
  return Object.freeze({
    localDomains: Object.freeze(localDomains),
    relayNetworks: Object.freeze(relayNetworks),
    maxRecipients: p.max_recipients,
    localRecipients: localRecipients === null ? null : Object.freeze([...new Set(localRecipients)]),
  });
}

/**
 * Reads, validates and freezes a config file (or the embedded default when
 * `path` is null). Every error is SMTP_E_CONFIG naming the file, the line
 * where known, the key and what was expected; unknown keys are errors.
 */
export function loadConfig(path: string | null, overrides: ConfigOverrides = {}): AppConfig {
  const file = path === null ? null : resolve(path);
  let source = '';
  if (file !== null) {
    try {
      source = readFileSync(file, 'utf8');
    } catch (cause) {
      throw hostError('SMTP_E_CONFIG', `${file}: cannot read the config file (${(cause as Error).message})`, cause);
    }
  }
  return configFromText(source, file, overrides);
}

/**
 * loadConfig of a text not (yet) in its file: `file` is where it would be
 * (relative paths resolve beside it; null: the working directory, as for
 * the embedded default). The admin API validates a config this way.
 */
export function configFromText(source: string, file: string | null, overrides: ConfigOverrides = {}): AppConfig {
  let document: Table = {};
  if (source !== '') {
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
  const section = <T extends Record<string, unknown>>(sectionName: 'server' | 'storage' | 'delivery' | 'policy' | 'admin' | 'tracing' | 'cluster', defaults: T): T => {
    const raw = document[sectionName] ?? {};
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw hostError('SMTP_E_CONFIG', `${name}: ${sectionName}: expected a table`);
    const out: Record<string, unknown> = { ...defaults };
    for (const [key, value] of Object.entries(raw as Table)) {
      if (!(key in defaults)) fail(sectionName, key, `unknown key (known: ${Object.keys(defaults).join(', ')})`);
      const full = `${sectionName}.${key}`;
      const expected = defaults[key];
      if (CHECKED_APART.has(full)) {
        // Checked by its own function below (more than one type is allowed).
      } else if (RANGES[full]) {
        const [min, max] = RANGES[full]!;
        if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) fail(sectionName, key, `expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
      } else if (CHOICES[full]) {
        if (typeof value !== 'string' || !CHOICES[full]!.includes(value)) fail(sectionName, key, `expected one of ${CHOICES[full]!.map((c) => `"${c}"`).join(', ')}, got ${JSON.stringify(value)}`);
      } else if (STRING_LISTS.has(full) || Array.isArray(expected)) {
        if (!Array.isArray(value) || value.some((item) => typeof item !== 'string')) fail(sectionName, key, `expected an array of strings, got ${JSON.stringify(value)}`);
        if ((value as string[]).length > LIST_ENTRIES_MAX) fail(sectionName, key, `expected at most ${LIST_ENTRIES_MAX} entries, got ${(value as string[]).length}`);
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
  const p = section('policy', DEFAULTS.policy);
  const a = section('admin', DEFAULTS.admin);
  const t = section('tracing', DEFAULTS.tracing);
  const c = section('cluster', DEFAULTS.cluster);
  const at = (path: string): string => (isAbsolute(path) ? path : join(base, path));
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
  const host = testMode ? '127.0.0.1' : s.host;
  const hostWrong = hostProblem(s.host);
  if (hostWrong !== null) fail('server', 'host', hostWrong);
  // AUTH in clear text is only for a listener nobody else can reach.
  if (s.auth_required && !s.auth) fail('server', 'auth_required', 'true needs auth = true: with AUTH off no client could ever send mail');
  if (s.auth_insecure && !isLoopbackHost(host)) {
    fail('server', 'auth_insecure', `true is only allowed on a loopback listener (host 127.0.0.0/8, ::1 or localhost); host is "${host}": offer STARTTLS (tls_key, tls_cert) instead`);
  }
  const serverTable = (document.server ?? {}) as Table;
  if (serverTable.max_clients_per_ip !== undefined && s.max_clients_per_ip > s.max_clients) {
    fail('server', 'max_clients_per_ip', `expected at most server.max_clients (${s.max_clients}), got ${s.max_clients_per_ip}`);
  }
  const maxClientsPerIp = Math.min(s.max_clients_per_ip, s.max_clients);
  const policy = policyOf(p, s.hostname, at, fail);
  const maxClientsPerIpExceptions = s.max_clients_per_ip_exceptions === null ? policy.relayNetworks : Object.freeze(networksOf(s.max_clients_per_ip_exceptions, 'server', 'max_clients_per_ip_exceptions', fail));
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
      host,
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
      commandTimeoutMs: s.command_timeout_ms,
      dataTimeoutMs: s.data_timeout_ms,
      minDataRateBytesPerS: s.min_data_rate_bytes_per_s,
      maxClientsPerIp,
      maxClientsPerIpExceptions,
      workers: workersOf(s.workers, fail),
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
    policy,
    plugins,
    admin: adminOf(a, at, fail),
    tracing: tracingOf(t, fail),
    cluster: clusterOf(c, s.hostname, overrides.port ?? s.port, fail),
  });
}

/** Workers at most: more than cores only adds switching; this bounds a typo. */
export const WORKERS_MAX = 256;

function workersOf(value: number | string, fail: Fail): number {
  if (value === 'auto') return Math.max(1, Math.min(WORKERS_MAX, availableParallelism()));
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > WORKERS_MAX) fail('server', 'workers', `expected an integer from 1 to ${WORKERS_MAX} or "auto", got ${JSON.stringify(value)}`);
  return value as number;
}

/** Characters of a Redis key prefix or an instance id: they become key and folder names. */
const NAME_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

function clusterOf(c: (typeof DEFAULTS)['cluster'], hostname: string, port: number, fail: Fail): ClusterConfig {
  if (c.redis !== null) {
    let url: URL | null = null;
    try {
      url = new URL(c.redis);
    } catch {
      url = null;
    }
    // rediss:// (TLS) is refused: the host counters' Redis client speaks plain RESP.
    if (url === null || url.protocol !== 'redis:' || url.hostname === '') fail('cluster', 'redis', `expected a redis://host:port URL (TLS, rediss://, is not supported), got ${JSON.stringify(c.redis)}`);
  }
  if (!NAME_PATTERN.test(c.key_prefix)) fail('cluster', 'key_prefix', `expected 1-64 characters of A-Z, a-z, 0-9, ".", "_" or "-", got ${JSON.stringify(c.key_prefix)}`);
  const instanceId = c.instance_id ?? `${hostname}-${port}`.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64);
  if (!NAME_PATTERN.test(instanceId)) fail('cluster', 'instance_id', `expected 1-64 characters of A-Z, a-z, 0-9, ".", "_" or "-", got ${JSON.stringify(instanceId)}`);
  return Object.freeze({ redis: c.redis, redisTimeoutMs: c.redis_timeout_ms, onRedisDown: c.on_redis_down as RedisDownPolicy, keyPrefix: c.key_prefix, instanceId });
}

function tracingOf(t: (typeof DEFAULTS)['tracing'], fail: Fail): TracingConfig | null {
  if (t.otlp_endpoint === null) return null;
  let url: URL | null = null;
  try {
    url = new URL(t.otlp_endpoint);
  } catch {
    url = null;
  }
  if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:')) fail('tracing', 'otlp_endpoint', `expected an http:// or https:// URL (an OTLP/HTTP traces endpoint, e.g. "http://127.0.0.1:4318/v1/traces"), got ${JSON.stringify(t.otlp_endpoint)}`);
  return Object.freeze({ otlpEndpoint: t.otlp_endpoint, serviceName: t.service_name, samplePercent: t.sample_percent });
}

/** host:port, or [v6]:port. */
function listenAddress(text: string): { host: string; port: number } | null {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(text);
  if (match === null) return null;
  const port = Number(match[3]);
  const host = match[1] ?? match[2]!;
  return port <= 65_535 && hostProblem(host) === null ? { host, port } : null;
}

function adminOf(a: (typeof DEFAULTS)['admin'], at: (path: string) => string, fail: Fail): AdminConfig {
  if (a.token !== null && a.token_file !== null) fail('admin', 'token', 'set token or token_file, not both');
  let token = a.token;
  if (a.token_file !== null) {
    const path = at(a.token_file);
    let text: string;
    try {
      if (statSync(path).size > ADMIN_TOKEN_FILE_BYTES_MAX) fail('admin', 'token_file', `${path} is over ${ADMIN_TOKEN_FILE_BYTES_MAX} bytes: expected one line holding the token`);
      text = readFileSync(path, 'utf8');
    } catch (cause) {
      if (isHostError(cause)) throw cause;
      return fail('admin', 'token_file', `cannot read ${path} (${(cause as Error).message})`);
    }
    token = text.trim();
  }
  if (token !== null && (token.length < ADMIN_TOKEN_CHARS_MIN || /\s/.test(token))) {
    fail('admin', a.token_file === null ? 'token' : 'token_file', `expected a token of at least ${ADMIN_TOKEN_CHARS_MIN} characters without spaces`);
  }
  if (a.listen === null) return Object.freeze({ listen: null, token });
  const listen = listenAddress(a.listen);
  if (listen === null) fail('admin', 'listen', `expected "host:port" (an address of this machine, e.g. "127.0.0.1:9025"), got ${JSON.stringify(a.listen)}`);
  // Disabling a plugin or deleting mail must never be open to whoever reaches the port.
  if (token === null) fail('admin', 'listen', 'needs token or token_file: state-changing calls require that bearer token (docs/admin-api.md)');
  return Object.freeze({ listen: Object.freeze(listen!), token });
}
