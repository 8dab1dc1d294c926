// What recording the admin listener's metrics costs (issue 16: at most 1 us
// per hook call). Three measurements: (1) in this process, one hook event
// through HookRunner.run on a PluginManager holding the native read_set
// plugin, with and without the call statistics, interleaved round by round:
// the difference is the cost per recorded call; (2) the server under the
// scenario-2 load with the spam filter and rate limiter (native, no spool),
// [admin] on and off, interleaved: the difference in server CPU per message
// (every session, message and plugin call counted); (3) rendering /metrics
// with the plugins' counters filled.
import { silentLogger } from '../dist/src/log.js';
import { PluginManager } from '../dist/src/manager/plugin-manager.js';
import { ServerMetrics } from '../dist/src/ops/metrics.js';
import { backendsStopped } from '../dist/src/plugin/backends.js';
import { resolvePluginOptions } from '../dist/src/plugin/options.js';
import { HookRunner } from '../dist/src/server/hook-runner.js';
import { BUILD_DIR } from '../dist/src/paths.js';
import { buildExample, buildFixture, fmt, median, scaled } from './_support.mjs';
import { hostConfig, hostPeer, interleaved, loadText, pluginEntry, smtpSource } from './_smtp.mjs';

const ROUNDS = 7;
const CALLS_PER_ROUND = 200_000;
const SMTP_ROUNDS = scaled(3, 1);
const LOAD = { messages: scaled(20_000, 2_000), size: 1024 };
const SCRAPES = 50;
/** Issue 16. */
const TARGET_NS_PER_CALL = 1000;

async function hostOf(file, withMetrics) {
  const metrics = withMetrics ? new ServerMetrics({ plugins: () => manager.list(), queue: () => null }) : null;
  const manager = new PluginManager({ directory: BUILD_DIR, logger: silentLogger(), ...(metrics ? { callStats: metrics.calls } : {}) });
  await manager.loadPlugin(file, '{}', resolvePluginOptions({}));
  return { manager, metrics, runner: new HookRunner(manager, silentLogger()) };
}

/** Mean ns per event of `calls` events timed together. */
function meanNs(call, calls) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) call();
  return Number(process.hrtime.bigint() - t0) / calls;
}

export async function run() {
  const title = 'Metrics: the cost of recording them';
  const readSet = await buildFixture('read_set');
  const peers = [
    { name: 'metrics off', host: await hostOf(readSet.native, false) },
    { name: 'metrics on', host: await hostOf(readSet.native, true) },
  ];
  const fields = () => ({ a: 'sender@example.com' });
  const means = new Map(peers.map((peer) => [peer.name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const peer of peers) {
      const call = () => peer.host.runner.run('command_validated', fields);
      meanNs(call, 10_000);
      means.get(peer.name).push(meanNs(call, CALLS_PER_ROUND));
    }
  }
  // Each round's difference, so that a noisy round moves one sample only.
  const differences = means.get('metrics on').map((on, i) => on - means.get('metrics off')[i]);
  const perCall = median(differences);
  const on = peers[1].host;
  const recorded = [...on.metrics.calls.all()].reduce((sum, stats) => sum + stats.count, 0);
  if (recorded < ROUNDS * CALLS_PER_ROUND) throw new Error(`the metrics recorded ${recorded} calls, expected at least ${ROUNDS * CALLS_PER_ROUND}`);

  // A scrape with the counters of 16 plugins at 4 hooks each.
  const scrapeMetrics = new ServerMetrics({ plugins: () => [], queue: () => ({ depth: 10, oldestReceivedAt: new Date().toISOString(), held: 1, deferred: 2, delivering: 3, ready: 4 }) });
  for (let plugin = 0; plugin < 16; plugin++) {
    for (const hook of [0, 1, 2, 12]) for (let i = 0; i < 100; i++) scrapeMetrics.calls.of(`plugin-${plugin}`, hook).answered(i % 7 === 0 ? 'stop' : 'continue', i * 1e-6);
  }
  const scrapeMs = [];
  let bytes = 0;
  for (let i = 0; i < SCRAPES; i++) {
    const t0 = performance.now();
    bytes = (await scrapeMetrics.text()).length;
    scrapeMs.push(performance.now() - t0);
  }
  for (const peer of peers) await peer.host.manager.deinit();
  await backendsStopped();

  const tables = [
    {
      caption: 'One hook event, native `read_set` plugin, ns per event (mean of each round, median over rounds)',
      header: ['peer', 'ns per event', 'added by the metrics'],
      rows: [
        ['metrics off', fmt(median(means.get('metrics off'))), '-'],
        ['metrics on (verdict counter, latency histogram)', fmt(median(means.get('metrics on'))), fmt(perCall)],
      ],
    },
    {
      caption: '`GET /metrics` rendering, 16 plugins x 4 hooks with counters',
      header: ['median ms per scrape', 'bytes'],
      rows: [[fmt(median(scrapeMs), 2), bytes.toLocaleString('en')]],
    },
  ];
  const targets = [{ scenario: 'metrics', name: `recording a hook call's metrics costs at most ${TARGET_NS_PER_CALL} ns`, measured: `${fmt(perCall)} ns`, met: perCall <= TARGET_NS_PER_CALL }];
  const notes = [`${ROUNDS} rounds of ${CALLS_PER_ROUND.toLocaleString('en')} events per peer, interleaved; the added cost is the median of the per-round differences.`];

  const smtp = smtpSource();
  if (smtp !== null) {
    const [spam, rate] = await Promise.all([buildExample('spam_filter'), buildExample('rate_limiter')]);
    const entries = [
      pluginEntry({ name: 'spam-filter', build: spam, sandboxed: false, config: { spam_threshold: 5.0 } }),
      pluginEntry({ name: 'rate-limiter', build: rate, sandboxed: false, blocking: false, config: { backend: 'memory', max_per_sender_domain: 1_000_000_000, max_per_client_ip: 0 } }),
    ].join('\n');
    const smtpPeers = [hostPeer('[admin] off', hostConfig('metrics-off', { entries })), hostPeer('[admin] on (metrics recorded)', hostConfig('metrics-on', { entries, admin: true }))];
    const samples = await interleaved(smtp, smtpPeers, LOAD, SMTP_ROUNDS);
    const stat = (peer) => {
      const s = samples.get(peer.name);
      return { rate: median(s.map((x) => x.rate)), cpu: median(s.map((x) => x.cpuUsPerMessage)) };
    };
    const [off, onStat] = smtpPeers.map(stat);
    tables.push({
      caption: `The server with the spam filter and rate limiter (native, no spool) under ${loadText(LOAD)}`,
      header: ['peer', 'median msg/s', 'server CPU us/msg', 'added CPU us/msg'],
      rows: [
        [smtpPeers[0].name, fmt(off.rate), fmt(off.cpu), '-'],
        [smtpPeers[1].name, fmt(onStat.rate), fmt(onStat.cpu), fmt(onStat.cpu - off.cpu, 1)],
      ],
    });
    notes.push(`SMTP: ${SMTP_ROUNDS} rounds, peers interleaved, medians. Per message the server makes about 5 plugin calls (rate limiter at MAIL and RCPT, spam filter at message_filtered, and the hooks they do not handle cost nothing) and a handful of session counters; machine noise between rounds is of the same order as the difference.`);
  } else {
    notes.push('smtp-source not found (apt-get install postfix): the SMTP part is skipped.');
  }
  return {
    title,
    description:
      'Recording is on while `[admin] listen` is set. A plugin call then reads the clock twice and increments a verdict counter and one ' +
      'latency-histogram bucket in plain arrays (`src/ops/plugin-call-stats.ts`); prom-client objects are filled from them only when ' +
      '`/metrics` is read. Sessions, messages and deliveries are prom-client counters (a few per message).',
    commands: ['npm run bench -- metrics'],
    tables,
    notes,
    targets,
    profiles: [],
  };
}
