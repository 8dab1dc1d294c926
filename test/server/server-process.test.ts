import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { fixture } from '../helpers/fixtures.js';
import { freePort, maildirTexts, python, runClient, serverRoot, startServerProcess, waitFor } from '../helpers/server.js';

/** Sends numbered messages over one connection until it breaks or `count` are sent; prints each number after its 250. */
const SENDER = (port: number, count: number, tag: string) => `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
for i in range(${count}):
    try:
        s.sendmail('load@example.com', ['box@example.org'], f'Subject: ${tag}-{i}\\r\\n\\r\\nMARK-${tag}-{i}-END\\r\\n')
    except Exception as e:
        print('stopped', type(e).__name__, file=sys.stderr)
        break
    print(i, flush=True)
`;

describe('the smtp-server command', () => {
  it('loses no acknowledged message when killed with SIGKILL under load', async () => {
    const root = serverRoot({ storage: 'fsync = true\n' });
    const port = await freePort();
    const first = await startServerProcess(['--config', root.config], port);
    const load = python(SENDER(port, 100_000, 'kill'), 60_000);
    // Let acknowledged messages pile up in the spool and the Maildir, then kill mid-stream.
    await new Promise((r) => setTimeout(r, 1500));
    first.child.kill('SIGKILL');
    await first.stop();
    const { stdout } = await load;
    const acknowledged = stdout.trim().split('\n').filter((l) => /^\d+$/.test(l)).map(Number);
    expect(acknowledged.length).toBeGreaterThan(20);

    const second = await startServerProcess(['--config', root.config], port);
    try {
      const missing = (): number[] => {
        const texts = maildirTexts(root.maildir).join('\n');
        return acknowledged.filter((i) => !texts.includes(`MARK-kill-${i}-END`));
      };
      await waitFor(() => missing().length === 0, 'every acknowledged message in the Maildir', 20_000);
      expect(missing()).toEqual([]);
      console.info(`SIGKILL test: ${acknowledged.length} messages acknowledged before the kill, all ${acknowledged.length} found after the restart`);
    } finally {
      await second.stop();
    }
  });

  it('--test-mode logs every hook call, keeps mail in a temporary folder and delivers nothing', async () => {
    const root = serverRoot({
      plugins: (dir) => `[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nconfig = '{"trace":"${join(dir, 'trace.log')}"}'\n`,
    });
    copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
    const port = await freePort();
    const server = await startServerProcess(['--config', root.config, '--test-mode'], port);
    const sent = await python(SENDER(port, 1, 'tm'));
    expect(sent.stdout.trim()).toBe('0');
    const code = await server.stop('SIGTERM');
    expect(code).toBe(0);
    const records = server.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const calls = records.filter((r) => r.msg === 'hook call');
    for (const hook of ['connection_opened', 'command_received', 'command_validated', 'message_received', 'message_validated', 'message_filtered', 'message_stored', 'connection_closed', 'server_stopping', 'server_stopped']) {
      expect(calls.find((r) => r.hook === hook), hook).toMatchObject({ plugin: 'policy', result: 'continue', duration_us: expect.any(Number) });
    }
    expect(maildirTexts(root.maildir)).toEqual([]);
    const listening = records.find((r) => r.msg === 'listening');
    expect(listening).toMatchObject({ host: '127.0.0.1', port, test_mode: true });
  });

  it('reloads on SIGHUP and on a config edit: config_changed fires, only the changed plugin is re-initialised', async () => {
    const root = serverRoot({
      plugins: (dir) => `[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nconfig = '{"trace":"${join(dir, 'first.log')}"}'\n\n[[plugins.plugin]]\nname = "c-spam-filter"\nlibrary = "libc_spam.so"\n`,
    });
    copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
    copyFileSync(fixture('c_spam_filter'), join(root.dir, 'plugins', 'libc_spam.so'));
    const port = await freePort();
    const server = await startServerProcess(['--config', root.config], port);
    try {
      writeFileSync(root.config, readFileSync(root.config, 'utf8').replace('first.log', 'second.log'));
      await waitFor(() => existsSync(join(root.dir, 'second.log')) && readFileSync(join(root.dir, 'second.log'), 'utf8').includes('config_changed'), 'config_changed after the edit', 20_000);
      const reloads = () => server.logs().split('\n').filter((l) => l.includes('"config reloaded"'));
      expect(JSON.parse(reloads()[0]!).changed_plugins).toEqual(['policy']);
      server.child.kill('SIGHUP');
      await waitFor(() => reloads().length === 2, 'a second reload on SIGHUP', 20_000);
      expect(JSON.parse(reloads()[1]!).changed_plugins).toEqual([]);
      // A bad edit is refused and the server keeps running as it was.
      writeFileSync(root.config, readFileSync(root.config, 'utf8').replace('enabled = true', 'enabled = "maybe"'));
      await waitFor(() => server.logs().includes('config reload refused'), 'the refusal of a bad config', 20_000);
      const sent = await python(SENDER(port, 1, 'after'));
      expect(sent.stdout.trim()).toBe('0');
    } finally {
      await server.stop();
    }
  });

  it('refuses to start on a bad config, naming the file, line and key', async () => {
    const root = serverRoot({ server: 'max_clients = "lots"\n' });
    const run = await runClient(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), '--config', root.config]);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain(`error SMTP_E_CONFIG: ${root.config}:5: server.max_clients: expected an integer from 1 to 100000, got "lots"`);
  });

  it("runs as npm start does, on the repository's config.toml and example plugins: mail in the Maildir, spam refused", async () => {
    // The repository's own config, its var/ folders moved into a temporary root.
    const root = serverRoot();
    const config = readFileSync(join(PROJECT_ROOT, 'config.toml'), 'utf8')
      .replace('directory = "./plugins"', `directory = "${join(PROJECT_ROOT, 'plugins')}"`)
      .replace('wasm_directory = "./wasm-plugins"', `wasm_directory = "${join(PROJECT_ROOT, 'wasm-plugins')}"`);
    writeFileSync(root.config, config);
    const port = await freePort();
    const server = await startServerProcess(['--config', root.config], port);
    try {
      const run = await python(`
import smtplib
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
s.sendmail('person@example.com', ['me@example.org'], 'Subject: hi\\r\\n\\r\\nhello from a person\\r\\n')
try:
    s.sendmail('spam@example.com', ['me@example.org'], 'Subject: win\\r\\n\\r\\nCongratulations winner! casino, click here for free money, act now\\r\\n')
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
`);
      expect(run.stdout.trim()).toBe('554 5.7.1 Message refused as spam');
      await waitFor(() => maildirTexts(join(root.dir, 'var', 'maildir')).some((t) => t.includes('hello from a person')), 'delivery', 20_000);
      expect(server.logs()).toMatch(/"hook":"message_filtered".*"plugin":"spam-filter"/);
    } finally {
      await server.stop();
    }
    const pkg = JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBe('node bin/smtp-server.js');
  });

  it('refuses to start when a configured plugin is missing, misnamed or fails its init, with the plugin\'s own code', async () => {
    const cases = [
      { entry: 'name = "spam-filter"\nlibrary = "libmissing.so"\n', code: 'SMTP_E_PLUGIN_NOT_FOUND' },
      { entry: 'name = "spam"\nlibrary = "libspam_filter.so"\n', code: 'SMTP_E_CONFIG' },
      { entry: 'name = "c-variant"\nlibrary = "libinit_fails.so"\n', code: 'SMTP_E_PLUGIN_INIT' },
    ];
    for (const { entry, code } of cases) {
      const root = serverRoot({ plugins: `[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\n${entry}` });
      copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
      copyFileSync(fixture('c_init_fails'), join(root.dir, 'plugins', 'libinit_fails.so'));
      const run = await runClient(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), '--config', root.config, '--port', '0'], 30_000);
      expect(run.status, run.stderr).toBe(1);
      expect(run.stderr).toContain(`error ${code}: `);
      expect(run.stderr).toContain('unless its entry says optional = true');
      expect(run.stdout).not.toContain('"listening"');
    }
  });
});
