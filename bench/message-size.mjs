// Scenario 4: message size. 1 KiB, 100 KiB and 10 MiB messages over 20
// connections (smtp-source -l SIZE), the scenario-2 peers (bare smtp-server,
// this server with no plugins and with the chain native and sandboxed, and
// Haraka with its JS chain), each size's peers interleaved round by round:
// throughput and the server's peak RSS (VmHWM in /proc/PID/status; a fresh
// process per measurement). With 20 messages in flight, the peak above the
// idle RSS divided by 20 is what one message in flight costs in memory.
import { fmt, median, scaled } from './_support.mjs';
import { startCollector } from './_rsyslog.mjs';
import { barePeer, chainEntries, harakaConfig, harakaMissing, harakaPeer, HARAKA_CHAIN, hostConfig, hostPeer, interleaved, loadText, measure, smtpSource } from './_smtp.mjs';
import { chainBuilds } from './smtp-throughput.mjs';

const ROUNDS = scaled(2, 1);
const SIZES = [
  { label: '1 KiB', size: 1024, messages: scaled(5_000, 1_000), sessions: 20 },
  { label: '100 KiB', size: 100 * 1024, messages: scaled(1_000, 200), sessions: 20 },
  { label: '10 MiB', size: 10 * 1024 * 1024, messages: scaled(40, 20), sessions: 20 },
  // Issue 12's memory target: 20 clients each sending 20 MB at once.
  { label: '20 MiB', size: 20 * 1024 * 1024, messages: 20, sessions: 20, rssTargetMB: 200 },
  // One connection: one message in flight at a time, so the peak above idle is one message's footprint.
  { label: '10 MiB, 1 connection', size: 10 * 1024 * 1024, messages: scaled(8, 4), sessions: 1 },
];
const MIB = 1024 * 1024;
/** The sandboxed spam filter's memory limit here: the default 64 MiB does not hold a 10 MiB message's copies (see the probe). */
const SANDBOX_MEMORY_MB = 256;
/** ...and its metadata value bound: message_body is one value, up to max_message_bytes (25 MiB). */
const SANDBOX_VALUE_BYTES_MAX = 25 * 1024 * 1024;

/** One load that may fail: the figures, or the reason smtp-source gave. */
async function tryLoad(source, peer, load) {
  try {
    const result = await measure(source, peer, load, { collector: peer.collector });
    return { ok: true, text: `passed (${result.rate.toFixed(1)} msg/s)` };
  } catch (error) {
    return { ok: false, text: `failed: \`${String(error.message).split('\n')[0].replace(/^smtp-source exited 1: \S+ /, '')}\`` };
  }
}

export async function run() {
  const source = smtpSource();
  const title = 'Message size: throughput and peak memory';
  if (source === null) return { title, skipped: ['smtp-source not found (apt-get install postfix)'] };
  const builds = await chainBuilds();
  const collector = await startCollector();
  const skipped = [];
  try {
    const chain = (sandboxed, spamLimits) => hostConfig(`size-${sandboxed ? 'wasm' : 'native'}`, { entries: chainEntries({ builds, sandboxed, collector, spamLimits }), spool: 'tmpfs' });
    // The sandboxed spam filter with its default memory limit (64 MiB), once, on the 10 MiB load.
    const probe = await tryLoad(source, { ...hostPeer('sandboxed chain, default limits', chain(true)), collector }, { messages: 40, size: 10 * MIB, sessions: 20 });
    const peers = [
      { ...barePeer('bare smtp-server (drain)'), color: 'bare', short: 'bare smtp-server' },
      { ...hostPeer('this server, no plugins, spool none', hostConfig('size-none')), color: 'host', short: 'this server, no plugins' },
      { ...hostPeer('this server, 3 plugins native, spool on tmpfs', chain(false)), color: 'native', collector, short: 'this server, 3 plugins native' },
      { ...hostPeer(`this server, 3 plugins sandboxed, spool on tmpfs, spam-filter memory_mb = ${SANDBOX_MEMORY_MB}`, chain(true, { memory_mb: SANDBOX_MEMORY_MB, metadata_value_bytes_max: SANDBOX_VALUE_BYTES_MAX })), color: 'sandboxed', collector, short: 'this server, 3 plugins sandboxed' },
    ];
    const harakaWhy = harakaMissing();
    if (harakaWhy === null) peers.push({ ...harakaPeer('Haraka, 3 JS plugins, discard', harakaConfig('size', HARAKA_CHAIN)), color: 'haraka', collector, short: 'Haraka, 3 JS plugins' });
    else skipped.push(`Haraka: ${harakaWhy}`);

    const results = [];
    for (const size of SIZES) {
      const samples = await interleaved(source, peers, { messages: size.messages, size: size.size, sessions: size.sessions }, ROUNDS);
      for (const peer of peers) {
        const s = samples.get(peer.name);
        const rate = median(s.map((x) => x.rate));
        const peak = Math.max(...s.map((x) => x.peakKiB)) / 1024;
        const idle = median(s.map((x) => x.idleKiB)) / 1024;
        const inFlightMiB = (Math.min(size.sessions, size.messages) * size.size) / MIB;
        results.push({ size, peer, rate, mbps: (rate * size.size) / MIB, peak, idle, ratio: (peak - idle) / inFlightMiB, cpu: median(s.map((x) => x.cpuUsPerMessage)) });
      }
    }
    const rows = results.map((r) => [
      r.size.label,
      r.peer.name,
      fmt(r.rate, r.rate < 100 ? 1 : 0),
      fmt(r.mbps, 1),
      fmt(r.cpu / 1000, 2),
      fmt(r.idle),
      fmt(r.peak),
      fmt(r.peak - r.idle),
      r.size.size >= MIB ? `${r.ratio.toFixed(2)}x` : '-',
    ]);
    const big = results.filter((r) => r.size.size >= MIB && r.size.sessions === 1);
    const targets = results
      .filter((r) => r.size.rssTargetMB !== undefined && r.peer.kind === 'host' && r.peer.color !== 'host')
      .map((r) => {
        const peakMB = (r.peak * MIB) / 1e6;
        return { scenario: '4', name: `${r.peer.short}, ${r.size.sessions} clients x ${r.size.label} at once: server peak RSS under ${r.size.rssTargetMB} MB`, measured: `${fmt(peakMB)} MB (${fmt(r.peak)} MiB)`, met: peakMB < r.size.rssTargetMB };
      });
    return {
      title,
      description:
        'The scenario-2 servers and configs, under `smtp-source` with each size: 20 connections (up to 20 messages in flight, each ' +
        'partly received), and for 10 MiB also one connection (one message at a time). Peak RSS is the server process\'s VmHWM after ' +
        'the load, the largest of the rounds; idle RSS is VmRSS before it. "x bytes in flight" is (peak - idle) divided by the size ' +
        'of the messages that can be in flight at once (20 x 10 MiB, or 1 x 10 MiB with one connection): with one connection, what ' +
        'one 10 MiB message costs in memory, in multiples of its size.',
      commands: SIZES.map((s) => loadText({ messages: s.messages, size: s.size, sessions: s.sessions })),
      targets,
      tables: [{ header: ['size', 'peer', 'median msg/s', 'MiB/s', 'server CPU ms/msg', 'idle RSS MiB', 'peak RSS MiB', 'peak - idle MiB', 'x bytes in flight'], rows }],
      notes: [
        `${ROUNDS} rounds per size, peers interleaved. The spool on tmpfs (/dev/shm) is not in the process's RSS.`,
        `With its default limits (\`memory_mb = 64\`), the sandboxed chain under the 10 MiB load (40 messages, 20 connections) ${probe.text}. ` +
          (probe.ok ? `The rows above still give the sandboxed spam filter \`memory_mb = ${SANDBOX_MEMORY_MB}\`.` : `The sandboxed spam filter above therefore runs with \`memory_mb = ${SANDBOX_MEMORY_MB}\` in its \`[plugins.plugin.limits]\`.`),
      ],
      skipped,
      charts: [
        {
          type: 'bars',
          title: 'Message size: throughput (MiB/s of message data, median)',
          unit: 'MiB/s',
          groups: SIZES.filter((size) => size.sessions > 1).map((size) => ({ label: `${size.label}, 20 connections`, bars: results.filter((r) => r.size === size).map((r) => ({ label: r.peer.short, value: r.mbps, color: r.peer.color })) })),
        },
        {
          type: 'bars',
          title: 'Memory for one 10 MiB message: peak RSS above idle, one connection (MiB; dashed: the message\'s size)',
          unit: 'MiB',
          reference: { value: 10, label: '10 MiB' },
          groups: [{ label: '', bars: big.map((r) => ({ label: r.peer.short, value: Math.max(0.1, r.peak - r.idle), color: r.peer.color })) }],
        },
      ],
    };
  } finally {
    await collector.stop();
  }
}
