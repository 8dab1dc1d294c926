import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { quarantineFolder } from '../../src/storage/spool.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';
import { serverRoot } from '../helpers/server.js';

/** Six of the default keywords: spam at the default threshold of 5. */
const SPAM = 'Congratulations WINNER! casino: click here for free money, act now';
const RECIPIENT = 'carol@example.org';

function files(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((name) => !name.startsWith('.')) : [];
}

/** The .eml files in `dir` (not below it) with this subject (bodies may be folded by quoted-printable; short subjects are not). */
function emlsWithSubject(dir: string, subject: string): string[] {
  return files(dir).filter((name) => name.endsWith('.eml') && readFileSync(join(dir, name), 'latin1').includes(`\r\nSubject: ${subject}\r\n`));
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

type Kind = 'native' | 'sandboxed';

interface Running {
  readonly root: ReturnType<typeof serverRoot>;
  readonly logs: string[];
  readonly server: MailServer;
  /** Sends SPAM (or `text`) with `subject`; resolves to the reply. */
  send(from: string, subject: string, text?: string): Promise<string>;
}

/**
 * A mail server whose only plugin is the spam filter, native or sandboxed.
 * `config` goes into the per-plugin file plugins/spam_filter.json, which an
 * entry without `config` reads (as the repository's config.toml should).
 */
async function startServer(kind: Kind, config: Record<string, unknown>, prepare?: (root: ReturnType<typeof serverRoot>) => void, entry = ''): Promise<Running> {
  const build = kind === 'native' ? 'library = "libspam_filter.so"\nsandbox = false' : 'wasm = "spam_filter.wasm"';
  const root = serverRoot({
    storage: 'fsync = false\n',
    plugins: `[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./wasm-plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\n${build}\n${entry}`,
  });
  // A copy per server: two servers in one process must not share one loaded library.
  if (kind === 'native') copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
  else {
    mkdirSync(join(root.dir, 'wasm-plugins'));
    copyFileSync(wasmFixture('spam_filter'), join(root.dir, 'wasm-plugins', 'spam_filter.wasm'));
  }
  writeFileSync(join(root.dir, 'plugins', 'spam_filter.json'), JSON.stringify(config, null, 2));
  prepare?.(root);
  const logs: string[] = [];
  const server = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void logs.push(line) }));
  const port = await server.start();
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  return {
    root,
    logs,
    server,
    async send(from, subject, text = SPAM) {
      const info = await transport.sendMail({ from, to: RECIPIENT, subject, text });
      return info.response;
    },
  };
}

/** Runs `body` against a fresh server and always stops it. */
async function withServer(kind: Kind, config: Record<string, unknown>, body: (running: Running) => Promise<void>, prepare?: (root: ReturnType<typeof serverRoot>) => void, entry = ''): Promise<void> {
  const running = await startServer(kind, config, prepare, entry);
  try {
    await body(running);
  } finally {
    await running.server.stop();
  }
}

function warnings(logs: readonly string[]): { code?: string; quarantine_path?: string; why?: string; level: number }[] {
  return logs.map((line) => JSON.parse(line) as { code?: string; level: number }).filter((entry) => entry.code === 'SMTP_E_QUARANTINE_PATH');
}

for (const kind of ['native', 'sandboxed'] as const) {
  describe(`spam-filter config through the mail server (${kind})`, () => {
    it('reads plugins/spam_filter.json: a whitelisted domain and its subdomains are delivered, other spam gets 554', async () => {
      await withServer(kind, { spam_threshold: 5.0, quarantine: false, whitelist: ['trusted.example'], auto_learn: false, bayesian_filtering: false }, async ({ root, send, logs }) => {
        expect(await send('boss@trusted.example', 'from the boss')).toMatch(/^250 /);
        expect(await send('news@mail.TRUSTED.example', 'from a subdomain')).toMatch(/^250 /);
        await expect(send('spammer@untrusted.example', 'from a lookalike')).rejects.toMatchObject({ responseCode: 554, response: '554 5.7.1 Message refused as spam' });
        await expect(send('spammer@eviltrusted.example', 'from another lookalike')).rejects.toMatchObject({ responseCode: 554 });
        const box = join(root.maildir, RECIPIENT, 'new');
        await waitFor(() => files(box).length === 2, 'two deliveries');
        const subjects = files(box).map((name) => /\r\nSubject: ([^\r]*)\r\n/.exec(readFileSync(join(box, name), 'latin1'))?.[1]);
        expect(subjects.sort()).toEqual(['from a subdomain', 'from the boss']);
        expect(files(root.quarantine)).toEqual([]);
        expect(logs.some((line) => line.includes('"plugin":"spam-filter"') && line.includes('"code":554'))).toBe(true);
      });
    });

    it('quarantines spam into quarantine_path inside quarantine_dir, answering 250 and delivering nothing', async () => {
      await withServer(kind, { quarantine: true, quarantine_path: 'spam-filter' }, async ({ root, send, logs }) => {
        expect(await send('spammer@example.net', 'kept aside')).toMatch(/^250 2\.0\.0 Ok: queued as /);
        const folder = join(root.quarantine, 'spam-filter');
        await waitFor(() => emlsWithSubject(folder, 'kept aside').length === 1, 'the quarantined message');
        const [eml] = emlsWithSubject(folder, 'kept aside');
        const record = JSON.parse(readFileSync(join(folder, eml!.replace(/\.eml$/, '.json')), 'utf8')) as { envelope: { from: string; to: string[] }; reason: Record<string, string> };
        expect(record.envelope).toEqual({ from: 'spammer@example.net', to: [RECIPIENT] });
        expect(record.reason.quarantine_path).toBe('spam-filter');
        expect(emlsWithSubject(root.quarantine, 'kept aside')).toEqual([]);
        expect(files(join(root.maildir, RECIPIENT, 'new'))).toEqual([]);
        // The spool keeps its segment file(s): no message file, and no large/ (docs/spool.md).
        expect(files(root.spool).filter((name) => !/^\d{16}\.seg$/.test(name))).toEqual([]);
        expect(warnings(logs)).toEqual([]);
        // A clean message is delivered as usual.
        expect(await send('friend@example.net', 'lunch', 'lunch at noon?')).toMatch(/^250 /);
        await waitFor(() => files(join(root.maildir, RECIPIENT, 'new')).length === 1, 'the clean delivery');
      });
    });

    it('quarantines into quarantine_dir itself when no quarantine_path is set', async () => {
      await withServer(kind, { quarantine: true }, async ({ root, send }) => {
        expect(await send('spammer@example.net', 'no folder')).toMatch(/^250 /);
        await waitFor(() => emlsWithSubject(root.quarantine, 'no folder').length === 1, 'the quarantined message');
        expect(files(join(root.maildir, RECIPIENT, 'new'))).toEqual([]);
      });
    });

    it('refuses a quarantine_path outside quarantine_dir ("/etc", "../x", another folder, a symlink out): the message stays in quarantine_dir, with a coded warning', async () => {
      const outside = mkdtempSync(join(tmpdir(), 'outside-quarantine-'));
      const etcBefore = files('/etc').filter((name) => name.endsWith('.eml') || name.endsWith('.json.tmp'));
      for (const path of ['/etc', '../x', outside, 'link/inner']) {
        await withServer(
          kind,
          { quarantine: true, quarantine_path: path },
          async ({ root, send, logs }) => {
            expect(await send('spammer@example.net', 'outside')).toMatch(/^250 /);
            await waitFor(() => emlsWithSubject(root.quarantine, 'outside').length === 1, `the message in quarantine_dir for ${path}`);
            const [warning, ...more] = warnings(logs);
            expect(more, path).toEqual([]);
            expect(warning, path).toMatchObject({ level: 40, code: 'SMTP_E_QUARANTINE_PATH', quarantine_path: path });
            expect(warning!.why, path).toMatch(/outside/);
            expect(existsSync(join(root.dir, 'var', 'x')), path).toBe(false);
            expect(files(join(root.maildir, RECIPIENT, 'new')), path).toEqual([]);
          },
          (root) => symlinkSync(outside, join(root.quarantine, 'link')),
        );
      }
      expect(files(outside)).toEqual([]);
      expect(files('/etc').filter((name) => name.endsWith('.eml') || name.endsWith('.json.tmp'))).toEqual(etcBefore);
    });

    it('keeps the message in quarantine_dir when the quarantine_path folder cannot be made', async () => {
      await withServer(
        kind,
        { quarantine: true, quarantine_path: 'taken' },
        async ({ root, send, logs }) => {
          expect(await send('spammer@example.net', 'folder taken')).toMatch(/^250 /);
          await waitFor(() => emlsWithSubject(root.quarantine, 'folder taken').length === 1, 'the message in quarantine_dir');
          expect(warnings(logs)).toEqual([expect.objectContaining({ quarantine_path: 'taken', why: expect.stringMatching(/^cannot write there/) })]);
        },
        (root) => writeFileSync(join(root.quarantine, 'taken'), 'a file where the folder would go'),
      );
    });

    it('does not load with auto_learn turned on: a feature it lacks never looks enabled, and the server does not start without it', async () => {
      await expect(startServer(kind, { auto_learn: true })).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_INIT' }));
      // Marked optional, the server runs without the filter.
      await withServer(kind, { auto_learn: true }, async ({ server, logs, send }) => {
        expect(server.manager.get('spam-filter')).toBeUndefined();
        expect(logs.some((line) => line.includes('SMTP_E_PLUGIN_INIT'))).toBe(true);
        expect(await send('spammer@example.net', 'unfiltered')).toMatch(/^250 /);
      }, undefined, 'optional = true\n');
    });
  });
}

describe('quarantineFolder', () => {
  const base = mkdtempSync(join(tmpdir(), 'quarantine-dir-'));

  it('takes a relative path relative to quarantine_dir, and an absolute one inside it', async () => {
    expect(await quarantineFolder(base, undefined)).toEqual({ dir: resolve(base), refused: null });
    expect(await quarantineFolder(base, 'spam')).toEqual({ dir: join(base, 'spam'), refused: null });
    expect(await quarantineFolder(base, 'a/../b/./c')).toEqual({ dir: join(base, 'b', 'c'), refused: null });
    expect(await quarantineFolder(base, join(base, 'abs'))).toEqual({ dir: join(base, 'abs'), refused: null });
    expect(await quarantineFolder(base, '..spam')).toEqual({ dir: join(base, '..spam'), refused: null });
  });

  it('refuses anything that leads outside, giving quarantine_dir itself', async () => {
    for (const path of ['/etc', '..', '../x', 'a/../../x', `${base}-sibling`, 'a\0b']) {
      const folder = await quarantineFolder(base, path);
      expect(folder.dir, path).toBe(resolve(base));
      expect(folder.refused, path).not.toBeNull();
    }
    const outside = mkdtempSync(join(tmpdir(), 'outside-'));
    symlinkSync(outside, join(base, 'out'));
    expect((await quarantineFolder(base, 'out/deeper/still')).refused).toMatch(/outside/);
    // A symlink that stays inside is fine.
    mkdirSync(join(base, 'real'));
    symlinkSync(join(base, 'real'), join(base, 'alias'));
    expect(await quarantineFolder(base, 'alias/x')).toEqual({ dir: join(base, 'alias', 'x'), refused: null });
  });
});
