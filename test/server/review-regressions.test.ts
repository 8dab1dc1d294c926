import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { silentLogger } from '../../src/log.js';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import { MailServer } from '../../src/server/mail-server.js';
import { checkHeaders } from '../../src/server/message-headers.js';
import { fixture } from '../helpers/fixtures.js';
import { python, serverRoot } from '../helpers/server.js';
import { readdirSync } from 'node:fs';

/** Failure paths found in review: each once broke mail flow or security. */
describe('failure paths', () => {
  it('never leaves a message it failed to quarantine in the spool (it would be delivered at the next start)', async () => {
    const root = serverRoot({ plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\n' });
    writeFileSync(root.config, readFileSync(root.config, 'utf8').replace('quarantine_dir = "var/quarantine"', 'quarantine_dir = "not-a-dir/quarantine"'));
    writeFileSync(join(root.dir, 'not-a-dir'), 'a file where the quarantine folder should be');
    copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
    const config = loadConfig(root.config);
    const server = new MailServer(config, silentLogger());
    const port = await server.start();
    try {
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
      await expect(transport.sendMail({ from: 'a@example.com', to: 'q@example.org', text: 'QUARANTINE-ME' })).rejects.toMatchObject({ responseCode: 451 });
      expect(readdirSync(root.spool).filter((f) => f.endsWith('.json'))).toEqual([]);
    } finally {
      await server.stop();
    }
  });

  it('refuses AUTH when the authentication plugin failed, even with on_error = "continue"', async () => {
    const root = serverRoot({
      server: 'auth = true\nauth_insecure = true\n',
      plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "bad-code"\nlibrary = "libbad.so"\nauthenticator = true\non_error = "continue"\nmax_consecutive_failures = 1000\n',
    });
    copyFileSync(fixture('c_bad_code'), join(root.dir, 'plugins', 'libbad.so'));
    const server = new MailServer(loadConfig(root.config), silentLogger());
    const port = await server.start();
    try {
      const run = await python(`
import smtplib
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
s.ehlo()
s.user, s.password = 'anyone', 'anything'
for method, answer in (('PLAIN', s.auth_plain), ('LOGIN', s.auth_login)):
    try:
        s.auth(method, answer)
        print('logged in')
    except smtplib.SMTPAuthenticationError as e:
        print(e.smtp_code)
`);
      expect(run.stdout.trim().split('\n')).toEqual(['454', '454']);
    } finally {
      await server.stop();
    }
  });

  it('does not count a host-side metadata bound as the plugin failing, and auto-disable takes dependents down', async () => {
    const manager = new PluginManager({ directory: '/tmp' });
    await manager.loadPlugin(fixture('c_bad_code'), '{}', resolvePluginOptions({ maxConsecutiveFailures: 1 }));
    await manager.loadPlugin(fixture('c_needs_bad'));
    const outcome = await manager.executeHook('message_received', new HookContext('message_received'));
    expect(outcome.error?.code).toBe('SMTP_E_PLUGIN_HOOK_CODE');
    expect(manager.list().map((p) => `${p.name}:${p.state}`)).toEqual(['bad-code:disabled', 'needs-bad:disabled']);
    await manager.deinit();
  });

  it('refuses a config entry whose name is not the plugin\'s', async () => {
    const root = serverRoot({ plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam"\nlibrary = "libspam_filter.so"\n' });
    copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
    const config = loadConfig(root.config);
    const manager = new PluginManager({ directory: config.plugins.directory });
    const { loaded, failed } = await manager.loadFromConfig(config.plugins);
    expect(loaded).toEqual([]);
    expect(failed.map(({ error }) => error.message)).toEqual([`${join(root.dir, 'plugins', 'libspam_filter.so')}: the config entry is named "spam" but the plugin is "spam-filter"`]);
    expect(manager.list()).toEqual([]);
  });

  it('treats a large message without headers as all body, and a TOML key with regex characters as unknown', async () => {
    expect(checkHeaders(Buffer.from('x'.repeat(300 * 1024))).problem).toBeNull();
    const root = serverRoot({ server: '"a(" = 1\n' });
    expect(() => loadConfig(root.config)).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringContaining('server.a(: unknown key') }));
  });
});
