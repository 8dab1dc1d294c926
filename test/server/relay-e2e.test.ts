import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture } from '../helpers/fixtures.js';
import { python, serverRoot, waitFor } from '../helpers/server.js';
import { startSmarthost, type Smarthost, type Transaction } from '../helpers/smarthost.js';

/**
 * Issue 13's relay items against a running server in relay mode, with
 * Python's smtplib as the client and a Node smarthost on loopback. The
 * client connects from 127.0.0.1, so `relay_networks = []` makes it an
 * untrusted client: only a login lets it send anywhere but example.test.
 */

/** One Python smtplib session; prints one line per reply the script asks for. */
async function smtplib(port: number, body: string): Promise<string[]> {
  const run = await python(`
import smtplib
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=20)
s.ehlo('client.test')
def show(reply):
    print(reply[0], reply[1].decode())
${body}
s.quit()
`);
  expect(run.status, run.stderr).toBe(0);
  return run.stdout.trim().split('\n');
}

/** Recipients of every transaction whose body holds `marker`. */
function relayedTo(transactions: readonly Transaction[], marker: string): string[] {
  return transactions.filter((t) => t.data.toString('latin1').includes(marker)).flatMap((t) => t.to);
}

describe('relay mode against a smarthost, with a real client', () => {
  let smarthost: Smarthost;
  let server: MailServer;
  let port: number;

  beforeAll(async () => {
    smarthost = await startSmarthost();
    const root = serverRoot({
      server: 'auth = true\nauth_insecure = true\n',
      delivery: `mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = ${smarthost.port}\nretry_initial_ms = 50\nretry_max_ms = 200\n`,
      policy: 'local_domains = ["example.test"]\nrelay_networks = []\n',
      plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nauthenticator = true\n',
    });
    copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
    server = new MailServer(loadConfig(root.config), pino({ level: 'silent' }));
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
    await smarthost?.close();
  });

  it('refuses an unauthenticated client mail for a remote domain with 554 5.7.1, and relays none of it', async () => {
    const lines = await smtplib(port, `
show(s.mail('mallory@remote.example'))
show(s.rcpt('victim@remote.example'))
try:
    s.data(b'Subject: open relay?\\r\\n\\r\\nMARKER-UNAUTH\\r\\n')
except smtplib.SMTPDataError as e:
    print(e.smtp_code)
s.rset()
s.sendmail('mallory@remote.example', ['alice@example.test'], b'Subject: local\\r\\n\\r\\nMARKER-LOCAL-AFTER\\r\\n')
print('local sent')
`);
    expect(lines[0]).toMatch(/^250 /);
    expect(lines[1]).toMatch(/^554 5\.7\.1 <victim@remote\.example>: Relay access denied$/);
    // DATA with no accepted recipient is refused, so nothing is spooled.
    expect(lines[2]).toMatch(/^5\d\d$/);
    expect(lines[3]).toBe('local sent');
    // The message accepted after it is the barrier: once it has reached the
    // smarthost, the refused one would have too.
    await waitFor(() => relayedTo(smarthost.transactions, 'MARKER-LOCAL-AFTER').length > 0, 'the local message at the smarthost');
    expect(relayedTo(smarthost.transactions, 'MARKER-LOCAL-AFTER')).toEqual(['alice@example.test']);
    expect(relayedTo(smarthost.transactions, 'MARKER-UNAUTH')).toEqual([]);
    expect(smarthost.transactions.flatMap((t) => t.to)).not.toContain('victim@remote.example');
  });

  it('relays for a client the authenticator approved, and not for one it refused', async () => {
    const approved = await smtplib(port, `
show(s.login('alice', 'secret'))
refused = s.sendmail('alice@example.test', ['carol@remote.example'], b'Subject: relayed\\r\\n\\r\\nMARKER-AUTH\\r\\n')
print('refused', sorted(refused))
`);
    expect(approved[0]).toMatch(/^235 /);
    expect(approved[1]).toBe('refused []');
    await waitFor(() => relayedTo(smarthost.transactions, 'MARKER-AUTH').length > 0, 'the relayed message at the smarthost');
    expect(relayedTo(smarthost.transactions, 'MARKER-AUTH')).toEqual(['carol@remote.example']);

    const wrong = await smtplib(port, `
try:
    s.login('alice', 'wrong')
except smtplib.SMTPAuthenticationError as e:
    print(e.smtp_code)
show(s.mail('alice@example.test'))
show(s.rcpt('dave@remote.example'))
`);
    expect(wrong[0]).toBe('535');
    expect(wrong[2]).toMatch(/^554 5\.7\.1 <dave@remote\.example>: Relay access denied$/);
  });

  it('takes 100 recipients in one transaction, answers 452 4.5.3 from the 101st, and delivers to the 100 only', async () => {
    const recipients = Array.from({ length: 101 }, (_, i) => `user${i}@example.test`);
    const lines = await smtplib(port, `
show(s.mail('bulk@example.test'))
for r in ${JSON.stringify(recipients)}:
    show(s.rcpt(r))
show(s.data(b'Subject: many\\r\\n\\r\\nMARKER-MANY\\r\\n'))
`);
    const rcptReplies = lines.slice(1, 102);
    expect(rcptReplies.slice(0, 100).every((line) => line.startsWith('250 '))).toBe(true);
    expect(rcptReplies[100]).toBe('452 4.5.3 Too many recipients');
    expect(lines[102]).toMatch(/^250 /);
    const first100 = recipients.slice(0, 100);
    await waitFor(() => relayedTo(smarthost.transactions, 'MARKER-MANY').length >= 100, '100 recipients at the smarthost');
    expect(relayedTo(smarthost.transactions, 'MARKER-MANY').sort()).toEqual([...first100].sort());
  });
});
