// Shared by the SMTP scenarios: the servers under test (bare smtp-server,
// this server on a generated config, Haraka on a generated config dir), each
// in its own process, and postfix's smtp-source as the load. A measurement
// starts a fresh server, runs one load, reads the server's CPU time
// (/proc/PID/stat) and peak RSS (VmHWM in /proc/PID/status), and stops it.
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, isAbsolute } from 'node:path';
import { PROJECT_ROOT } from '../dist/src/paths.js';
import { accepts, cpuTicks, findTool, freePort, processTree, statusKiB, TICKS_PER_SECOND, treeCpuTicks, treeStatusKiB, waitedChildrenTicks, waitFor } from './_support.mjs';

export const SESSIONS = 20;
const SERVER_CHILD = join(PROJECT_ROOT, 'bench', '_server-child.mjs');
/** The `smtp-server` command itself, for peers that need what only it does (workers). */
const SERVER_COMMAND = join(PROJECT_ROOT, 'bin', 'smtp-server.js');
const HARAKA_BIN = join(PROJECT_ROOT, 'node_modules', 'Haraka', 'bin', 'haraka');
const HARAKA_PLUGINS = join(PROJECT_ROOT, 'bench', 'haraka');
/** tmpfs, where a spool that must exist (for message_stored) costs no disk I/O; the temporary folder where there is none. */
const TMPFS = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
/** Every temporary folder a scenario made; removed by cleanup(). */
const made = [];

export function tempDir(prefix, base = tmpdir()) {
  const dir = mkdtempSync(join(base, prefix));
  made.push(dir);
  return dir;
}

export function cleanup() {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
}

export function smtpSource() {
  return findTool('smtp-source', ['/usr/sbin/smtp-source', '/usr/bin/smtp-source']);
}

/** The smtp-source command line the scenarios run (PORT filled in). */
export function loadCommand({ messages, size = 1024, sessions = SESSIONS }, port = 'PORT') {
  return ['-d', '-m', String(messages), '-s', String(sessions), '-l', String(size), '-f', 'a@example.com', '-t', 'b@example.com', `127.0.0.1:${port}`];
}

export const loadText = (load) => `smtp-source ${loadCommand(load).join(' ')}`;

/** Why Haraka cannot run here, or null when it can. */
export function harakaMissing() {
  return existsSync(HARAKA_BIN) ? null : 'node_modules/Haraka is not installed (npm install: it is a devDependency)';
}

const toml = (value) => JSON.stringify(value);

/**
 * One [[plugins.plugin]] entry. `build` is { native, wasm } from buildFixture;
 * `sandboxed` picks which one runs.
 */
export function pluginEntry({ name, build, sandboxed, config = {}, blocking, allowConnect = [], limits }) {
  return [
    '[[plugins.plugin]]',
    `name = ${toml(name)}`,
    sandboxed ? `wasm = ${toml(build.wasm)}` : `library = ${toml(build.native)}`,
    `sandbox = ${sandboxed}`,
    `config = ${toml(JSON.stringify(config))}`,
    blocking === undefined ? '' : `blocking = ${blocking}`,
    allowConnect.length > 0 ? `allow_connect = ${toml(allowConnect)}` : '',
    limits ? `[plugins.plugin.limits]\n${Object.entries(limits).map(([k, v]) => `${k} = ${v}`).join('\n')}` : '',
  ].filter(Boolean).join('\n') + '\n';
}

/**
 * The issue's plugin chain: spam-filter, rate-limiter (memory backend,
 * blocking = false) and message-logger (to the collector; its own flag makes
 * it blocking: a koffi pool thread native, its own worker sandboxed).
 */
export function chainEntries({ builds, sandboxed, collector, spamLimits }) {
  return [
    pluginEntry({ name: 'spam-filter', build: builds.spam, sandboxed, config: { spam_threshold: 5.0 }, limits: spamLimits }),
    pluginEntry({ name: 'rate-limiter', build: builds.rate, sandboxed, blocking: false, config: { backend: 'memory', max_per_sender_domain: 1_000_000_000, max_per_client_ip: 0 } }),
    pluginEntry({
      name: 'message-logger',
      build: builds.logger,
      sandboxed,
      allowConnect: [collector.address],
      config: { collector: collector.address, hostname: 'bench.localdomain', connect_timeout_ms: 200, send_timeout_ms: 200, retry_ms: 1000 },
    }),
  ].join('\n');
}

/** config.toml path -> its spool folder: emptied before every measurement. */
const spoolDirs = new Map();

/**
 * A config.toml for this server in a temporary folder. spool: "none" (no
 * copy kept, message_stored never fires), "tmpfs" (the disk spool on
 * /dev/shm without fsync: message_stored fires, no disk I/O) or "durable"
 * (the disk spool in the temporary folder, fsync before 250). Every
 * measurement of it starts from an empty spool (measure() empties it).
 * `admin`: with the admin listener, so every session, message and plugin
 * call is counted for /metrics. `workers`: [server] workers (run it with
 * commandPeer: only the smtp-server command forks workers).
 */
export function hostConfig(name, { entries = '', spool = 'none', groupCommitMs = 0, admin = false, workers = 1 } = {}) {
  const dir = tempDir(`bench-${name}-`);
  mkdirSync(join(dir, 'plugins'));
  const spoolDir = spool === 'tmpfs' ? tempDir(`bench-spool-${name}-`, TMPFS) : join(dir, 'spool');
  spoolDirs.set(join(dir, 'config.toml'), spoolDir);
  // The plugin builds live in their own folders (the build cache): those are trusted, as an admin would list /opt/smtp-plugins.
  const trusted = [...new Set([...entries.matchAll(/^(?:library|wasm|component) = (".*")$/gm)].map((m) => JSON.parse(m[1])).filter(isAbsolute).map(dirname))];
  writeFileSync(join(dir, 'config.toml'), [
    `[server]\nhost = "127.0.0.1"\nport = 0\nmax_clients = 200\nhostname = "bench.localdomain"\n${workers === 1 ? '' : `workers = ${workers}\n`}`,
    `[storage]\nspool = "${spool === 'none' ? 'none' : 'disk'}"\nspool_dir = ${toml(spoolDir)}\nfsync = ${spool === 'durable'}\ngroup_commit_ms = ${groupCommitMs}\n`,
    '[delivery]\nmode = "none"\n',
    `[plugins]\nenabled = true\ndirectory = "plugins"\ntrusted_directories = ${toml(trusted)}\n\n${entries}`,
    // The admin listener on: metrics are recorded (nothing scrapes them during a measurement).
    admin ? '[admin]\nlisten = "127.0.0.1:0"\ntoken = "bench-admin-token-0123456789"\n' : '',
  ].join('\n'));
  return join(dir, 'config.toml');
}

/** A Haraka config dir: Haraka's own defaults, then the bench's plugins and a port chosen at start. */
export function harakaConfig(name, plugins) {
  const dir = tempDir(`bench-haraka-${name}-`);
  mkdirSync(join(dir, 'plugins'));
  const defaults = join(PROJECT_ROOT, 'node_modules', 'Haraka', 'config');
  mkdirSync(join(dir, 'config'));
  for (const file of readdirSync(defaults, { withFileTypes: true })) {
    if (file.isFile()) copyFileSync(join(defaults, file.name), join(dir, 'config', file.name));
  }
  for (const plugin of plugins.filter((p) => p.startsWith('bench_'))) copyFileSync(join(HARAKA_PLUGINS, `${plugin}.js`), join(dir, 'plugins', `${plugin}.js`));
  writeFileSync(join(dir, 'config', 'plugins'), `${plugins.join('\n')}\n`);
  writeFileSync(join(dir, 'config', 'me'), 'bench.localdomain\n');
  // Logging at error only, as this server runs with a silent logger; no TLS (no key here).
  writeFileSync(join(dir, 'config', 'log.ini'), '[main]\nlevel=error\n');
  rmSync(join(dir, 'config', 'tls.ini'), { force: true });
  return dir;
}

/** Haraka's plugin list for the chain: rDNS answered locally, the three JS peers, the discard queue. */
export const HARAKA_CHAIN = ['bench_accept', 'bench_rate', 'bench_spam', 'queue/discard', 'bench_syslog'];
/** The same work as this server's chain without a spool, where message-logger never runs: no log record. */
export const HARAKA_CHAIN_NO_LOG = ['bench_accept', 'bench_rate', 'bench_spam', 'queue/discard'];
export const HARAKA_BARE = ['bench_accept', 'queue/discard'];

/** Peer helpers: what a scenario lists and measure() starts. */
/** `workers` > 1: the bare engine under node:cluster (the control for [server] workers). */
export const barePeer = (name, workers = 1) => ({ name, kind: 'bare', workers });
export const hostPeer = (name, config) => ({ name, kind: 'host', config });
/** `nodes`: Haraka's smtp.ini nodes (0 = one process; N = a cluster master and N workers). */
export const harakaPeer = (name, dir, nodes = 0) => ({ name, kind: 'haraka', dir, nodes });
/** This server run as the `smtp-server` command (its logs at info on a pipe); `workers` as in its config: measured over the whole process tree. */
export const commandPeer = (name, config, workers = 1) => ({ name, kind: 'command', config, workers });

/** Starts a peer's server; resolves once it accepts connections. */
export async function startServer(peer, { cpuProfDir, collector } = {}) {
  const prof = cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [];
  if (peer.kind === 'haraka') {
    const port = await freePort();
    // nodes=0: one process (Haraka's default of 1 forks a cluster worker beside the master).
    const nodes = peer.nodes ?? 0;
    writeFileSync(join(peer.dir, 'config', 'smtp.ini'), `listen=127.0.0.1:${port}\nnodes=${nodes}\n`);
    const child = spawn(process.execPath, [...prof, HARAKA_BIN, '-c', peer.dir], {
      cwd: peer.dir,
      env: { ...process.env, YES_REALLY_DO_DISCARD: '1', BENCH_SYSLOG_PORT: String(collector?.port ?? 9) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let errors = '';
    child.stderr.on('data', (chunk) => (errors = (errors + chunk).slice(-4000)));
    const exited = new Promise((done) => child.once('exit', done));
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`Haraka exited ${child.exitCode}: ${errors}`);
      return accepts(port);
    }, 30_000, 'Haraka');
    // With nodes, every worker must be listening before smtp-source opens its connections (node:cluster hands them to listening workers only).
    if (nodes > 0) await new Promise((done) => setTimeout(done, 2_000));
    return { pid: child.pid, port, child, exited, signal: 'SIGTERM', tree: nodes > 0 };
  }
  if (peer.kind === 'command') {
    const port = await freePort();
    const child = spawn(process.execPath, [...prof, SERVER_COMMAND, '--config', peer.config, '--port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...peer.env } });
    let errors = '';
    let ready = false;
    // With workers, the primary says when every worker listens: smtp-source opens its connections once, at the start.
    const readyLine = peer.workers > 1 ? '"msg":"workers ready"' : '"msg":"listening"';
    child.stderr.on('data', (chunk) => {
      errors = (errors + chunk).slice(-8000);
      ready ||= errors.includes(readyLine);
    });
    const exited = new Promise((done) => child.once('exit', done));
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`${peer.name}: smtp-server exited ${child.exitCode}: ${errors}`);
      return ready && accepts(port);
    }, 60_000, peer.name);
    return { pid: child.pid, port, child, exited, signal: 'SIGTERM', tree: true };
  }
  const args = peer.kind === 'bare' ? ['bare'] : ['host', peer.config];
  // peer.serverChild: another build's bench/_server-child.mjs, for an A/B run against it.
  const workers = peer.kind === 'bare' ? (peer.workers ?? 1) : 1;
  const child = spawn(process.execPath, [...prof, peer.serverChild ?? SERVER_CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...peer.env, BENCH_WORKERS: String(workers) } });
  let errors = '';
  child.stderr.on('data', (chunk) => (errors = (errors + chunk).slice(-4000)));
  const exited = new Promise((done) => child.once('exit', done));
  const port = await new Promise((done, fail) => {
    child.stdout.once('data', (chunk) => done(Number(String(chunk).trim())));
    child.once('exit', (code) => fail(new Error(`${peer.name}: server child exited ${code}: ${errors}`)));
  });
  return { pid: child.pid, port, child, exited, signal: 'SIGTERM', tree: workers > 1 };
}

export async function stopServer(server) {
  server.child.kill(server.signal);
  const timer = setTimeout(() => server.child.kill('SIGKILL'), 10_000);
  await server.exited;
  clearTimeout(timer);
}

/** Runs smtp-source; resolves with the wall time. Bounded by `timeoutMs`. */
export function runLoad(source, port, load, timeoutMs = 180_000) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(source, loadCommand(load, port), { stdio: ['ignore', 'ignore', 'pipe'] });
    let errors = '';
    child.stderr.on('data', (chunk) => (errors = (errors + chunk).slice(-2000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0) reject(new Error(`smtp-source exited ${code ?? signal}: ${errors.trim()}`));
      else resolve(seconds);
    });
  });
}

/**
 * One measurement: a fresh server, one load, then its figures. `collector`
 * (when the chain logs) gives the records that arrived per message.
 * `warmupMessages`: an unmeasured load of that many messages first, so that
 * each process's start-up and JIT warm-up are not counted (with workers,
 * every worker pays them).
 */
export async function measure(source, peer, load, { collector, expectRecords = false, cpuProfDir, warmupMessages = 0 } = {}) {
  if (peer.kind === 'external') return measureExternal(source, peer, load, warmupMessages);
  // A fresh start: what an earlier round left spooled must not be worked off during this one.
  const spoolDir = peer.kind === 'host' || peer.kind === 'command' ? spoolDirs.get(peer.config) : undefined;
  if (spoolDir !== undefined) rmSync(spoolDir, { recursive: true, force: true });
  const server = await startServer(peer, { collector, cpuProfDir });
  try {
    await new Promise((r) => setTimeout(r, 200));
    if (warmupMessages > 0) await runLoad(source, server.port, { ...load, messages: warmupMessages });
    // A command peer may be several processes (a primary and its workers): all of them count.
    const ticks = server.tree ? treeCpuTicks : cpuTicks;
    const kib = server.tree ? treeStatusKiB : statusKiB;
    const idleKiB = kib(server.pid, 'VmRSS');
    const recordsBefore = collector?.received() ?? 0;
    const cpuBefore = ticks(server.pid);
    const sharesBefore = ownTicksByProcess(server.pid);
    const loadBefore = waitedChildrenTicks();
    const seconds = await runLoad(source, server.port, load);
    const cpuSeconds = (ticks(server.pid) - cpuBefore) / TICKS_PER_SECOND;
    const busyProcesses = processShares(sharesBefore, ownTicksByProcess(server.pid), seconds);
    // smtp-source has exited and been waited for: its CPU time is now in this process's children's total.
    const loadCpuSeconds = (waitedChildrenTicks() - loadBefore) / TICKS_PER_SECOND;
    const peakKiB = kib(server.pid, 'VmHWM');
    const records = collector ? (expectRecords ? await collector.waitForReceived(recordsBefore + load.messages, 3_000) : collector.received()) - recordsBefore : undefined;
    return {
      rate: load.messages / seconds,
      seconds,
      cpuUsPerMessage: (cpuSeconds / load.messages) * 1e6,
      loadCpuUsPerMessage: (loadCpuSeconds / load.messages) * 1e6,
      idleKiB,
      peakKiB,
      recordsPerMessage: records === undefined ? undefined : records / load.messages,
      busyProcesses,
    };
  } finally {
    await stopServer(server);
  }
}

/** Each live process of the tree of `pid`: its own CPU ticks. */
function ownTicksByProcess(pid) {
  const ticks = new Map();
  for (const each of processTree(pid)) {
    try {
      ticks.set(each, cpuTicks(each));
    } catch {
      // It ended meanwhile.
    }
  }
  return ticks;
}

/** How busy each process of a tree was over `seconds`, in % of one core, busiest first (those under 5% left out): is the work spread over the cores? */
function processShares(before, after, seconds) {
  const shares = [];
  for (const [pid, ticks] of after) {
    const percent = ((ticks - (before.get(pid) ?? 0)) / TICKS_PER_SECOND / seconds) * 100;
    if (percent >= 5) shares.push(percent);
  }
  return shares.sort((a, b) => b - a);
}

/** A server that runs across measurements (Postfix): its own CPU counter, no RSS (several processes). */
async function measureExternal(source, peer, load, warmupMessages = 0) {
  if (warmupMessages > 0) {
    // Warmed as the servers this one is compared with; what the warm-up queued is gone before the measurement.
    await runLoad(source, peer.server.port, { ...load, messages: warmupMessages });
    await peer.server.drained?.();
  }
  const cpuBefore = peer.server.cpuTicks();
  const seconds = await runLoad(source, peer.server.port, load);
  // What is still queued is delivered (discarded) before the next peer runs, and its CPU counted.
  await peer.server.drained?.();
  const cpuSeconds = (peer.server.cpuTicks() - cpuBefore) / TICKS_PER_SECOND;
  return { rate: load.messages / seconds, seconds, cpuUsPerMessage: (cpuSeconds / load.messages) * 1e6 };
}

export const externalPeer = (name, server) => ({ name, kind: 'external', server });

/**
 * Runs every peer once per round, interleaved, each round starting one peer
 * later (A B C, B C A, C A B, ...), so that no peer always follows the same
 * one (a durable peer's disk writeback, a logging peer's collector backlog)
 * or always runs first; returns samples by peer name.
 */
export async function interleaved(source, peers, load, rounds, options = {}) {
  const samples = new Map(peers.map((peer) => [peer.name, []]));
  // A short unrecorded run first, so that the first recorded one does not pay for cold caches.
  const first = peers[0].load ?? load;
  await measure(source, peers[0], { ...first, messages: Math.min(2_000, Math.ceil(first.messages / 10)) }, { ...options, collector: peers[0].collector });
  return moreRounds(source, peers, load, rounds, samples, options);
}

/**
 * `rounds` more rounds into `samples` (by peer name, as interleaved returns
 * them), continuing interleaved's order: the first starts where the last
 * recorded round left off.
 */
export async function moreRounds(source, peers, load, rounds, samples, options = {}) {
  const done = samples.get(peers[0].name).length;
  for (let round = done; round < done + rounds; round++) {
    const shift = round % peers.length;
    for (const peer of [...peers.slice(shift), ...peers.slice(0, shift)]) {
      samples.get(peer.name).push(await measure(source, peer, peer.load ?? load, { ...options, collector: peer.collector, expectRecords: peer.expectRecords }));
    }
  }
  return samples;
}

/** One more measurement of `peer` under `node --cpu-prof`; the summary of its main thread's profile. */
export async function profileServer(source, peer, load, options = {}) {
  const { profileIn } = await import('./_profile.mjs');
  const dir = tempDir('bench-cpuprof-');
  const result = await measure(source, peer, load, { ...options, collector: peer.collector, expectRecords: peer.expectRecords, cpuProfDir: dir });
  return { ...profileIn(dir), result };
}
