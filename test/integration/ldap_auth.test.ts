import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { freePort, runClient, serverRoot, startServerProcess, type ServerProcess } from '../helpers/server.js';
import { startDelayProxy, type DelayProxy } from './helpers/delay-proxy.js';
import { EXAMPLE_BUILD_DIR, examplePlugin, type ExampleTarget } from './helpers/plugins.js';
import { startSlapd, SUFFIX, type LdapUser, type Slapd } from './helpers/slapd.js';

/**
 * plugins/ldap_auth.zig against a real slapd, through the real server, with
 * Python's smtplib as the client: every scenario for the native build and
 * for the sandboxed (wasm) build.
 */

const ALICE: LdapUser = { uid: 'alice', password: 'alice-Pa55-7f3c9e' };
const BOB: LdapUser = { uid: 'bob', password: 'bob-Pa55-1d0b44' };
/** The same uid in two units: a search for it finds two entries. */
const TWINS: LdapUser[] = [
  { uid: 'twin', password: 'twin-Pa55-aa01' },
  { uid: 'twin', password: 'twin-Pa55-aa01', ou: 'staff' },
];
const WRONG_PASSWORD = 'wrong-Pa55-c0ffee';
const SECRETS = [ALICE.password, BOB.password, TWINS[0]!.password, WRONG_PASSWORD];

const TEMPLATE = `uid={username},ou=people,${SUFFIX}`;
/** Generous: the sandbox's default hook deadline (1 s) is below the slow directory's reply time. */
const HOOK_TIMEOUT_MS = 15_000;
/** How late the slow directory answers each request. */
const SLOW_REPLY_MS = 1500;
const PLAIN_SESSIONS = 10;

interface AuthRun {
  /** The reply code to AUTH. */
  auth: number;
  text?: string;
  /** The reply code to the end of DATA, when a message was sent. */
  mail?: number;
  /** Wall-clock seconds when the AUTH reply arrived. */
  t: number;
}

/** One SMTP session: EHLO, AUTH `method`, and when it succeeds and `token` is given, a message carrying it. */
const AUTH_SCRIPT = `
import json, smtplib, sys, time
p = json.loads(sys.argv[1])
r = {}
s = smtplib.SMTP('127.0.0.1', p['port'], timeout=60)
s.ehlo('client.test')
s.user, s.password = p['user'], p['password']
try:
    code, _ = s.auth(p['method'], s.auth_plain if p['method'] == 'PLAIN' else s.auth_login)
    r['auth'] = code
except smtplib.SMTPAuthenticationError as e:
    r['auth'] = e.smtp_code
    r['text'] = e.smtp_error.decode()
r['t'] = time.time()
if r['auth'] == 235 and p.get('token'):
    refused = s.sendmail(p['user'] + '@example.org', ['carol@example.org'], 'Subject: ' + p['token'] + '\\r\\n\\r\\n' + p['token'] + '\\r\\n')
    r['mail'] = 250 if refused == {} else 550
s.quit()
print(json.dumps(r))
`;

async function smtpAuth(port: number, method: 'PLAIN' | 'LOGIN', user: string, password: string, token?: string): Promise<AuthRun> {
  const run = await runClient('python3', ['-c', AUTH_SCRIPT, JSON.stringify({ port, method, user, password, token })], 60_000);
  if (run.status !== 0) throw new Error(`smtplib session failed (${run.status}): ${run.stdout}${run.stderr}`);
  return JSON.parse(run.stdout.trim()) as AuthRun;
}

/** `count` concurrent sessions without AUTH, one message each; prints one "<code> <time>" line per session. */
const PLAIN_SCRIPT = `
import json, smtplib, sys, threading, time
p = json.loads(sys.argv[1])
out = []
def session(i):
    try:
        s = smtplib.SMTP('127.0.0.1', p['port'], timeout=60)
        s.ehlo('plain.test')
        s.mail('sender%d@example.com' % i)
        s.rcpt('dave@example.org')
        code, _ = s.data('Subject: plain %d\\r\\n\\r\\nplain session %d\\r\\n' % (i, i))
        out.append('%d %f' % (code, time.time()))
        s.quit()
    except Exception as e:
        out.append('error %f %s' % (time.time(), e))
threads = [threading.Thread(target=session, args=(i,)) for i in range(p['count'])]
for t in threads: t.start()
for t in threads: t.join()
print('\\n'.join(out))
`;

function files(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => !f.startsWith('.')) : [];
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** True when a message holding `token` reached carol's Maildir. */
function delivered(maildir: string, token: string): boolean {
  const box = join(maildir, 'carol@example.org', 'new');
  return files(box).some((f) => readFileSync(join(box, f), 'utf8').includes(token));
}

interface Harness {
  readonly port: number;
  readonly maildir: string;
  readonly config: string;
  /** Every line the server logged (pino, JSON), the plugin's own prints included when sandboxed. */
  readonly logLines: string[];
  stop(): Promise<void>;
}

/** The [[plugins.plugin]] entry of ldap-auth for `target`, with `grants` as allow_connect (none: no key). */
function pluginsSection(target: ExampleTarget, pluginConfig: object, grants: readonly string[] | undefined): string {
  const grantLine = grants === undefined ? '' : `allow_connect = ${JSON.stringify(grants)}\n`;
  return (
    // The builds stay where global-setup made them; the containment rule wants that folder named.
    `[plugins]\nenabled = true\ndirectory = "./plugins"\ntrusted_directories = ${JSON.stringify([EXAMPLE_BUILD_DIR])}\n\n` +
    // Only a plugin configured as an authenticator may approve a login.
    '[[plugins.plugin]]\nname = "ldap-auth"\nauthenticator = true\n' +
    `library = ${JSON.stringify(examplePlugin('ldap_auth', 'native'))}\n` +
    `wasm = ${JSON.stringify(examplePlugin('ldap_auth', 'wasm'))}\n` +
    `sandbox = ${target === 'wasm'}\n` +
    grantLine +
    `config = '''${JSON.stringify(pluginConfig)}'''\n\n` +
    `[plugins.plugin.limits]\nhook_timeout_ms = ${HOOK_TIMEOUT_MS}\n`
  );
}

const SERVER_SECTION = 'auth = true\nauth_insecure = true\nlog_hook_calls = true\nmax_clients = 50\n';

/** A mail server in this process, offering AUTH, with ldap-auth as its only plugin. */
async function startMailServer(target: ExampleTarget, pluginConfig: object, grants: readonly string[] | undefined): Promise<Harness> {
  const root = serverRoot({ server: SERVER_SECTION, plugins: pluginsSection(target, pluginConfig, grants) });
  const logLines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
  const server = new MailServer(loadConfig(root.config), logger);
  const port = await server.start();
  return { port, maildir: root.maildir, config: root.config, logLines, stop: () => server.stop() };
}

let slapd: Slapd;

beforeAll(async () => {
  slapd = await startSlapd([ALICE, BOB, ...TWINS]);
});

afterAll(async () => {
  await slapd?.stop();
});

for (const target of ['native', 'wasm'] as const) {
  const build = target === 'native' ? 'native build' : 'sandboxed build';

  describe(`ldap-auth, ${build}: DN template mode`, () => {
    let mail: Harness;

    beforeAll(async () => {
      mail = await startMailServer(target, { server: slapd.address, bind_dn_template: TEMPLATE, timeout_ms: 5000 }, [slapd.address]);
    });

    afterAll(async () => {
      await mail?.stop();
    });

    it('AUTH PLAIN and AUTH LOGIN with the right password get 235, and the mail is accepted and delivered', async () => {
      const plain = await smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password, `token-plain-${target}`);
      expect(plain).toMatchObject({ auth: 235, mail: 250 });
      const login = await smtpAuth(mail.port, 'LOGIN', BOB.uid, BOB.password, `token-login-${target}`);
      expect(login).toMatchObject({ auth: 235, mail: 250 });
      await waitFor(() => delivered(mail.maildir, `token-plain-${target}`) && delivered(mail.maildir, `token-login-${target}`), 'both messages in the Maildir');
    });

    it('a wrong password gets 535, with PLAIN and with LOGIN', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, WRONG_PASSWORD)).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'LOGIN', ALICE.uid, WRONG_PASSWORD)).toMatchObject({ auth: 535 });
      // A password that is right for another user is still wrong for this one.
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, BOB.password)).toMatchObject({ auth: 535 });
    });

    it('an unknown user gets 535, the same reply as a wrong password', async () => {
      const unknown = await smtpAuth(mail.port, 'PLAIN', 'mallory', ALICE.password);
      const wrong = await smtpAuth(mail.port, 'PLAIN', ALICE.uid, WRONG_PASSWORD);
      expect(unknown).toMatchObject({ auth: 535 });
      expect(unknown.text).toBe(wrong.text);
    });

    it('an empty password gets 535', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, '')).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'LOGIN', ALICE.uid, '')).toMatchObject({ auth: 535 });
    });

    it('a username that tries to change the DN is escaped, so it cannot log in as someone else', async () => {
      // Escaped (RFC 4514), the whole username is one uid value that no entry has.
      expect(await smtpAuth(mail.port, 'PLAIN', `${ALICE.uid},ou=people,${SUFFIX}`, ALICE.password)).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'PLAIN', '*', ALICE.password)).toMatchObject({ auth: 535 });
    });

    it('the server still works after the logins: the plugin keeps its connection and logs in again', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', BOB.uid, BOB.password)).toMatchObject({ auth: 235 });
      expect(await smtpAuth(mail.port, 'PLAIN', BOB.uid, WRONG_PASSWORD)).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'PLAIN', BOB.uid, BOB.password)).toMatchObject({ auth: 235 });
    });

    it('no password, in clear or base64, appears in any log line, with log_hook_calls on', () => {
      const log = mail.logLines.join('\n');
      // The log holds the hook calls, so the check looks at something.
      expect(log).toContain('auth_started');
      expect(log).toContain('ldap-auth');
      for (const secret of SECRETS) {
        expect(log).not.toContain(secret);
        expect(log).not.toContain(Buffer.from(secret).toString('base64'));
        expect(log).not.toContain(Buffer.from(`\0${ALICE.uid}\0${secret}`).toString('base64'));
      }
    });
  });

  describe(`ldap-auth, ${build}: search-then-bind mode`, () => {
    let mail: Harness;

    beforeAll(async () => {
      mail = await startMailServer(
        target,
        { server: slapd.address, search_base: SUFFIX, search_attribute: 'uid', service_bind_dn: slapd.serviceDn, service_password: slapd.servicePassword },
        [slapd.address],
      );
    });

    afterAll(async () => {
      await mail?.stop();
    });

    it('finds the entry and binds as it: PLAIN and LOGIN get 235 and the mail is accepted', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password, `token-search-${target}`)).toMatchObject({ auth: 235, mail: 250 });
      expect(await smtpAuth(mail.port, 'LOGIN', BOB.uid, BOB.password)).toMatchObject({ auth: 235 });
      await waitFor(() => delivered(mail.maildir, `token-search-${target}`), 'the message in the Maildir');
    });

    it('a wrong password and an unknown user get 535', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, WRONG_PASSWORD)).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'LOGIN', ALICE.uid, WRONG_PASSWORD)).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'PLAIN', 'mallory', ALICE.password)).toMatchObject({ auth: 535 });
    });

    it('a username two entries share gets 535 even with the right password', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', 'twin', TWINS[0]!.password)).toMatchObject({ auth: 535 });
    });

    it('filter characters in the username match literally: "*" finds nobody', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', '*', ALICE.password)).toMatchObject({ auth: 535 });
      expect(await smtpAuth(mail.port, 'PLAIN', 'alice)(uid=*', ALICE.password)).toMatchObject({ auth: 535 });
    });

    it('neither the user passwords nor the service password appear in any log line', () => {
      const log = mail.logLines.join('\n');
      expect(log).toContain('auth_started');
      for (const secret of [...SECRETS, slapd.servicePassword]) expect(log).not.toContain(secret);
    });
  });

  describe(`ldap-auth, ${build}: without the allow_connect grant`, () => {
    let mail: Harness;

    beforeAll(async () => {
      mail = await startMailServer(target, { server: slapd.address, bind_dn_template: TEMPLATE }, undefined);
    });

    afterAll(async () => {
      await mail?.stop();
    });

    it('the host refuses the connection and logs it; the right password gets 454, never 235', async () => {
      const run = await smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password);
      expect(run.auth).toBe(454);
      expect(run.text).toContain('4.7.0');
      const refusal = mail.logLines.find((line) => line.includes('SMTP_E_NET_DENIED'));
      expect(refusal, `no SMTP_E_NET_DENIED line in:\n${mail.logLines.join('')}`).toBeDefined();
      expect(refusal).toContain(slapd.address);
      expect(mail.logLines.join('\n')).not.toContain(ALICE.password);
    });
  });

  describe(`ldap-auth, ${build}: the directory restarts, then goes down (anonymous search mode)`, () => {
    let mail: Harness;
    let own: Slapd;

    beforeAll(async () => {
      own = await startSlapd([ALICE]);
      mail = await startMailServer(target, { server: own.address, search_base: `ou=people,${SUFFIX}`, timeout_ms: 3000 }, [own.address]);
    });

    afterAll(async () => {
      await mail?.stop();
      await own?.stop();
    });

    it('logs in, logs in again over a new connection after a restart, and answers 454 once slapd is gone', async () => {
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password)).toMatchObject({ auth: 235 });
      // slapd closes the plugin's kept connection: the next login reconnects.
      await own.restart();
      expect(await smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password)).toMatchObject({ auth: 235 });
      await own.service.stop();
      const down = await smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password);
      expect(down.auth).toBe(454);
      expect(down.text).toBe('4.7.0 Temporary authentication failure');
      // A wrong password while it is down is not a 535: the directory was not asked.
      expect(await smtpAuth(mail.port, 'LOGIN', ALICE.uid, WRONG_PASSWORD)).toMatchObject({ auth: 454 });
    });

    it('a directory that never listened answers 454 too', async () => {
      const nowhere = `tcp:127.0.0.1:${await freePort()}`;
      const other = await startMailServer(target, { server: nowhere, bind_dn_template: TEMPLATE }, [nowhere]);
      try {
        expect(await smtpAuth(other.port, 'PLAIN', ALICE.uid, ALICE.password)).toMatchObject({ auth: 454 });
      } finally {
        await other.stop();
      }
    });
  });

  describe(`ldap-auth, ${build}: a slow directory does not hold up other sessions`, () => {
    let mail: Harness;
    let proxy: DelayProxy;

    beforeAll(async () => {
      proxy = await startDelayProxy(slapd.port, SLOW_REPLY_MS);
      mail = await startMailServer(target, { server: proxy.address, bind_dn_template: TEMPLATE, timeout_ms: 10_000 }, [proxy.address]);
    });

    afterAll(async () => {
      await mail?.stop();
      await proxy?.close();
    });

    it(`${PLAIN_SESSIONS} plain sessions all get 250 while one AUTH waits ${SLOW_REPLY_MS} ms for each LDAP reply`, async () => {
      const slow = smtpAuth(mail.port, 'PLAIN', ALICE.uid, ALICE.password);
      // The plugin has connected: its hook call is now waiting on the directory.
      await waitFor(() => proxy.connections() > 0, 'the plugin to connect through the slow proxy', 10_000);
      const plain = await runClient('python3', ['-c', PLAIN_SCRIPT, JSON.stringify({ port: mail.port, count: PLAIN_SESSIONS })], 60_000);
      const auth = await slow;
      expect(plain.status, plain.stderr).toBe(0);
      const sessions = plain.stdout.trim().split('\n').map((line) => line.split(' '));
      expect(sessions.map(([code]) => code)).toEqual(Array.from({ length: PLAIN_SESSIONS }, () => '250'));
      // The slow AUTH succeeded, and after every plain session had its 250.
      expect(auth.auth).toBe(235);
      const lastPlain = Math.max(...sessions.map(([, t]) => Number(t)));
      expect(lastPlain, 'a plain session ended after the slow AUTH: the hook call held up the event loop').toBeLessThan(auth.t);
    });
  });
}

describe('ldap-auth, native build in the real server process', () => {
  let server: ServerProcess;

  beforeAll(async () => {
    const root = serverRoot({ server: SERVER_SECTION, plugins: pluginsSection('native', { server: slapd.address, bind_dn_template: TEMPLATE }, [slapd.address]) });
    server = await startServerProcess(['--config', root.config], await freePort());
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("nothing the process prints (its log, the plugin's own stderr lines) holds a password", async () => {
    expect(await smtpAuth(server.port, 'PLAIN', ALICE.uid, ALICE.password)).toMatchObject({ auth: 235 });
    expect(await smtpAuth(server.port, 'LOGIN', ALICE.uid, WRONG_PASSWORD)).toMatchObject({ auth: 535 });
    await waitFor(() => server.logs().includes('refused: invalid_credentials'), "the plugin's line about the wrong password");
    const output = server.logs();
    expect(output).toContain('[ldap-auth] alice authenticated');
    for (const secret of SECRETS) {
      expect(output).not.toContain(secret);
      expect(output).not.toContain(Buffer.from(secret).toString('base64'));
    }
  });
});
