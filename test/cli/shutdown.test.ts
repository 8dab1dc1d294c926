import { describe, expect, it } from 'vitest';
import { EXIT_FORCED } from '../../src/cli/shutdown.js';
import { blockingProbeRoot, freePort, maildirTexts, python, startServerProcess, waitFor, type ServerProcess } from '../helpers/server.js';
import { LineClient } from '../helpers/smtp-client.js';

/** The server's exit code, or null when it is still running after `timeoutMs` (then it is killed, so the test run goes on). */
async function exitWithin(server: ServerProcess, timeoutMs: number): Promise<number | null> {
  const exited = new Promise<number | null>((done) => server.child.once('exit', (code) => done(code)));
  const timedOut = new Promise<'running'>((done) => setTimeout(() => done('running'), timeoutMs).unref());
  const outcome = await Promise.race([exited, timedOut]);
  if (outcome !== 'running') return outcome;
  server.child.kill('SIGKILL');
  return null;
}

/** How each case's deadline leaves the hook when SIGTERM comes, and what the exit's log line must say. */
const CASES = [
  {
    name: 'still inside its deadline (600 s): the stop cannot finish, and the grace runs out',
    hookTimeoutMs: 600_000,
    said: /did not stop within 15000 ms .*; still running: plugin "isolation-probe" in \w+ for \d+ ms;/,
    late: false,
  },
  {
    name: 'past its deadline (500 ms): the session was answered 451, the stop finishes, the thread is still held',
    hookTimeoutMs: 500,
    said: /the server stopped, but native hook calls still hold threads; still running: plugin "isolation-probe" in \w+ for \d+ ms \(past its deadline\);/,
    late: true,
  },
] as const;

describe('SIGTERM', () => {
  it.each(CASES)('stops a server whose in-process plugin is stuck in a blocking hook $name, logs what was still running, and loses no acknowledged message', async ({ hookTimeoutMs, said, late }) => {
    // The probe with SMTP_PLUGIN_FLAG_BLOCKING, in-process; a sender of hang@ makes its hook sleep forever.
    const root = blockingProbeRoot(hookTimeoutMs);
    const port = await freePort();
    const server = await startServerProcess(['--config', root.config], port);
    let client: LineClient | undefined;
    try {
      const sent = await python(`
import smtplib
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
s.sendmail('bob@example.com', ['carol@example.org'], 'Subject: acknowledged\\r\\n\\r\\nMARK-ACKNOWLEDGED\\r\\n')
s.quit()
print('250')
`);
      expect(sent.stdout.trim(), sent.stderr).toBe('250');

      client = await LineClient.open(port);
      expect(await client.next()).toMatch(/^220 /);
      expect(await client.command('EHLO client.test')).toMatch(/^250/);
      client.write('MAIL FROM:<hang@example.com>\r\n');
      await waitFor(() => server.logs().includes('isolation-probe: hanging in a hook'), 'the hook to be asleep');
      if (late) expect(await client.next()).toMatch(/^451 4\.3\.0/);

      server.child.kill('SIGTERM');
      // Bounded: SHUTDOWN_GRACE_MS (15 s) plus start-up slack; a server that hangs is killed here and the test fails.
      const code = await exitWithin(server, 60_000);
      expect(code, server.logs()).toBe(EXIT_FORCED);
      const records = server.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg?: string; native_calls?: { plugin: string; late: boolean }[] });
      const last = records.find((r) => r.msg?.includes('exiting without waiting'));
      expect(last?.msg, server.logs()).toMatch(said);
      expect(last?.native_calls).toEqual([expect.objectContaining({ plugin: 'isolation-probe', late })]);
    } finally {
      client?.destroy();
      if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL');
    }

    // Acknowledged before the forced exit: in the Maildir, delivered then or by the next start from the spool.
    const next = await startServerProcess(['--config', root.config], port);
    try {
      await waitFor(() => maildirTexts(root.maildir).some((text) => text.includes('MARK-ACKNOWLEDGED')), 'the acknowledged message in the Maildir', 20_000);
    } finally {
      await next.stop();
    }
  });
});
