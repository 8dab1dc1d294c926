import { copyFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { DEFAULT_INLINE_BYTES_MAX } from '../../src/storage/spool.js';
import { fixture } from '../helpers/fixtures.js';
import { blockingProbeRoot, maildirTexts, serverRoot, waitFor } from '../helpers/server.js';

const MIB = 2 ** 20;

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
}

/** A text body of `bytes` bytes in 60-character lines (sent as they are, not quoted-printable), ending with `last`. */
function bigText(bytes: number, last: string): string {
  const line = 'lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do\n';
  return line.repeat(Math.ceil(bytes / line.length)) + last;
}

describe('messages larger than the spool keeps in memory', () => {
  let root: ReturnType<typeof serverRoot>;
  let server: MailServer;
  let port: number;

  beforeAll(async () => {
    root = serverRoot({
      server: 'max_message_bytes = 8388608\n',
      plugins: '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libspam_filter.so"\n',
    });
    copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
    server = new MailServer(loadConfig(root.config), pino({ level: 'silent' }));
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  const send = (from: string, text: string) =>
    nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true }).sendMail({ from, to: 'carol@mx.test', subject: 'big', text });

  it('streams a 3 MiB message to the spool, gives the body hooks all of it, and delivers it byte for byte', async () => {
    const text = bigText(3 * MIB, 'the very last line\n');
    expect(text.length).toBeGreaterThan(DEFAULT_INLINE_BYTES_MAX * 4);
    const info = await send('big@example.com', text);
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
    const box = join(root.maildir, 'carol@mx.test', 'new');
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (!existsSync(box) || readdirSync(box).length === 0)) await new Promise((r) => setTimeout(r, 50));
    const [delivered] = readdirSync(box);
    // Compared as a boolean: vitest would render megabytes on a mismatch.
    expect(readFileSync(join(box, delivered!), 'utf8').replace(/\r\n/g, '\n').includes(text)).toBe(true);
  });

  it('refuses spam whose words come after the first megabytes (the filter read the spool file), and keeps nothing of it', async () => {
    const large = (): string[] => filesUnder(root.spool).filter((file) => file.includes(join('spool', 'large')));
    const before = large();
    const spam = bigText(3 * MIB, 'Congratulations WINNER! casino: click here for free money, act now\n');
    await expect(send('late-spam@example.net', spam)).rejects.toMatchObject({ responseCode: 554 });
    // The message's large/ file went with the refusal.
    expect(large().filter((file) => !before.includes(file))).toEqual([]);
  });
});

describe('message_stored does not hold the 250', () => {
  let root: ReturnType<typeof serverRoot>;
  let server: MailServer;
  let port: number;

  beforeAll(async () => {
    // A sender of doze@ makes the probe's message_stored call sleep 1.5 s.
    root = blockingProbeRoot(5000);
    server = new MailServer(loadConfig(root.config), pino({ level: 'silent' }));
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  it('answers 250 once the message is durable, while a slow blocking plugin is still in message_stored', async () => {
    const sendTimed = async (subject: string): Promise<{ ms: number; response: string }> => {
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
      const started = performance.now();
      try {
        const info = await transport.sendMail({ from: 'doze@example.com', to: 'carol@example.org', subject, text: `body of ${subject}` });
        return { ms: performance.now() - started, response: info.response };
      } finally {
        transport.close();
      }
    };
    // Two in a row: the second one's message_stored queues behind the first one's 1.5 s doze.
    const [first, second] = await Promise.all([sendTimed('first'), sendTimed('second')]);
    expect(first.response).toMatch(/^250 /);
    expect(second.response).toMatch(/^250 /);
    expect(first.ms).toBeLessThan(1000);
    expect(second.ms).toBeLessThan(1000);
    await waitFor(() => maildirTexts(root.maildir).filter((text) => /^Subject: (first|second)$/m.test(text)).length === 2, 'both messages in the Maildir');
  });
});
