import { writeFileSync } from 'node:fs';
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
});
