import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture } from '../helpers/fixtures.js';
import { python, serverRoot } from '../helpers/server.js';

/** Logs in with each (user, password) over smtplib; prints the reply code of each, or "no-auth" when AUTH is not offered. */
function logins(port: number, attempts: readonly (readonly [string, string])[]): string {
  return `
import smtplib
for user, password in ${JSON.stringify(attempts)}:
    s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
    s.ehlo()
    try:
        print(s.login(user, password)[0])
    except smtplib.SMTPNotSupportedError:
        print('no-auth')
    except smtplib.SMTPAuthenticationError as e:
        print(e.smtp_code)
    s.quit()
`;
}

async function withServer(plugins: (dir: string) => string, run: (port: number, dir: string, logs: string[]) => Promise<void>, serverToml = ''): Promise<void> {
  const root = serverRoot({ server: `auth = true\nauth_insecure = true\n${serverToml}`, plugins: (dir) => `[plugins]\ndirectory = "./plugins"\n\n${plugins(dir)}` });
  copyFileSync(fixture('c_plain'), join(root.dir, 'plugins', 'libplain.so'));
  copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
  const logs: string[] = [];
  const server = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void logs.push(line) }));
  const port = await server.start();
  try {
    await run(port, root.dir, logs);
  } finally {
    await server.stop();
  }
}

/** c_plain handles every hook and continues: a logger, in effect. */
const logger = (dir: string): string => `[[plugins.plugin]]\nname = "plain"\nlibrary = "libplain.so"\nconfig = '{"trace":"${join(dir, 'plain.log')}"}'\n\n`;

describe('logins are approved only by authenticators', () => {
  it('does not offer AUTH when no plugin is an authenticator, even with a plugin that would let anyone in', async () => {
    await withServer(logger, async (port, _dir, logs) => {
      const run = await python(logins(port, [['alice', 'secret'], ['anyone', 'anything']]));
      expect(run.stdout.trim().split('\n'), run.stderr).toEqual(['no-auth', 'no-auth']);
      expect(logs.join('\n')).toContain('AUTH is not offered');
    });
  });

  it('lets in only what the authenticator approves; a plugin that is not one never sees the password and cannot approve', async () => {
    const plugins = (dir: string): string => `${logger(dir)}[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nauthenticator = true\n`;
    await withServer(plugins, async (port, dir, logs) => {
      const run = await python(logins(port, [['alice', 'secret'], ['alice', 'wrong'], ['anyone', 'anything']]));
      expect(run.stdout.trim().split('\n'), run.stderr).toEqual(['235', '535', '535']);
      // The logger saw every attempt (smtplib retries a refused login with its next mechanism,
      // so there are at least three), never a password.
      const seen = readFileSync(join(dir, 'plain.log'), 'utf8').split('\n').filter((line) => line.includes('auth_started'));
      expect(seen.length).toBeGreaterThanOrEqual(3);
      expect(new Set(seen)).toEqual(new Set(['plain auth_started without password']));
      expect(logs.join('\n')).not.toMatch(/secret|wrong|anything/);
    });
  });

  it('keeps auth_required when AUTH is not offered: MAIL gets 530 instead of slipping through', async () => {
    const mail = (port: number): string => `
import smtplib
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
s.ehlo()
print(s.mail('a@example.com')[0])
s.quit()
`;
    await withServer(logger, async (port) => {
      const run = await python(mail(port));
      expect(run.stdout.trim(), run.stderr).toBe('530');
    }, 'auth_required = true\n');
  });
});
