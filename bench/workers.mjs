// [server] workers: the same config run as one process (workers = 1) and as
// a primary with two workers (workers = 2) on this 2-core machine, under the
// same smtp-source load (1 KiB messages, 20 reused connections), peers
// interleaved round by round. Two configs: no plugins with the spool on
// tmpfs (the CPU path that workers spread), and the native chain
// with the durable spool (fsync before 250, as users run it). Each server is
// the smtp-server command; its CPU is counted over the whole process tree
// (primary and workers), and smtp-source's own CPU beside it: the load
// generator shares the two cores with the server. The controls (bare
// smtp-server under node:cluster, Haraka with nodes = 2) show what a second
// process gains the engine and the JS peer on the same two cores.
import { fmt, median, scaled } from './_support.mjs';
import { startCollector } from './_rsyslog.mjs';
import { barePeer, chainEntries, commandPeer, harakaConfig, harakaMissing, harakaPeer, HARAKA_CHAIN, hostConfig, interleaved, loadText, smtpSource } from './_smtp.mjs';
import { chainBuilds } from './smtp-throughput.mjs';

const ROUNDS = scaled(5, 1);
const LOAD = { messages: scaled(20_000, 2_000), size: 1024 };
/** Before each measurement, unmeasured: every worker's start-up and JIT warm-up would otherwise count against workers = 2 twice. */
const WARMUP_MESSAGES = scaled(4_000, 1_000);
/** Issue 17: two workers on two cores at least this many times one process. */
const TARGET = 1.6;

export async function run() {
  const source = smtpSource();
  const title = '[server] workers: one process and two workers';
  if (source === null) return { title, skipped: ['smtp-source not found (apt-get install postfix): nothing to load the servers with'] };
  const builds = await chainBuilds();
  const collector = await startCollector();
  try {
    const configs = [
      { key: 'tmpfs', label: 'no plugins, spool on tmpfs (no fsync)', options: { spool: 'tmpfs' } },
      { key: 'chain', label: '3 plugins native, spool on disk (fsync)', options: { spool: 'durable', entries: chainEntries({ builds, sandboxed: false, collector }) }, collector },
    ];
    const peers = configs.flatMap(({ key, label, options, collector: logs }) => [1, 2].map((workers) => ({
      ...commandPeer(`${label}, workers = ${workers}`, hostConfig(`workers-${key}-${workers}`, { ...options, workers }), workers),
      color: workers === 1 ? 'host' : 'native',
      key,
      workers,
      ...(logs ? { collector: logs } : {}),
    })));
    // The controls: the same split of the same two cores for the bare engine and for Haraka (nodes = 2 against one process).
    const controls = [1, 2].map((workers) => ({ ...barePeer(`control: bare smtp-server (drain), ${workers === 1 ? 'one process' : 'node:cluster, 2 workers'}`, workers), color: 'bare', key: 'bare', workers }));
    const harakaWhy = harakaMissing();
    if (harakaWhy === null) {
      controls.push(...[1, 2].map((workers) => ({
        ...harakaPeer(`control: Haraka, 3 JS plugins, ${workers === 1 ? 'nodes = 0 (one process)' : 'nodes = 2'}`, harakaConfig(`workers-${workers}`, HARAKA_CHAIN), workers === 1 ? 0 : 2),
        color: 'haraka',
        key: 'haraka',
        workers,
        collector,
      })));
    }
    peers.push(...controls);
    const samples = await interleaved(source, peers, LOAD, ROUNDS, { warmupMessages: WARMUP_MESSAGES });
    const stat = (peer) => {
      const s = samples.get(peer.name);
      return {
        rate: median(s.map((x) => x.rate)),
        min: Math.min(...s.map((x) => x.rate)),
        max: Math.max(...s.map((x) => x.rate)),
        cpu: median(s.map((x) => x.cpuUsPerMessage)),
        loadCpu: median(s.map((x) => x.loadCpuUsPerMessage)),
        peakKiB: median(s.map((x) => x.peakKiB)),
        // Per rank (busiest process first), the median over rounds.
        busy: Array.from({ length: Math.max(...s.map((x) => x.busyProcesses?.length ?? 0)) }, (_, i) => median(s.map((x) => x.busyProcesses?.[i] ?? 0))),
      };
    };
    const stats = new Map(peers.map((peer) => [peer.name, stat(peer)]));
    const of = (key, workers) => stats.get(peers.find((peer) => peer.key === key && peer.workers === workers).name);
    const rows = peers.map((peer) => {
      const s = stats.get(peer.name);
      const one = of(peer.key, 1);
      return [peer.name, fmt(s.rate), fmt(s.min), fmt(s.max), (s.rate / one.rate).toFixed(2), fmt(s.cpu), fmt(s.loadCpu), fmt((s.cpu + s.loadCpu) * s.rate / 1e6 * 100), s.busy.map((p) => fmt(p)).join(' + ') || '-', fmt(s.peakKiB / 1024)];
    });
    const targets = configs.map(({ key, label }) => {
      const ratio = of(key, 2).rate / of(key, 1).rate;
      return { scenario: 'workers', name: `${label}: workers = 2 at least ${TARGET}x workers = 1`, measured: `${ratio.toFixed(2)}x`, met: ratio >= TARGET };
    });
    const notes = configs.map(({ key, label }) => {
      const one = of(key, 1);
      const two = of(key, 2);
      // Two cores: what the server and smtp-source use together bounds the rate.
      const busy = (s) => ((s.cpu + s.loadCpu) * s.rate) / 1e6;
      // If two workers cost per message what one does, the two cores bound the rate at 2 / (cores one worker and smtp-source use).
      const ceiling = 2 / busy(one);
      return `${label}: workers = 1 ${fmt(one.rate)} msg/s using ${busy(one).toFixed(2)} cores (server ${fmt(one.cpu)} us/msg + smtp-source ${fmt(one.loadCpu)} us/msg); workers = 2 ${fmt(two.rate)} msg/s using ${busy(two).toFixed(2)} cores (server ${fmt(two.cpu)} + smtp-source ${fmt(two.loadCpu)} us/msg). Two cores shared with the load generator cap workers = 2 at ${ceiling.toFixed(2)}x even if a message cost no more CPU with two workers; it cost ${(((two.cpu + two.loadCpu) / (one.cpu + one.loadCpu) - 1) * 100).toFixed(0)}% more (server and smtp-source together).`;
    });
    for (const key of ['bare', 'haraka']) {
      if (!peers.some((peer) => peer.key === key)) continue;
      const one = of(key, 1);
      const two = of(key, 2);
      notes.push(`Control, ${key === 'bare' ? 'bare smtp-server under node:cluster' : 'Haraka nodes = 2'}: ${(two.rate / one.rate).toFixed(2)}x one process, ${fmt(one.cpu)} -> ${fmt(two.cpu)} us of server CPU per message (${(((two.cpu / one.cpu) - 1) * 100).toFixed(0)}% more).`);
    }
    if (harakaWhy !== null) notes.push(`No Haraka control: ${harakaWhy}.`);
    return {
      title,
      description:
        'Each peer is the `smtp-server` command on a generated config, started fresh for each measurement; with `workers = 2` it is a ' +
        'primary that forks two workers sharing the listener (node:cluster hands connections out in turn: smtp-source\'s 20 connections, ' +
        'opened once, split 10 and 10), each with its own plugins and its own spool directory below `spool_dir`. "server CPU" is ' +
        'utime + stime of the whole process tree (`/proc/PID/task/*/children`, primary and workers) per message; "smtp-source CPU" is the ' +
        'load generator\'s own, which runs on the same two cores. `delivery.mode = "none"`. The chain is scenario 2\'s (spam-filter, ' +
        'rate-limiter in memory with blocking = false, message-logger to rsyslogd): each worker has its own instances, so a rate limit ' +
        'without [cluster] redis counts per worker. The controls split the same two cores the same way: bare smtp-server (draining) ' +
        'as one process and as a node:cluster primary with two workers, and Haraka with the same three JS plugins as scenario 2 ' +
        'with `nodes = 0` (one process) and `nodes = 2`. "each busy process" is the CPU of every process of the tree that used at ' +
        'least 5% of a core during the load, busiest first: is the work spread over both cores?',
      commands: [loadText(LOAD)],
      tables: [{ header: ['peer', 'median msg/s', 'min', 'max', 'x one process', 'server CPU us/msg (tree)', 'smtp-source CPU us/msg', 'both, % of one core', 'each busy process, % of one core', 'peak RSS MiB (tree)'], rows }],
      notes: [`${ROUNDS} rounds, peers interleaved, every measurement from an empty spool, after ${WARMUP_MESSAGES.toLocaleString('en')} unmeasured messages on the same server.`, ...notes],
      targets,
      chart: {
        type: 'bars',
        title: 'workers = 1 and 2, 1 KiB messages, 20 connections (median msg/s)',
        unit: 'msg/s',
        groups: [{ label: '', bars: peers.map((peer) => ({ label: peer.name, value: stats.get(peer.name).rate, color: peer.color })) }],
      },
    };
  } finally {
    await collector.stop();
  }
}
