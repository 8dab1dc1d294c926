import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// The private Postfix instance the durable-spool benchmark runs, with smtpd_milters added.
import { postfixMissing, startPostfix, type PrivatePostfix } from '../../bench/_postfix.mjs';
import { PROJECT_ROOT } from '../../src/paths.js';
import { freePort, python, serverRoot, waitForPort } from '../helpers/server.js';
import { examplePlugin } from './helpers/plugins.js';

/**
 * `smtp-server milter` behind a real Postfix (a private instance started
 * here: smtpd on loopback, `smtpd_milters` pointing at the milter, every
 * accepted message discarded): the example spam filter, native and
 * sandboxed, decides what Postfix answers a client sending with smtplib.
 */
const SPAM = 'Congratulations WINNER! casino: click here for free money, act now';

/** smtplib sends one message; prints the final reply as "CODE TEXT". */
function sendWithSmtplib(port: number, body: string): Promise<string> {
  const script = `
import smtplib
message = "From: a@example.test\\r\\nTo: b@example.test\\r\\nSubject: hello\\r\\n\\r\\n" + ${JSON.stringify(body)} + "\\r\\n"
with smtplib.SMTP("127.0.0.1", ${port}, timeout=30) as client:
    try:
        client.sendmail("a@example.test", ["b@example.test"], message)
        code, text = client.noop()
        print("250 accepted")
    except smtplib.SMTPResponseException as error:
        print(error.smtp_code, error.smtp_error.decode())
    except smtplib.SMTPRecipientsRefused as error:
        code, text = list(error.recipients.values())[0]
        print(code, text.decode())
`;
  return python(script).then((run) => {
    if (run.status !== 0) throw new Error(`smtplib failed: ${run.stderr}`);
    return run.stdout.trim();
  });
}

for (const build of ['native', 'sandboxed'] as const) {
  describe(`Postfix with smtpd_milters = smtp-server milter (${build} spam filter)`, () => {
    let milter: ChildProcess;
    let output = '';
    let postfix: PrivatePostfix;

    beforeAll(async () => {
      expect(postfixMissing()).toBeNull();
      const entry = build === 'native' ? 'library = "libspam_filter.so"' : 'wasm = "spam_filter.wasm"';
      const root = serverRoot({
        plugins: `[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\n${entry}\nconfig = '{"spam_threshold": 5.0}'\n`,
      });
      copyFileSync(examplePlugin('spam_filter', 'native'), join(root.dir, 'plugins', 'libspam_filter.so'));
      copyFileSync(examplePlugin('spam_filter', 'wasm'), join(root.dir, 'plugins', 'spam_filter.wasm'));
      const port = await freePort();
      milter = spawn(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), 'milter', '--listen', `inet:127.0.0.1:${port}`, '--config', root.config], { stdio: ['ignore', 'pipe', 'pipe'] });
      milter.stdout!.on('data', (chunk) => (output += chunk));
      milter.stderr!.on('data', (chunk) => (output += chunk));
      await waitForPort(port, 20_000);
      postfix = await startPostfix({ mainExtra: `smtpd_milters = inet:127.0.0.1:${port}\nmilter_default_action = tempfail\nmilter_protocol = 6\n` });
    }, 60_000);

    afterAll(async () => {
      await postfix?.stop();
      if (milter?.exitCode === null) {
        const exited = new Promise((resolve) => milter.once('exit', resolve));
        milter.kill('SIGTERM');
        await exited;
      }
    });

    it('Postfix refuses spam with the plugin\'s reply and accepts clean mail', async () => {
      expect(await sendWithSmtplib(postfix.port, SPAM)).toMatch(/^554 5\.7\.1 /);
      expect(await sendWithSmtplib(postfix.port, 'a clean message')).toBe('250 accepted');
      expect(output).toContain('serving the plugin chain as a milter');
      expect(output).toContain('"hook":"message_filtered"');
    });
  });
}
