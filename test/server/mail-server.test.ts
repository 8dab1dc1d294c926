import { copyFileSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture } from '../helpers/fixtures.js';
import { python, serverRoot, waitFor } from '../helpers/server.js';
import { selfSigned } from '../helpers/tls.js';

const SPAM = 'Congratulations WINNER! casino: click here for free money, act now';

function files(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => !f.startsWith('.')) : [];
}

/** True when any spool entry or any mailbox holds `needle` (the spool drains as deliveries finish). */
function keptAnywhere(root: { spool: string; maildir: string }, needle: string): boolean {
  const spooled = files(root.spool).some((f) => readFileSync(join(root.spool, f), 'latin1').includes(needle));
  const delivered = files(root.maildir).some((box) => files(join(root.maildir, box, 'new')).some((f) => readFileSync(join(root.maildir, box, 'new', f), 'latin1').includes(needle)));
  return spooled || delivered;
}

describe('the mail server with real clients', () => {
  let root: ReturnType<typeof serverRoot>;
  let server: MailServer;
  let port: number;
  const logLines: string[] = [];
  let trace: string;

  beforeAll(async () => {
    root = serverRoot({
      server: 'max_message_bytes = 65536\nmax_clients = 200\ntls_key = "key.pem"\ntls_cert = "cert.pem"\nauth = true\nauth_insecure = true\nlog_hook_calls = true\n',
      plugins: (dir) =>
        `[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nauthenticator = true\nconfig = '{"trace":"${join(dir, 'trace.log')}"}'\n\n` +
        `[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libspam_filter.so"\n`,
    });
    selfSigned(root.dir);
    trace = join(root.dir, 'trace.log');
    copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
    copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
    const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
    server = new MailServer(loadConfig(root.config), logger);
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  const transport = (extra: Record<string, unknown> = {}) =>
    nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, ...extra });

  it('accepts plain mail from nodemailer into the Maildir, firing the hooks in order', async () => {
    const info = await transport().sendMail({ from: 'bob@example.com', to: 'carol@example.org', subject: 'hello', text: 'plain body' });
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
    const box = join(root.maildir, 'carol@example.org', 'new');
    await waitFor(() => files(box).length === 1, 'maildir delivery');
    expect(readFileSync(join(box, files(box)[0]!), 'utf8')).toContain('plain body');
    await waitFor(() => readFileSync(trace, 'utf8').includes('message_delivered'), 'message_delivered');
    const hooks = readFileSync(trace, 'utf8').trim().split('\n').map((l) => l.split(' ')[0]);
    for (const hook of ['config_loaded', 'server_starting', 'server_started', 'connection_opened', 'command_received', 'command_validated', 'message_received', 'message_validated', 'message_filtered', 'message_stored', 'message_delivered']) {
      expect(hooks, hook).toContain(hook);
    }
    const order = ['message_received', 'message_validated', 'message_filtered', 'message_stored', 'message_delivered'].map((h) => hooks.indexOf(h));
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(logLines.some((l) => l.includes('"hook":"message_filtered"') && l.includes('"plugin":"spam-filter"') && l.includes('duration_us'))).toBe(true);
  });

  it('sends the spam filter verdict as a 5xx and keeps nothing', async () => {
    await expect(transport().sendMail({ from: 'spammer@example.net', to: 'carol@example.org', text: SPAM })).rejects.toMatchObject({ responseCode: 554, response: expect.stringContaining('5.7.1') });
    await new Promise((r) => setTimeout(r, 200));
    expect(keptAnywhere(root, 'spammer@example.net')).toBe(false);
  });

  it('refuses a sender a plugin refuses, and answers the 451 a plugin chose', async () => {
    await expect(transport().sendMail({ from: 'x@blocked.example', to: 'carol@example.org', text: 'hi' })).rejects.toMatchObject({ responseCode: 550 });
    await expect(transport().sendMail({ from: 'slow@example.com', to: 'carol@example.org', text: 'hi' })).rejects.toMatchObject({ responseCode: 451, response: '451 4.7.1 Rate limit exceeded, try again later' });
  });

  it('answers 552 to an oversized message', async () => {
    await expect(transport().sendMail({ from: 'big@example.com', to: 'carol@example.org', text: 'x'.repeat(70_000) })).rejects.toMatchObject({ responseCode: 552 });
  });

  it("takes mail from Python's smtplib, with STARTTLS and AUTH PLAIN and LOGIN; a wrong password gets 535", async () => {
    const script = `
import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=20)
s.ehlo(); s.starttls(context=ctx); s.ehlo()
s.user, s.password = 'alice', 'secret'
print(s.auth('PLAIN', s.auth_plain)[0])
print(s.sendmail('alice@example.com', ['dave@example.org'], 'Subject: py\\r\\n\\r\\nfrom python\\r\\n') == {})
s.quit()
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=20)
s.user, s.password = 'alice', 'secret'
s.ehlo(); print(s.auth('LOGIN', s.auth_login)[0]); s.quit()
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=20)
s.ehlo()
try:
    s.login('alice', 'wrong')
except smtplib.SMTPAuthenticationError as e:
    print(e.smtp_code)
s.quit()
`;
    const run = await python(script);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout.trim().split('\n')).toEqual(['235', 'True', '235', '535']);
    const log = readFileSync(trace, 'utf8');
    expect(log).toContain('connection_upgraded');
    expect(log).toContain('auth_completed');
    expect(log).toContain('auth_failed');
    // Credentials never reach command hooks nor the log.
    expect(log).not.toMatch(/secret|wrong|YWxpY2U/);
    expect(logLines.join('\n')).not.toMatch(/secret|"wrong"/);
  });

  it('quarantines what a filter asks to, instead of delivering it', async () => {
    await transport().sendMail({ from: 'q@example.com', to: 'quarantined@example.org', text: 'please QUARANTINE-ME now' });
    await waitFor(() => files(root.quarantine).some((f) => f.endsWith('.eml')), 'quarantine');
    expect(files(join(root.maildir, 'quarantined@example.org', 'new'))).toEqual([]);
  });

  it('serves 100 concurrent connections', async () => {
    const sends = Array.from({ length: 100 }, (_, i) => transport().sendMail({ from: `c${i}@example.com`, to: 'many@example.org', text: `message ${i}` }));
    const results = await Promise.all(sends);
    expect(results.every((r) => r.response.startsWith('250'))).toBe(true);
    await waitFor(() => files(join(root.maildir, 'many@example.org', 'new')).length === 100, '100 deliveries');
  });

  it('stores and delivers nothing when the client disconnects mid-DATA', async () => {
    await new Promise<void>((done, fail) => {
      const socket = connect(port, '127.0.0.1');
      let step = 0;
      const script = ['EHLO x\r\n', 'MAIL FROM:<cut@example.com>\r\n', 'RCPT TO:<cut@example.org>\r\n', 'DATA\r\n'];
      socket.on('data', (chunk) => {
        const text = chunk.toString();
        if (step < script.length && /^(220|250|354)/m.test(text)) socket.write(script[step++]!);
        else if (text.startsWith('354')) {
          socket.write('Subject: cut\r\n\r\nhalf a mess');
          setTimeout(() => {
            socket.destroy();
            done();
          }, 100);
        }
      });
      socket.on('error', fail);
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(keptAnywhere(root, 'cut@example.org')).toBe(false);
    expect(keptAnywhere(root, 'half a mess')).toBe(false);
    expect(existsSync(join(root.maildir, 'cut@example.org'))).toBe(false);
  });
});
