import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { runClient, serverRoot, waitFor } from '../helpers/server.js';
import { selfSigned } from '../helpers/tls.js';

/**
 * swaks, the client the README tells an admin to try, with the two things
 * smtplib and nodemailer do not do here: PIPELINING and STARTTLS from
 * another TLS stack. An integration test because swaks is a system package
 * (`.ci/run` installs it); `npm test` needs nothing beyond Node, Python and gcc.
 */
describe('the mail server with swaks', () => {
  let root: ReturnType<typeof serverRoot>;
  let server: MailServer;
  let port: number;

  beforeAll(async () => {
    root = serverRoot({ server: 'tls_key = "key.pem"\ntls_cert = "cert.pem"\n' });
    selfSigned(root.dir);
    server = new MailServer(loadConfig(root.config), pino({ level: 'silent' }));
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  for (const extra of ['--pipeline', '--tls']) {
    it(`takes mail from swaks ${extra} into the Maildir`, async () => {
      const body = `from swaks ${extra}`;
      const run = await runClient('swaks', ['--server', '127.0.0.1', '--port', String(port), '--from', 'eve@example.com', '--to', 'frank@example.org', '--body', body, extra], 30_000);
      expect(run.status, run.stdout + run.stderr).toBe(0);
      expect(run.stdout).toMatch(/<[-~]\s+250 2\.0\.0 Ok: queued as/);
      const box = join(root.maildir, 'frank@example.org', 'new');
      const holds = (): boolean => {
        try {
          return readdirSync(box).some((file) => readFileSync(join(box, file), 'latin1').includes(body));
        } catch {
          return false;
        }
      };
      await waitFor(holds, `swaks ${extra} message in the Maildir`);
    });
  }
});
