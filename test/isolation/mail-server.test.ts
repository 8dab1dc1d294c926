import { copyFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture } from '../helpers/fixtures.js';
import { serverRoot, waitFor } from '../helpers/server.js';

/**
 * The probe runs with isolation = "process" in a real MailServer, hooked
 * into every event; a sender of segv@, exit@ or hang@ makes its hook crash,
 * exit or never return (at MAIL FROM, command_validated: the first hook
 * that sees the sender).
 */

function files(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => !f.startsWith('.')) : [];
}

describe('a process-isolated plugin that crashes, exits or hangs, in a real server with real clients', () => {
  let root: ReturnType<typeof serverRoot>;
  let server: MailServer;
  let port: number;
  const logLines: string[] = [];
  /** Subjects the server acknowledged with 250: each must reach its mailbox. */
  const acknowledged: string[] = [];

  beforeAll(async () => {
    root = serverRoot({
      server: 'max_clients = 50\n',
      plugins:
        '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n' +
        '[[plugins.plugin]]\nname = "isolation-probe"\nlibrary = "libprobe.so"\nisolation = "process"\n\n' +
        '[plugins.plugin.limits]\nhook_timeout_ms = 500\n',
    });
    copyFileSync(fixture('c_isolation_probe'), join(root.dir, 'plugins', 'libprobe.so'));
    const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
    server = new MailServer(loadConfig(root.config), logger);
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  const send = async (from: string, subject: string): Promise<{ ok: boolean; code?: number; response: string; ms: number }> => {
    const started = performance.now();
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
    try {
      const info = await transport.sendMail({ from, to: 'carol@example.org', subject, text: `body of ${subject}` });
      acknowledged.push(subject);
      return { ok: true, response: info.response, ms: performance.now() - started };
    } catch (error) {
      const failure = error as { responseCode?: number; response?: string };
      return { ok: false, code: failure.responseCode, response: failure.response ?? String(error), ms: performance.now() - started };
    } finally {
      transport.close();
    }
  };

  for (const [sender, logged] of [['segv@example.com', 'killed by SIGSEGV'], ['exit@example.com', 'exited with status 3'], ['hang@example.com', 'ran past its 500 ms deadline']] as const) {
    it(`${sender}: that session gets 451, a concurrent client gets 250 within 2 s, and the plugin works again after its restart`, async () => {
      const tag = sender.split('@')[0];
      const [failing, concurrent] = await Promise.all([send(sender, `${tag}-failing`), send('bob@example.com', `${tag}-concurrent`)]);
      expect(failing.ok, failing.response).toBe(false);
      expect(failing.code).toBe(451);
      expect(failing.response).toContain('4.3.0');
      expect(concurrent.ok, concurrent.response).toBe(true);
      expect(concurrent.response).toMatch(/^250 /);
      expect(concurrent.ms).toBeLessThan(2000);
      const after = await send('dave@example.com', `${tag}-after`);
      expect(after.ok, after.response).toBe(true);
      expect(logLines.some((line) => line.includes(logged))).toBe(true);
      expect(logLines.some((line) => line.includes('"msg":"plugin process restarted"'))).toBe(true);
    });
  }

  it('lost no acknowledged message: each is in the Maildir, and no refused one is', async () => {
    const box = join(root.maildir, 'carol@example.org', 'new');
    const subjects = (): string[] => files(box).map((f) => /^Subject: (.*)$/m.exec(readFileSync(join(box, f), 'utf8'))?.[1] ?? '');
    await waitFor(() => subjects().length >= acknowledged.length, 'every acknowledged message in the Maildir');
    expect(subjects().sort()).toEqual([...acknowledged].sort());
    expect(subjects().some((s) => s.endsWith('-failing'))).toBe(false);
    // The plugin was never taken out of service, and the server is still up.
    expect(logLines.some((line) => line.includes('plugin disabled after failing'))).toBe(false);
  });
});
