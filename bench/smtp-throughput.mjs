// Scenario 2: SMTP throughput for 1 KiB messages over 20 reused loopback
// connections (postfix's smtp-source -d -m 20000 -s 20 -l 1024), and the
// server's CPU per message, peers interleaved round by round: bare
// smtp-server draining to nothing; this server with no plugins; with the
// issue's chain (spam-filter, rate-limiter in memory with blocking = false,
// message-logger to a real rsyslogd), native and sandboxed; and Haraka (one
// process, discard queue, no DNS) with JS plugins doing the same work.
import { buildExample, fmt, median, scaled } from './_support.mjs';
import { startCollector } from './_rsyslog.mjs';
import { profileMarkdown } from './_profile.mjs';
import {
  barePeer, chainEntries, harakaConfig, harakaMissing, harakaPeer, HARAKA_CHAIN, hostConfig, hostPeer, interleaved, loadText, profileServer, smtpSource,
} from './_smtp.mjs';

/** Five rounds: the headline comparison, on a machine that may be shared. */
const ROUNDS = scaled(5, 1);
const LOAD = { messages: scaled(20_000, 2_000), size: 1024 };
/** Unmeasured messages before each measurement, for every peer, as in the durable-spool scenario: a mail server runs warm, and each peer starts fresh. */
const WARMUP_MESSAGES = scaled(3_000, 500);
/** Issue 12's targets. */
const TARGETS = { durableBare: 0.5, durableHaraka: 2, sandboxedNative: 0.8, noneNative: 0.85, noneSandboxed: 0.75 };
/** Profiled runs are shorter: the profile's shares settle well before 10,000 messages. */
const PROFILE_LOAD = { messages: scaled(10_000, 2_000), size: 1024 };

export async function chainBuilds() {
  const [spam, rate, logger] = await Promise.all([buildExample('spam_filter'), buildExample('rate_limiter'), buildExample('message_logger')]);
  return { spam, rate, logger };
}

export async function run() {
  const source = smtpSource();
  const title = 'SMTP throughput, 1 KiB messages, 20 reused connections';
  if (source === null) return { title, skipped: ['smtp-source not found (apt-get install postfix): nothing to load the servers with'] };
  const builds = await chainBuilds();
  const collector = await startCollector();
  const skipped = [];
  try {
    const chain = (sandboxed, spool) => hostConfig(`chain-${sandboxed ? 'wasm' : 'native'}-${spool}`, { entries: chainEntries({ builds, sandboxed, collector }), spool });
    const peers = [
      { ...barePeer('bare smtp-server (drain)'), color: 'bare' },
      { ...hostPeer('this server, no plugins, spool none', hostConfig('none')), color: 'host' },
      { ...hostPeer('this server, no plugins, spool on disk (fsync)', hostConfig('durable', { spool: 'durable' })), color: 'host' },
      { ...hostPeer('this server, 3 plugins native, spool on disk (fsync)', chain(false, 'durable')), color: 'native', collector, expectRecords: true, role: 'native' },
      { ...hostPeer('this server, 3 plugins sandboxed, spool on disk (fsync)', chain(true, 'durable')), color: 'sandboxed', collector, expectRecords: true, role: 'sandboxed' },
      { ...hostPeer('this server, 3 plugins native, spool none (logger idle)', chain(false, 'none')), color: 'native', collector, role: 'native-none' },
      { ...hostPeer('this server, 3 plugins sandboxed, spool none (logger idle)', chain(true, 'none')), color: 'sandboxed', collector, role: 'sandboxed-none' },
    ];
    const harakaWhy = harakaMissing();
    if (harakaWhy === null) {
      peers.push({ ...harakaPeer('Haraka, 3 JS plugins (spam, rate, syslog), discard', harakaConfig('chain', HARAKA_CHAIN)), color: 'haraka', collector, expectRecords: true, role: 'haraka' });
    } else {
      skipped.push(`Haraka: ${harakaWhy}`);
    }
    const samples = await interleaved(source, peers, LOAD, ROUNDS, { warmupMessages: WARMUP_MESSAGES });
    const stat = (peer) => {
      const s = samples.get(peer.name);
      const records = s.map((x) => x.recordsPerMessage).filter((x) => x !== undefined);
      return { rate: median(s.map((x) => x.rate)), min: Math.min(...s.map((x) => x.rate)), max: Math.max(...s.map((x) => x.rate)), cpu: median(s.map((x) => x.cpuUsPerMessage)), records: records.length ? median(records) : undefined };
    };
    const stats = new Map(peers.map((peer) => [peer.name, stat(peer)]));
    const byRole = (role) => peers.find((peer) => peer.role === role);
    const bare = stats.get(peers[0].name);
    const rateOf = (role) => (byRole(role) ? stats.get(byRole(role).name).rate : undefined);
    const ratio = (a, b) => (a === undefined || b === undefined ? undefined : a / b);

    const targets = [];
    const add = (name, value, limit) => targets.push({ scenario: '2', name, measured: value === undefined ? 'not measured' : `${value.toFixed(2)}x`, met: value === undefined ? null : value >= limit });
    // Issue 12: the chain as users run it (durable spool, fsync, group commit; the logger live), then without a spool.
    const DURABLE = 'spool on disk, fsync, group commit';
    const NONE = 'no spool, logger idle';
    add(`native chain (${DURABLE}) at least ${TARGETS.durableHaraka}x Haraka (same work in JS, no queue)`, ratio(rateOf('native'), rateOf('haraka')), TARGETS.durableHaraka);
    add(`native chain (${DURABLE}) at least ${TARGETS.durableBare}x bare smtp-server (which stores nothing)`, ratio(rateOf('native'), bare.rate), TARGETS.durableBare);
    add(`sandboxed chain (${DURABLE}) at least ${TARGETS.sandboxedNative}x the native chain`, ratio(rateOf('sandboxed'), rateOf('native')), TARGETS.sandboxedNative);
    add(`native chain (${NONE}) at least ${TARGETS.noneNative}x bare smtp-server`, ratio(rateOf('native-none'), bare.rate), TARGETS.noneNative);
    add(`sandboxed chain (${NONE}) at least ${TARGETS.noneSandboxed}x bare smtp-server`, ratio(rateOf('sandboxed-none'), bare.rate), TARGETS.noneSandboxed);

    const profiles = [];
    const missedRoles = new Set();
    // A missed chain is profiled with its spool and without (where the plugins' own share shows).
    if (targets[0].met === false || targets[1].met === false) missedRoles.add('native');
    if (targets[2].met === false) missedRoles.add('sandboxed');
    if (targets[3].met === false) missedRoles.add('native-none');
    if (targets[4].met === false) missedRoles.add('sandboxed-none');
    for (const role of missedRoles) {
      const peer = byRole(role);
      const summary = await profileServer(source, peer, PROFILE_LOAD);
      profiles.push({ what: peer.name, markdown: profileMarkdown(summary, `the server (${peer.name}) under the same load (${PROFILE_LOAD.messages.toLocaleString('en')} messages), \`node --cpu-prof\`, main thread (${summary.threads} thread profiles written), ${fmt(summary.result.rate)} msg/s while profiled`) });
    }
    // The bare server, for comparison with the profiles above.
    if (profiles.length > 0) {
      const summary = await profileServer(source, peers[0], PROFILE_LOAD);
      profiles.push({ what: `${peers[0].name}, for comparison`, markdown: profileMarkdown(summary, `bare smtp-server under the same load (${PROFILE_LOAD.messages.toLocaleString('en')} messages), ${fmt(summary.result.rate)} msg/s while profiled`) });
    }

    const rows = peers.map((peer) => {
      const s = stats.get(peer.name);
      return [peer.name, fmt(s.rate), fmt(s.min), fmt(s.max), (s.rate / bare.rate).toFixed(2), fmt(s.cpu), s.records === undefined ? '-' : s.records.toFixed(2)];
    });
    const noneNative = ratio(rateOf('native-none'), bare.rate);
    const noneSandboxed = ratio(rateOf('sandboxed-none'), bare.rate);
    return {
      title,
      description:
        'Each server runs in its own process (its CPU time read from `/proc/PID/stat`), started fresh for each measurement. ' +
        'The chain is the issue\'s: `spam-filter` (`{"spam_threshold": 5}`), `rate-limiter` (memory backend, `blocking = false`, ' +
        'a per-domain limit of 10^9 so that nothing is refused) and `message-logger` (its own blocking flag: a koffi pool thread ' +
        'native, its own worker sandboxed; granted and pointed at the bench\'s rsyslogd). message-logger handles `message_stored`, ' +
        'which fires only once a message is spooled; the "spool on disk" rows are the server as users run it: the segment-log ' +
        'spool in a temporary folder on the disk, `fsync = true`, group commit (`group_commit_ms = 0`: a commit arriving during an ' +
        'fdatasync shares the next), `delivery.mode = "none"` (stored durably, logged, then dropped). "spool none" rows ' +
        'keep nothing, and there the logger is loaded but never called. Haraka 3 runs single-process from `node_modules` with ' +
        '`bench/haraka/*.js`: rDNS answered locally (no DNS lookup), every recipient accepted, a keyword score over the whole ' +
        'message at `data_post`, a per-domain counter at `mail`, the built-in `queue/discard`, and one RFC 5424 record per message ' +
        'at `queue_ok` over TCP to the same rsyslogd; its log level is `error`, as this server\'s logger is silent. ' +
        '"log records per message" counts what reached rsyslogd.',
      commands: [loadText(LOAD)],
      tables: [{ header: ['peer', 'median msg/s', 'min', 'max', 'x bare', 'server CPU us/msg', 'log records per message'], rows }],
      notes: [
        `${ROUNDS} rounds, peers interleaved, every measurement from an empty spool and after ${fmt(WARMUP_MESSAGES)} unmeasured messages on the same server; collector: ${collector.description}. Without a spool the same chains reach ${noneNative?.toFixed(2) ?? '-'}x (native) and ${noneSandboxed?.toFixed(2) ?? '-'}x (sandboxed) of bare smtp-server, but then message-logger never runs. Haraka keeps no queue (discard): the durable rows do more work than it.`,
      ],
      targets,
      profiles,
      skipped,
      chart: {
        type: 'bars',
        title: 'SMTP throughput, 1 KiB messages, 20 connections (median msg/s)',
        unit: 'msg/s',
        groups: [{ label: '', bars: peers.map((peer) => ({ label: peer.name, value: stats.get(peer.name).rate, color: peer.color })) }],
      },
    };
  } finally {
    await collector.stop();
  }
}
