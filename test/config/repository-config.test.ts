import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { loadPluginsConfig } from '../../src/config/plugins-config.js';
import { decideRecipient } from '../../src/server/relay-policy.js';
import { PROJECT_ROOT } from '../../src/paths.js';

describe("the repository's config.toml", () => {
  it('is valid and names the example builds that npm install makes', () => {
    const config = loadPluginsConfig(join(PROJECT_ROOT, 'config.toml'));
    expect(config.plugins.map((p) => [p.name, p.sandboxed])).toEqual([['spam-filter', false], ['rate-limiter', false]]);
    expect(config.plugins[0]!.builds).toEqual([join(PROJECT_ROOT, 'plugins', 'libspam_filter.so'), join(PROJECT_ROOT, 'wasm-plugins', 'spam_filter.wasm')]);
    // The rate limiter counts with the host's counters, which its grant allows.
    expect(config.plugins[1]!.builds).toEqual([join(PROJECT_ROOT, 'plugins', 'librate_limiter.so'), join(PROJECT_ROOT, 'wasm-plugins', 'rate_limiter.wasm')]);
    expect(config.plugins[1]!.options.allowCounters).toBe(true);
    expect(JSON.parse(config.plugins[1]!.config)).toMatchObject({ backend: 'host' });
    // The spam filter's config is the per-plugin file, not an inline config.
    expect(JSON.parse(config.plugins[0]!.config)).toEqual(JSON.parse(readFileSync(join(PROJECT_ROOT, 'plugins', 'spam_filter.json'), 'utf8')));
  });

  it("relays the README's swaks example from 127.0.0.1 and nothing from elsewhere", () => {
    const { policy, server } = loadConfig(join(PROJECT_ROOT, 'config.toml'));
    expect(server.hostname).toBe('localhost');
    const rcpt = (clientIp: string, recipient: string) => decideRecipient(policy, { clientIp, authenticated: false, recipient, recipientCount: 0 });
    expect(rcpt('127.0.0.1', 'you@example.org')).toEqual({ accept: true, local: false });
    expect(rcpt('::ffff:127.0.0.1', 'you@example.org').accept).toBe(true);
    expect(rcpt('192.0.2.5', 'you@example.org')).toMatchObject({ accept: false, refusal: 'relay-denied' });
    expect(rcpt('192.0.2.5', 'you@localhost')).toEqual({ accept: true, local: true });
  });
});
