import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { readLease } from '../../src/storage/spool-lease.js';
import { freePort, maildirTexts, python, runClient, serverRoot, startServerProcess, waitFor, type ServerProcess } from '../helpers/server.js';

const TOKEN = 'cluster-test-token-0123456789';

interface LogRecord {
  readonly pid: number;
  readonly time: number;
  readonly msg: string;
  readonly [key: string]: unknown;
}

function records(server: ServerProcess): LogRecord[] {
  return server.logs().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogRecord);
}

/** Worker index -> pid, from the primary's "worker listening" lines (the latest per index). */
function workerPids(server: ServerProcess): Map<number, number> {
  const pids = new Map<number, number>();
  for (const record of records(server)) if (record.msg === 'worker listening') pids.set(record.worker as number, record.worker_pid as number);
  return pids;
}

/** The pid in each Maildir file name (`<time>.<pid>_<random>.<host>`): which process delivered it. */
function deliveringPids(maildir: string): number[] {
  return readdirSync(join(maildir, 'box@example.org', 'new')).map((name) => Number(/^\d+\.(\d+)_/.exec(name)![1]));
}

/** Sends numbered messages over one connection for `seconds`, or until it breaks; prints "<n> <unix time>" after each 250. */
const TIMED_SENDER = (port: number, seconds: number, tag: string) => `
import smtplib, sys, time
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
end = time.time() + ${seconds}
i = 0
while time.time() < end:
    try:
        s.sendmail('load@example.com', ['box@example.org'], f'Subject: ${tag}-{i}\\r\\n\\r\\nMARK-${tag}-{i}-END\\r\\n')
    except Exception as e:
        print('stopped', type(e).__name__, file=sys.stderr)
        break
    print(i, time.time(), flush=True)
    i += 1
`;

/** One message per connection, `count` connections one after the other. */
const ONE_PER_CONNECTION = (port: number, count: number, tag: string) => `
import smtplib
for i in range(${count}):
    s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
    s.sendmail('a@example.com', ['box@example.org'], f'Subject: ${tag}-{i}\\r\\n\\r\\nMARK-${tag}-{i}-END\\r\\n')
    s.quit()
    print(i, flush=True)
`;

describe('[server] workers = 2', () => {
  it('runs two workers on one port: connections land on both, a reload (SIGHUP or the admin API) reaches both, SIGTERM stops all', async () => {
    const adminPort = await freePort();
    const root = serverRoot({ server: 'workers = 2\n', storage: 'fsync = false\n', admin: `listen = "127.0.0.1:${adminPort}"\ntoken = "${TOKEN}"\n` });
    const port = await freePort();
    const server = await startServerProcess(['--config', root.config], port);
    try {
      await waitFor(() => server.logs().includes('"workers ready"'), 'both workers listening', 30_000);
      const pids = workerPids(server);
      expect(pids.size).toBe(2);
      const primary = server.child.pid!;
      expect([...pids.values()]).not.toContain(primary);

      const sent = await python(ONE_PER_CONNECTION(port, 8, 'rr'));
      expect(sent.stdout.trim().split('\n')).toHaveLength(8);
      await waitFor(() => maildirTexts(root.maildir).length === 8, 'the 8 messages in the Maildir');
      // Each worker delivered what it accepted, from its own spool directory.
      expect(new Set(deliveringPids(root.maildir))).toEqual(new Set(pids.values()));
      const dirs = readdirSync(root.spool).sort();
      expect(dirs).toEqual([`mx.test-${port}-w0`, `mx.test-${port}-w1`]);

      const reloadedBy = (): Set<number> => new Set(records(server).filter((r) => r.msg === 'config reloaded').map((r) => r.pid));
      server.child.kill('SIGHUP');
      await waitFor(() => reloadedBy().size === 2, 'config reloaded in both workers', 20_000);
      expect(reloadedBy()).toEqual(new Set(pids.values()));
      await waitFor(() => server.logs().includes('"config reloaded in every worker"'), 'the primary\'s summary');

      // The admin API answers from worker 0; its reload reaches both workers through the primary.
      const api = async (method: string, path: string): Promise<{ status: number; body: Record<string, unknown> }> => {
        const response = await fetch(`http://127.0.0.1:${adminPort}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, ...(method === 'POST' ? { body: '{"all":true}' } : {}) });
        return { status: response.status, body: (await response.json()) as Record<string, unknown> };
      };
      const status = await api('GET', '/api/status');
      expect(status.body.server).toMatchObject({ worker: 0, workers: 2, smtp_port: port });
      const before = records(server).filter((r) => r.msg === 'config reloaded').length;
      const reload = await api('POST', '/api/config/reload');
      expect(reload).toMatchObject({ status: 200, body: { reloaded: true, changed_plugins: [] } });
      // The workers' log lines come through the stderr pipe, which the HTTP answer can overtake: waited for, bounded.
      const byAdmin = (): Set<number> => new Set(records(server).filter((r) => r.msg === 'config reloaded').slice(before).map((r) => r.pid));
      await waitFor(() => byAdmin().size === 2, 'the admin reload logged in both workers', 10_000);
      expect(byAdmin()).toEqual(new Set(pids.values()));
      // An action that would reach one worker only is refused.
      const flush = await api('POST', '/api/queue/flush');
      expect(flush.status).toBe(409);
      expect((flush.body.error as { code: string }).code).toBe('SMTP_E_ADMIN_REQUEST');
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
    for (const dir of readdirSync(root.spool)) expect((await readLease(join(root.spool, dir))).record).toMatchObject({ released: true });
    const stopped = records(server).filter((r) => r.msg === 'stopped').map((r) => r.pid);
    expect(stopped).toHaveLength(2);
  });

  it('loses no acknowledged message when a worker is killed with SIGKILL under load; the other keeps serving; the restarted worker takes its spool back', async () => {
    const root = serverRoot({ server: 'workers = 2\n', storage: 'fsync = true\n' });
    const port = await freePort();
    const server = await startServerProcess(['--config', root.config], port);
    try {
      await waitFor(() => server.logs().includes('"workers ready"'), 'both workers listening', 30_000);
      const victim = workerPids(server).get(1)!;
      // Four connections in turn: node:cluster hands them out round-robin, two to each worker.
      const senders = ['s0', 's1', 's2', 's3'].map((tag) => python(TIMED_SENDER(port, 7, tag), 60_000).then((run) => ({ tag, run })));
      // Long enough for a backlog: Maildir delivery lags acceptance under this load.
      await new Promise((r) => setTimeout(r, 2500));
      const killedAt = Date.now() / 1000;
      process.kill(victim, 'SIGKILL');
      const runs = await Promise.all(senders);

      const acknowledged = runs.flatMap(({ tag, run }) => run.stdout.trim().split('\n').filter((line) => /^\d+ /.test(line)).map((line) => {
        const [i, at] = line.split(' ');
        return { mark: `MARK-${tag}-${i}-END`, at: Number(at) };
      }));
      const cut = runs.filter(({ run }) => run.stderr.includes('stopped'));
      const kept = runs.filter(({ run }) => !run.stderr.includes('stopped'));
      expect(cut.length, 'senders whose worker was killed').toBeGreaterThanOrEqual(1);
      expect(kept.length, 'senders on the surviving worker').toBeGreaterThanOrEqual(1);

      // The primary said what happened and restarted worker 1, which took its own directory back.
      await waitFor(() => workerPids(server).get(1) !== victim, 'worker 1 restarted', 20_000);
      const restarted = workerPids(server).get(1)!;
      const death = records(server).find((r) => r.msg.startsWith('worker 1 ') && r.signal === 'SIGKILL');
      expect(death).toMatchObject({ worker: 1, worker_pid: victim, exit_code: null, restart_in_ms: 100 });
      const leased = records(server).filter((r) => r.msg === 'spool directory leased' && r.worker === 1);
      expect(leased.map((r) => r.pid)).toEqual([victim, restarted]);
      expect(leased[1]!.dir).toBe(leased[0]!.dir);

      // The surviving worker answered while worker 1 was down (between the kill and the restarted worker's "listening").
      const backAt = records(server).find((r) => r.msg === 'listening' && r.pid === restarted)!.time / 1000;
      const duringRestart = acknowledged.filter(({ at }) => at > killedAt && at < backAt);
      expect(duringRestart.length, `acknowledged between the kill and the restart (${(backAt - killedAt).toFixed(2)} s)`).toBeGreaterThan(0);

      const missing = (): string[] => {
        const texts = maildirTexts(root.maildir).join('\n');
        return acknowledged.filter(({ mark }) => !texts.includes(mark)).map(({ mark }) => mark);
      };
      await waitFor(() => missing().length === 0, 'every acknowledged message in the Maildir', 30_000);
      expect(missing()).toEqual([]);
      // What the killed worker had acknowledged but not yet delivered, the restarted one delivered from the same spool.
      const opened = records(server).find((r) => r.msg === 'spool opened' && r.pid === restarted)!;
      const byRestarted = deliveringPids(root.maildir).filter((pid) => pid === restarted).length;
      // Maildir delivery (a file, its fsync and a directory fsync per message) lags acceptance (one fsync per batch): the killed worker leaves a backlog.
      expect(opened.live as number).toBeGreaterThan(0);
      expect(byRestarted).toBeGreaterThanOrEqual(opened.live as number);
      console.info(`workers SIGKILL test: ${acknowledged.length} acknowledged (${duringRestart.length} while worker 1 was down), all delivered; the restarted worker found ${String(opened.live)} left in its spool`);
    } finally {
      await server.stop();
    }
  });

  it('does not start when a worker cannot: the worker\'s coded error, exit status 1', async () => {
    const root = serverRoot({ server: 'workers = 2\n', plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libmissing.so"\n' });
    const run = await runClient(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), '--config', root.config, '--port', String(await freePort())], 60_000);
    expect(run.status, run.stderr).toBe(1);
    expect(run.stderr).toContain('error SMTP_E_PLUGIN_NOT_FOUND: ');
    expect(run.stderr).toContain('"the server did not start; stopping the other workers"');
  });
});
