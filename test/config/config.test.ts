import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULTS, loadConfig } from '../../src/config/config.js';
import { serverRoot } from '../helpers/server.js';

describe('config.toml', () => {
  it('fills defaults, resolves paths against the file, and freezes the result', () => {
    const root = serverRoot();
    const config = loadConfig(root.config);
    expect(config.server).toMatchObject({ host: '127.0.0.1', port: 0, hostname: 'mx.test', maxMessageBytes: DEFAULTS.server.max_message_bytes, auth: false });
    expect(config.storage).toEqual({ spool: 'disk', spoolDir: root.spool, quarantineDir: root.quarantine, fsync: true, groupCommitMs: 0 });
    expect(config.delivery.maildirRoot).toBe(root.maildir);
    expect(Object.isFrozen(config.server)).toBe(true);
    expect(() => ((config.server as { port: number }).port = 1)).toThrow(TypeError);
  });

  it('runs without a file on the embedded default, and --test-mode pins 127.0.0.1:2525 and delivers nothing', () => {
    const config = loadConfig(null, { testMode: true });
    expect(config.file).toBeNull();
    expect(config.server).toMatchObject({ host: '127.0.0.1', port: 2525, logHookCalls: true });
    expect(config.delivery.mode).toBe('none');
    expect(config.storage.spoolDir).toMatch(/smtp-test-mode-/);
    expect(loadConfig(null, { testMode: true, port: 2600 }).server.port).toBe(2600);
  });

  it('reads the guide\'s per-plugin config file plugins/<name>.json (or .toml) when the entry has no config', () => {
    const root = serverRoot({ plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libspam_filter.so"\n\n[[plugins.plugin]]\nname = "other"\nlibrary = "libother.so"\n' });
    writeFileSync(join(root.dir, 'plugins', 'spam_filter.json'), '{"spam_threshold": 3.5, "whitelist": ["example.com"]}');
    writeFileSync(join(root.dir, 'plugins', 'other.toml'), 'limit = 100\n[nested]\nkey = "v"\n');
    const [spam, other] = loadConfig(root.config).plugins.plugins;
    expect(JSON.parse(spam!.config)).toEqual({ spam_threshold: 3.5, whitelist: ['example.com'] });
    expect(JSON.parse(other!.config)).toEqual({ limit: 100, nested: { key: 'v' } });
    writeFileSync(join(root.dir, 'plugins', 'other.toml'), 'limit = \n');
    expect(() => loadConfig(root.config)).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(/other\.toml:1: not valid TOML/) }));
  });

  it('names the file, the line, the key and what was expected; nothing starts on a bad config', () => {
    const cases: [Parameters<typeof serverRoot>[0], RegExp][] = [
      [{ server: 'max_message_bytes = 10\n' }, /config\.toml:5: server\.max_message_bytes: expected an integer from 1024 to 67108864, got 10/],
      [{ server: 'colour = "red"\n' }, /config\.toml:5: server\.colour: unknown key/],
      [{ server: 'auth_methods = ["PLAIN", "CRAM-MD5"]\n' }, /server\.auth_methods: expected methods from PLAIN, LOGIN, got "CRAM-MD5"/],
      [{ server: 'tls_key = "missing.pem"\n' }, /server\.tls_cert: required when tls_key is set/],
      [{ server: 'tls_key = "missing.pem"\ntls_cert = "missing.pem"\n' }, /config\.toml:5: server\.tls_key: no such file/],
      [{ storage: 'spool = "memory"\n' }, /config\.toml:9: storage\.spool: expected one of "disk", "none", got "memory"/],
      [{ storage: 'spool = "none"\n' }, /storage\.spool: "none" keeps no copy to deliver from/],
      [{ storage: 'fsync = "yes"\n' }, /config\.toml:9: storage\.fsync: expected true or false, got "yes"/],
      [{ delivery: 'mode = "carrier-pigeon"\n' }, /config\.toml:12: delivery\.mode: expected one of "maildir", "relay", "none"/],
      [{ delivery: 'retry_initial_ms = 500\nretry_max_ms = 100\n' }, /delivery\.retry_max_ms: expected at least retry_initial_ms \(500\)/],
    ];
    for (const [sections, expected] of cases) {
      const root = serverRoot(sections);
      expect(() => loadConfig(root.config), String(expected)).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(expected) }));
    }
    const root = serverRoot();
    writeFileSync(root.config, '[server]\nport = 25\n[mailbox]\nx = 1\n');
    expect(() => loadConfig(root.config)).toThrow(/mailbox: unknown section/);
  });

  it('fills the client limits and the relay policy with their defaults (Postfix\'s), frozen', () => {
    const config = loadConfig(serverRoot().config);
    expect(config.server).toMatchObject({ commandTimeoutMs: 300_000, dataTimeoutMs: 1_800_000, minDataRateBytesPerS: 500, maxClientsPerIp: 50, maxClientsPerIpExceptions: ['127.0.0.0/8', '::1/128'] });
    expect(config.policy).toEqual({ localDomains: ['mx.test', 'localhost'], relayNetworks: ['127.0.0.0/8', '::1/128'], maxRecipients: 100, localRecipients: null });
    expect(Object.isFrozen(config.policy) && Object.isFrozen(config.policy.localDomains) && Object.isFrozen(config.policy.relayNetworks)).toBe(true);
    // The per-IP default never exceeds max_clients; a value set above it is a mistake.
    expect(loadConfig(serverRoot({ server: 'max_clients = 10\n' }).config).server.maxClientsPerIp).toBe(10);
    expect(loadConfig(serverRoot({ server: 'command_timeout_ms = 5000\ndata_timeout_ms = 60000\nmin_data_rate_bytes_per_s = 0\nmax_clients_per_ip = 3\nmax_clients_per_ip_exceptions = []\n' }).config).server).toMatchObject({ commandTimeoutMs: 5000, dataTimeoutMs: 60_000, minDataRateBytesPerS: 0, maxClientsPerIp: 3, maxClientsPerIpExceptions: [] });
    // The exceptions follow relay_networks unless set.
    const trusted = serverRoot();
    appendFileSync(trusted.config, '\n[policy]\nrelay_networks = ["192.0.2.0/24"]\n');
    expect(loadConfig(trusted.config).server.maxClientsPerIpExceptions).toEqual(['192.0.2.0/24']);
  });

  it('allows auth_insecure only on a loopback listener and refuses a host that cannot be an address', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', '::ffff:127.0.0.1']) {
      const root = serverRoot({ server: 'auth_insecure = true\n' });
      writeFileSync(root.config, readFileSync(root.config, 'utf8').replace('host = "127.0.0.1"', `host = "${host}"`));
      expect(loadConfig(root.config).server.authInsecure, host).toBe(true);
    }
    const cases: [string, RegExp][] = [
      ['0.0.0.0', /config\.toml:5: server\.auth_insecure: true is only allowed on a loopback listener \(host 127\.0\.0\.0\/8, ::1 or localhost\); host is "0\.0\.0\.0"/],
      ['::', /server\.auth_insecure: true is only allowed on a loopback listener .*host is "::"/],
      ['192.0.2.10', /server\.auth_insecure: .*host is "192\.0\.2\.10"/],
      ['mail.example.org', /server\.auth_insecure: .*host is "mail\.example\.org"/],
      ['127.0.0.300', /config\.toml:2: server\.host: "127\.0\.0\.300" is not a valid IPv4 address/],
      ['[::1]', /config\.toml:2: server\.host: expected an IPv6 address without brackets, got "\[::1\]"/],
      ['my host', /config\.toml:2: server\.host: expected an IP address or a host name, got "my host"/],
    ];
    for (const [host, expected] of cases) {
      const root = serverRoot({ server: 'auth_insecure = true\n' });
      writeFileSync(root.config, readFileSync(root.config, 'utf8').replace('host = "127.0.0.1"', `host = "${host}"`));
      expect(() => loadConfig(root.config), host).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(expected) }));
    }
    // --test-mode listens on 127.0.0.1 whatever host says, so auth_insecure is fine there.
    const root = serverRoot({ server: 'auth_insecure = true\n' });
    writeFileSync(root.config, readFileSync(root.config, 'utf8').replace('host = "127.0.0.1"', 'host = "0.0.0.0"'));
    expect(loadConfig(root.config, { testMode: true }).server).toMatchObject({ host: '127.0.0.1', authInsecure: true });
  });

  it('refuses auth_required without auth: no client could ever log in, so no mail could ever be sent', () => {
    const root = serverRoot({ server: 'auth_required = true\n' });
    expect(() => loadConfig(root.config)).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(/server\.auth_required: true needs auth = true/) }));
    const on = serverRoot({ server: 'auth = true\nauth_required = true\n' });
    expect(loadConfig(on.config).server).toMatchObject({ auth: true, authRequired: true });
  });

  it('reads [policy]: domains lower-cased, networks normalised, local users from the list and the map file', () => {
    const root = serverRoot();
    writeFileSync(join(root.dir, 'recipients'), '# Postfix-style map: the first word counts\nCarol@Example.org   OK\n\n@lists.example.org\ndave # the rest is a comment\n');
    appendFileSync(root.config, '\n[policy]\nlocal_domains = ["Example.org", "lists.example.org.", "[192.0.2.1]"]\nrelay_networks = ["10.0.0.0/8", "2001:DB8::/32", "192.0.2.7"]\nmax_recipients = 5\nlocal_recipients = ["Alice", "bob@example.org"]\nlocal_recipients_file = "recipients"\n');
    expect(loadConfig(root.config).policy).toEqual({
      localDomains: ['example.org', 'lists.example.org', '[192.0.2.1]'],
      relayNetworks: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7/32'],
      maxRecipients: 5,
      localRecipients: ['alice', 'bob@example.org', 'carol@example.org', '@lists.example.org', 'dave'],
    });
    const empty = serverRoot();
    appendFileSync(empty.config, '\n[policy]\nlocal_domains = []\nrelay_networks = []\n');
    expect(loadConfig(empty.config).policy).toMatchObject({ localDomains: [], relayNetworks: [], localRecipients: null });
  });

  it('names the file, the line and the key of every [policy] mistake, the map file\'s own line included', () => {
    const cases: [string, RegExp][] = [
      ['relay_networks = ["10.0.0.1/8"]', /config\.toml:L: policy\.relay_networks: "10\.0\.0\.1\/8" has host bits set \(did you mean "10\.0\.0\.0\/8"\?\)/],
      ['relay_networks = ["2001:db8::1/32"]', /policy\.relay_networks: "2001:db8::1\/32" has host bits set \(did you mean "2001:db8::\/32"\?\)/],
      ['relay_networks = ["localhost"]', /config\.toml:L: policy\.relay_networks: "localhost" is not an IPv4 or IPv6 network/],
      ['relay_networks = ["10.0.0.0/33"]', /policy\.relay_networks: "10\.0\.0\.0\/33": the prefix length must be an integer from 0 to 32/],
      ['relay_networks = "127.0.0.0/8"', /config\.toml:L: policy\.relay_networks: expected an array of strings, got "127\.0\.0\.0\/8"/],
      ['local_domains = ["exa mple.org"]', /config\.toml:L: policy\.local_domains: "exa mple\.org" is not a domain name/],
      ['max_recipients = 0', /config\.toml:L: policy\.max_recipients: expected an integer from 1 to 100000, got 0/],
      ['local_recipients = ["bob@other.org"]', /config\.toml:L: policy\.local_recipients: entry 1: "bob@other\.org": other\.org is not in policy\.local_domains \(mx\.test, localhost\)/],
      ['local_recipients = ["bo b"]', /policy\.local_recipients: entry 1: "bo b" is not a user, user@domain or @domain/],
      ['local_recipients_file = "missing"', /config\.toml:L: policy\.local_recipients_file: cannot read .*missing/],
      ['local_recipients_file = "map"', /config\.toml:L: policy\.local_recipients_file: .*\/map:3: "eve@elsewhere\.org": elsewhere\.org is not in policy\.local_domains/],
      ['relay = true', /config\.toml:L: policy\.relay: unknown key \(known: local_domains, relay_networks, max_recipients, local_recipients, local_recipients_file\)/],
    ];
    for (const [line, expected] of cases) {
      const root = serverRoot();
      writeFileSync(join(root.dir, 'map'), 'alice\nbob@mx.test\neve@elsewhere.org\n');
      const at = readFileSync(root.config, 'utf8').split('\n').length + 2;
      appendFileSync(root.config, `\n[policy]\n${line}\n`);
      const withLine = new RegExp(expected.source.replace('config\\.toml:L', `config\\.toml:${at}`));
      expect(() => loadConfig(root.config), line).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(withLine) }));
    }
  });

  it('names the client-limit keys with their units and ranges', () => {
    const cases: [string, RegExp][] = [
      ['command_timeout_ms = 10\n', /config\.toml:5: server\.command_timeout_ms: expected an integer from 1000 to 3600000, got 10/],
      ['data_timeout_ms = "1h"\n', /config\.toml:5: server\.data_timeout_ms: expected an integer from 1000 to 86400000, got "1h"/],
      ['min_data_rate_bytes_per_s = -1\n', /config\.toml:5: server\.min_data_rate_bytes_per_s: expected an integer from 0 to 1000000000, got -1/],
      ['max_clients_per_ip = 0\n', /config\.toml:5: server\.max_clients_per_ip: expected an integer from 1 to 100000, got 0/],
      ['max_clients = 10\nmax_clients_per_ip = 20\n', /config\.toml:6: server\.max_clients_per_ip: expected at most server\.max_clients \(10\), got 20/],
      ['max_clients_per_ip_exceptions = ["127.0.0.1/8"]\n', /config\.toml:5: server\.max_clients_per_ip_exceptions: "127\.0\.0\.1\/8" has host bits set \(did you mean "127\.0\.0\.0\/8"\?\)/],
    ];
    for (const [server, expected] of cases) {
      expect(() => loadConfig(serverRoot({ server }).config), server).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(expected) }));
    }
  });

  it('[admin]: off by default; a listener needs a token of 16 characters or more, inline or from a file', () => {
    expect(loadConfig(serverRoot().config).admin).toEqual({ listen: null, token: null });
    const token = 'admin-token-0123456789';
    expect(loadConfig(serverRoot({ admin: `listen = "127.0.0.1:9025"\ntoken = "${token}"\n` }).config).admin).toEqual({ listen: { host: '127.0.0.1', port: 9025 }, token });
    expect(loadConfig(serverRoot({ admin: `listen = "[::1]:9025"\ntoken = "${token}"\n` }).config).admin.listen).toEqual({ host: '::1', port: 9025 });
    const fromFile = serverRoot({ admin: 'listen = "127.0.0.1:9025"\ntoken_file = "admin.token"\n' });
    writeFileSync(join(fromFile.dir, 'admin.token'), `${token}\n`);
    expect(loadConfig(fromFile.config).admin.token).toBe(token);
    const refused: [string, RegExp][] = [
      ['listen = "127.0.0.1:9025"\n', /admin\.listen: needs token or token_file/],
      [`listen = "127.0.0.1:9025"\ntoken = "short"\n`, /admin\.token: expected a token of at least 16 characters/],
      [`listen = "9025"\ntoken = "${token}"\n`, /admin\.listen: expected "host:port"/],
      [`listen = "127.0.0.1:99999"\ntoken = "${token}"\n`, /admin\.listen: expected "host:port"/],
      [`token = "${token}"\ntoken_file = "x"\n`, /admin\.token: set token or token_file, not both/],
      ['listen = "127.0.0.1:9025"\ntoken_file = "missing.token"\n', /admin\.token_file: cannot read/],
      ['port = 9025\n', /admin\.port: unknown key/],
    ];
    for (const [section, message] of refused) {
      expect(() => loadConfig(serverRoot({ admin: section }).config), section).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(message) }));
    }
  });

  it('[tracing]: off by default; an OTLP endpoint turns it on with its service name and sampling', () => {
    expect(loadConfig(serverRoot().config).tracing).toBeNull();
    const root = serverRoot();
    appendFileSync(root.config, '\n[tracing]\notlp_endpoint = "http://127.0.0.1:4318/v1/traces"\nsample_percent = 25\n');
    expect(loadConfig(root.config).tracing).toEqual({ otlpEndpoint: 'http://127.0.0.1:4318/v1/traces', serviceName: 'smtp-plugin-host', samplePercent: 25 });
    const over = serverRoot();
    appendFileSync(over.config, '\n[tracing]\notlp_endpoint = "http://127.0.0.1:4318/v1/traces"\nsample_percent = 101\n');
    expect(() => loadConfig(over.config)).toThrow(/tracing\.sample_percent: expected an integer from 0 to 100, got 101/);
  });
});
