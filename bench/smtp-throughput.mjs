// Scenario: SMTP throughput for 1 KiB messages over reused loopback
// connections, with postfix's smtp-source as the load (smtp-source -d -m N
// -s 20 -l 1024), the peers interleaved round by round: bare smtp-server
// draining to nothing; this server with no plugins and with the spam filter
// native (storage.spool = "none", delivery.mode = "none": receive, run the
// hooks, drop); and with the durable spool (fsync before 250), with and
// without group commit. Reports messages/s and the server's CPU per message.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../dist/src/paths.js';
import { median } from './_support.mjs';

const ROUNDS = 3;
const SESSIONS = 20;
const FAST_MESSAGES = 20_000;
const DURABLE_MESSAGES = 3_000;
const TICKS_PER_SECOND = 100;

function smtpSource() {
  for (const path of ['/usr/sbin/smtp-source', '/usr/bin/smtp-source']) {
    if (spawnSync(path, ['-h'], { stdio: 'ignore' }).error === undefined) return path;
  }
  return null;
}

function hostConfig(name, { plugins, spool, groupCommitMs = 0 }) {
  const dir = mkdtempSync(join(tmpdir(), `bench-${name}-`));
  mkdirSync(join(dir, 'plugins'));
  const entries = plugins
    ? `[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "${join(PROJECT_ROOT, 'plugins', 'libspam_filter.so')}"\nconfig = '{"spam_threshold": 5.0}'\n`
    : '';
  writeFileSync(join(dir, 'config.toml'), [
    '[server]\nhost = "127.0.0.1"\nport = 0\nmax_clients = 200\n',
    `[storage]\nspool = "${spool ? 'disk' : 'none'}"\nspool_dir = "spool"\nfsync = true\ngroup_commit_ms = ${groupCommitMs}\n`,
    '[delivery]\nmode = "none"\n',
    `[plugins]\nenabled = true\ndirectory = "plugins"\n${entries}`,
  ].join('\n'));
  return join(dir, 'config.toml');
}

function cpuTicks(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

async function startChild(args) {
  const child = spawn(process.execPath, [join(PROJECT_ROOT, 'bench', '_server-child.mjs'), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((done, fail) => {
    child.stdout.once('data', (chunk) => done(Number(String(chunk).trim())));
    child.once('exit', (code) => fail(new Error(`server child exited ${code}`)));
  });
  return { child, port };
}

async function measure(source, args, messages) {
  const { child, port } = await startChild(args);
  const cpuBefore = cpuTicks(child.pid);
  const started = process.hrtime.bigint();
  const run = spawnSync(source, ['-d', '-m', String(messages), '-s', String(SESSIONS), '-l', '1024', '-f', 'a@example.com', '-t', 'b@example.com', `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 300_000 });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpuSeconds = (cpuTicks(child.pid) - cpuBefore) / TICKS_PER_SECOND;
  child.kill('SIGTERM');
  await new Promise((done) => child.once('exit', done));
  if (run.status !== 0) throw new Error(`smtp-source failed: ${run.stderr}`);
  return { rate: messages / seconds, cpuUsPerMessage: (cpuSeconds / messages) * 1e6 };
}

export async function run() {
  const source = smtpSource();
  if (source === null) {
    return { title: 'SMTP throughput', header: ['peer', 'result'], rows: [['all', 'skipped: smtp-source not found (apt-get install postfix)']] };
  }
  const peers = [
    ['bare smtp-server (drain)', ['bare'], FAST_MESSAGES],
    ['this server, no plugins, spool none', ['host', hostConfig('none', { plugins: false, spool: false })], FAST_MESSAGES],
    ['this server, spam filter native, spool none', ['host', hostConfig('spam', { plugins: true, spool: false })], FAST_MESSAGES],
    ['this server, spam filter, durable spool', ['host', hostConfig('durable', { plugins: true, spool: true })], DURABLE_MESSAGES],
    ['this server, spam filter, durable spool, group commit 2 ms', ['host', hostConfig('group', { plugins: true, spool: true, groupCommitMs: 2 })], DURABLE_MESSAGES],
  ];
  const samples = new Map(peers.map(([name]) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, args, messages] of peers) samples.get(name).push(await measure(source, args, messages));
  }
  const bare = median(samples.get(peers[0][0]).map((s) => s.rate));
  return {
    title: 'SMTP throughput, 1 KiB messages, 20 reused connections',
    header: ['peer', 'messages', 'median msg/s', 'min', 'max', 'x bare', 'server CPU us/msg'],
    rows: peers.map(([name, , messages]) => {
      const rates = samples.get(name).map((s) => s.rate);
      return [
        name,
        String(messages),
        median(rates).toFixed(0),
        Math.min(...rates).toFixed(0),
        Math.max(...rates).toFixed(0),
        (median(rates) / bare).toFixed(2),
        median(samples.get(name).map((s) => s.cpuUsPerMessage)).toFixed(0),
      ];
    }),
    notes: [`${source} -d -m N -s ${SESSIONS} -l 1024 -f a@example.com -t b@example.com 127.0.0.1:PORT; ${ROUNDS} interleaved rounds; each server in its own process; CPU from /proc/PID/stat.`],
  };
}
