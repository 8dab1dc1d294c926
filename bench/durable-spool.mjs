// Scenario 5: the durable spool. This server with the disk spool (segment
// log) and fsync before 250, with no plugins (as Postfix) and with the
// scenario-2 native chain, without and with group commit (group_commit_ms =
// 2: the messages that finish within 2 ms share one fdatasync), beside
// Postfix's smtpd (a private instance, its queue in a temporary folder on
// the same disk; 250 once cleanup has fsynced the queue file), under the
// same smtp-source load, peers interleaved. Every peer is measured warm, as
// a mail server runs: Postfix stays up across rounds, and this server, started
// fresh with an empty spool for each measurement, first takes WARMUP_MESSAGES
// unmeasured (its JIT compiling the path would otherwise count against it).
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { fmt, median, scaled } from './_support.mjs';
import { startCollector } from './_rsyslog.mjs';
import { postfixMissing, startPostfix } from './_postfix.mjs';
import { profileMarkdown } from './_profile.mjs';
import { chainEntries, externalPeer, hostConfig, hostPeer, interleaved, loadText, profileServer, smtpSource } from './_smtp.mjs';
import { chainBuilds } from './smtp-throughput.mjs';

const ROUNDS = scaled(5, 1);
const LOAD = { messages: scaled(6_000, 500), size: 1024 };
/** Unmeasured messages before each measurement, for every peer (Postfix's queue drains before its measurement starts). */
const WARMUP_MESSAGES = scaled(3_000, 500);
/** Issue 12: batching fsyncs is how this server earns five times Postfix's one fsync per message. */
const TARGET = 5;

function diskOf(path) {
  const df = spawnSync('df', ['--output=source,fstype', path], { encoding: 'utf8' });
  return df.status === 0 ? df.stdout.trim().split('\n')[1]?.trim().replace(/\s+/, ', ') : 'unknown';
}

export async function run() {
  const source = smtpSource();
  const title = 'Durable spool: fsync before 250, beside Postfix';
  if (source === null) return { title, skipped: ['smtp-source not found (apt-get install postfix)'] };
  const builds = await chainBuilds();
  const collector = await startCollector();
  const skipped = [];
  let postfix = null;
  try {
    const entries = chainEntries({ builds, sandboxed: false, collector });
    // Postfix runs no filters: the rows without plugins are the like-for-like comparison (the targets);
    // the chain shows what the plugins add on top of the fsyncs.
    const peers = [
      { ...hostPeer('this server, no plugins, durable spool', hostConfig('durable', { spool: 'durable' })), color: 'host', role: 'plain' },
      { ...hostPeer('this server, no plugins, durable spool, group commit 2 ms', hostConfig('group', { spool: 'durable', groupCommitMs: 2 })), color: 'host', role: 'group' },
      { ...hostPeer('this server, 3 plugins native, durable spool, group commit 2 ms', hostConfig('chain', { entries, spool: 'durable', groupCommitMs: 2 })), color: 'native', collector, expectRecords: true, role: 'chain' },
    ];
    const why = postfixMissing();
    if (why !== null) {
      skipped.push(`Postfix: ${why}`);
    } else {
      try {
        postfix = await startPostfix();
        peers.push({ ...externalPeer('Postfix smtpd, queue fsynced (discard delivery)', postfix), color: 'postfix', role: 'postfix' });
      } catch (error) {
        skipped.push(`Postfix: ${String(error.message).split('\n')[0]}`);
      }
    }
    const samples = await interleaved(source, peers, LOAD, ROUNDS, { warmupMessages: WARMUP_MESSAGES });
    const stats = new Map(peers.map((peer) => {
      const s = samples.get(peer.name);
      return [peer.name, { rate: median(s.map((x) => x.rate)), min: Math.min(...s.map((x) => x.rate)), max: Math.max(...s.map((x) => x.rate)), cpu: median(s.map((x) => x.cpuUsPerMessage)) }];
    }));
    const rateOf = (role) => {
      const peer = peers.find((p) => p.role === role);
      return peer ? stats.get(peer.name).rate : undefined;
    };
    const pf = rateOf('postfix');
    const targets = [
      ['group', 'with group commit'],
      ['plain', 'without group commit'],
    ].map(([role, what]) => ({
      scenario: '5',
      name: `durable spool ${what} (no plugins, as Postfix) at least ${TARGET}x Postfix's durable figure`,
      measured: pf === undefined ? 'Postfix not measured' : `${(rateOf(role) / pf).toFixed(2)}x`,
      met: pf === undefined ? null : rateOf(role) / pf >= TARGET,
    }));
    const profiles = [];
    if (targets[0].met === false) {
      const peer = peers.find((p) => p.role === 'group');
      const summary = await profileServer(source, peer, LOAD, { warmupMessages: WARMUP_MESSAGES });
      profiles.push({ what: peer.name, markdown: profileMarkdown(summary, `the server (${peer.name}, ${LOAD.messages.toLocaleString('en')} messages, \`node --cpu-prof\`), ${fmt(summary.result.rate)} msg/s while profiled`) });
    }
    const first = peers[0].name;
    return {
      title,
      description:
        `Spool and Postfix queue on the same file system (${diskOf(tmpdir())}, under ${tmpdir()}). ` +
        'This server: `storage.spool = "disk"`, `fsync = true`, `delivery.mode = "none"`, with no plugins (as Postfix here) and with ' +
        'the scenario-2 native chain (message-logger then logs each stored message). ' +
        'Postfix: `postfix -c DIR start` with a private `main.cf` (queue_directory and data_directory in the temporary folder, ' +
        'smtpd on 127.0.0.1:PORT, `mynetworks = 127.0.0.0/8`, every transport `discard:`, no peer-name lookup, logging to a file ' +
        'in the folder); its CPU is the master\'s and its children\'s, counted until the queue has drained. ' +
        `Every peer is measured warm: before each measurement it takes ${WARMUP_MESSAGES.toLocaleString('en')} unmeasured messages ` +
        '(this server starts fresh with an empty spool for each measurement; Postfix runs throughout and drains its queue before the measurement starts).',
      commands: [loadText(LOAD)],
      tables: [{
        header: ['peer', 'median msg/s', 'min', 'max', 'x Postfix', 'server CPU us/msg'],
        rows: peers.map((peer) => {
          const s = stats.get(peer.name);
          return [peer.name, fmt(s.rate), fmt(s.min), fmt(s.max), pf === undefined ? '-' : (s.rate / pf).toFixed(2), fmt(s.cpu)];
        }),
      }],
      notes: [`${ROUNDS} rounds, peers interleaved. Group commit gains ${(rateOf('group') / stats.get(first).rate).toFixed(2)}x here.${postfix ? ` ${postfix.description}.` : ''}`],
      targets,
      profiles,
      skipped,
      chart: {
        type: 'bars',
        title: 'Durable spool: msg/s with fsync before 250 (median)',
        unit: 'msg/s',
        groups: [{ label: '', bars: peers.map((peer) => ({ label: peer.name, value: stats.get(peer.name).rate, color: peer.color })) }],
      },
    };
  } finally {
    await postfix?.stop();
    await collector.stop();
  }
}
