// Scenario 1: what one hook event costs the server, per plugin, median and
// p99 in ns: building the event's context from its keys (encoding them once),
// running the chain through the manager, and reading the verdict back, as
// the server pays it (HookRunner.run on a PluginManager holding the plugin).
// Peers: a plain JS function doing the same work on the same keys (no
// context at all); the native plugin (koffi); the same source sandboxed in
// the event loop's thread (wasm, deadline on); sandboxed with a socket grant
// (allow_connect: the plugin then runs in its own worker thread, each call
// awaited); and, for read-one-set-one, a JavaScript component. Hooks: read
// one key and set one (test/fixtures/plugins/read_set.zig), and the spam
// filter (plugins/spam_filter.zig) on the server's message context with a
// 1 KiB body, once scoring it and once for a whitelisted sender (the filter
// reads one key and sets one without scanning: what is left is the host's
// part). Each call is timed on its own (performance.now(), whose own cost,
// measured on an empty call, is subtracted); peers interleave round by round.
import { join } from 'node:path';
import { silentLogger } from '../dist/src/log.js';
import { PluginManager } from '../dist/src/manager/plugin-manager.js';
import { backendsStopped } from '../dist/src/plugin/backends.js';
import { resolvePluginOptions } from '../dist/src/plugin/options.js';
import { HookRunner } from '../dist/src/server/hook-runner.js';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { BUILD_DIR, PROJECT_ROOT } from '../dist/src/paths.js';
import { buildExample, buildFixture, fmt, median, messageFields, percentile } from './_support.mjs';
import { profileInProcess, profileMarkdown } from './_profile.mjs';

const ROUNDS = 7;
const CALLS_PER_ROUND = 20_000;
/** A worker round trip is about 10-60 us: fewer calls keep the round short. */
const WORKER_CALLS_PER_ROUND = 1_000;
/** The JavaScript component is interpreted inside its wasm engine (about 0.3 ms a call). */
const COMPONENT_CALLS_PER_ROUND = 300;
/** A grant the plugin never uses: it only moves the sandboxed plugin into its own worker. */
const UNUSED_GRANT = 'tcp:127.0.0.1:9';
const PROFILED_CALLS = 50_000;

const KEYWORDS = ['viagra', 'casino', 'winner', 'free money', 'click here', 'limited time', 'act now', 'congratulations'];

/** A 1 KiB message as smtp-source would send it, without any keyword. */
function messageBody() {
  const head = 'From: <a@example.com>\r\nTo: <b@example.com>\r\nSubject: bench\r\nMessage-Id: <1.bench@example.com>\r\n\r\n';
  let body = head;
  for (let line = 1; body.length < 1024; line++) body += `La de da de da ${line}.\r\n`;
  return Buffer.from(body.slice(0, 1024), 'latin1');
}

/** The plain JS peers: the same work on the same keys, without a plugin host. */
const plainJs = {
  readSet(fields) {
    return { b: fields.a };
  },
  spam(fields) {
    if (fields.sender_domain === 'trusted.example') return { spam_whitelisted: 'true' };
    const text = fields.message_body.toString('latin1').toLowerCase();
    let score = 0;
    for (const keyword of KEYWORDS) if (text.includes(keyword)) score++;
    return { spam_score: String(score) };
  },
};

/** A manager holding one plugin, and the runner the server would fire its hook through. */
async function hostOf(file, options = {}) {
  const manager = new PluginManager({ directory: BUILD_DIR, logger: silentLogger() });
  await manager.loadPlugin(file, JSON.stringify(options.config ?? {}), resolvePluginOptions(options));
  return { manager, runner: new HookRunner(manager, silentLogger()) };
}

/** The cost of the timing itself: two performance.now() calls around an empty call. */
function timerOverhead() {
  const samples = new Float64Array(100_000);
  const noop = () => {};
  for (let i = 0; i < samples.length; i++) {
    const t0 = performance.now();
    noop();
    samples[i] = performance.now() - t0;
  }
  return median(samples) * 1e6;
}

/**
 * Two passes: the mean ns per event of `calls` events timed together (a
 * figure below the timer's resolution stays meaningful), then each event
 * timed on its own, for the tail; the last result is returned for checking.
 */
async function time(call, calls, overheadNs, awaited) {
  let last;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) last = awaited ? await call() : call();
  const mean = Number(process.hrtime.bigint() - t0) / calls;
  const samples = new Float64Array(calls);
  for (let i = 0; i < calls; i++) {
    const t1 = performance.now();
    last = awaited ? await call() : call();
    samples[i] = (performance.now() - t1) * 1e6 - overheadNs;
  }
  return { mean, samples, last };
}

/** The keys a peer's call set, whatever it returned. */
function setKeys(result) {
  if (result.context === undefined) return Object.keys(result);
  return result.context === null ? [] : [...result.context.pluginChanges()].map(([key]) => key);
}

export async function run() {
  const [readSet, spam] = await Promise.all([buildFixture('read_set'), buildExample('spam_filter')]);
  const component = await buildPlugin({
    source: join(PROJECT_ROOT, 'test', 'fixtures', 'components', 'read_set.js'),
    target: 'component',
    output: join(BUILD_DIR, 'bench', 'read_set.component.wasm'),
  });
  const spamConfig = { spam_threshold: 5.0, whitelist: ['trusted.example'] };
  const peers = [
    { name: 'plain JS function', kind: 'js', readSet: null, spam: null },
    { name: 'native plugin (koffi)', kind: 'native', readSet: await hostOf(readSet.native), spam: await hostOf(spam.native, { config: spamConfig }) },
    { name: 'sandboxed, in-thread (wasm, deadline on)', kind: 'sandboxed', readSet: await hostOf(readSet.wasm), spam: await hostOf(spam.wasm, { config: spamConfig }) },
    {
      name: 'sandboxed with a socket grant (own worker thread)',
      kind: 'worker',
      awaited: true,
      readSet: await hostOf(readSet.wasm, { allowConnect: [UNUSED_GRANT] }),
      spam: await hostOf(spam.wasm, { allowConnect: [UNUSED_GRANT], config: spamConfig }),
    },
    { name: 'component plugin (JavaScript via jco, deadline on)', kind: 'component', readSet: await hostOf(component), spam: null },
  ];
  const body = messageBody();
  const events = [
    { id: 'readSet', hook: 'command_validated', plugin: 'readSet', key: 'b', fields: () => ({ a: 'sender@example.com' }) },
    { id: 'spamScored', hook: 'message_filtered', plugin: 'spam', key: 'spam_score', fields: () => messageFields(body, 'example.com') },
    { id: 'spamHost', hook: 'message_filtered', plugin: 'spam', key: 'spam_whitelisted', fields: () => messageFields(body, 'trusted.example') },
  ];
  const callOf = (peer, event) => {
    if (peer.kind === 'js') {
      const work = plainJs[event.plugin];
      return () => work(event.fields());
    }
    const host = peer[event.plugin];
    if (host === null) return null;
    return () => host.runner.run(event.hook, event.fields);
  };
  const overheadNs = timerOverhead();
  const samples = new Map(peers.map((peer) => [peer.name, Object.fromEntries(events.map((event) => [event.id, { means: [], values: [] }]))]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const event of events) {
      for (const peer of peers) {
        const call = callOf(peer, event);
        if (call === null) continue;
        const calls = peer.kind === 'component' ? COMPONENT_CALLS_PER_ROUND : peer.awaited ? WORKER_CALLS_PER_ROUND : CALLS_PER_ROUND;
        await time(call, Math.min(calls, 1_000), overheadNs, peer.awaited);
        const { mean, samples: values, last } = await time(call, calls, overheadNs, peer.awaited);
        if (!setKeys(last).includes(event.key)) throw new Error(`${peer.name} (${event.id}) did not set ${event.key}`);
        samples.get(peer.name)[event.id].means.push(mean);
        samples.get(peer.name)[event.id].values.push(...values);
      }
    }
  }
  const stat = (name, id) => {
    const { means, values } = samples.get(name)[id];
    return values.length === 0 ? null : { mean: median(means), p99: percentile(values, 99) };
  };
  const stats = new Map(peers.map((peer) => [peer.name, Object.fromEntries(events.map((event) => [event.id, stat(peer.name, event.id)]))]));

  // Where an in-thread peer's host part goes.
  const profiles = [];
  for (const peer of peers.filter((p) => p.kind === 'native' || p.kind === 'sandboxed')) {
    const call = callOf(peer, events[2]);
    const summary = await profileInProcess(() => {
      for (let i = 0; i < PROFILED_CALLS; i++) call();
    });
    profiles.push({ what: `${peer.name}, spam filter on a 1 KiB message, host part`, markdown: profileMarkdown(summary, `${PROFILED_CALLS.toLocaleString('en')} events of the ${peer.name} (spam filter, whitelisted sender: the host's part) in this process (inspector profiler, 100 us sampling)`) });
  }
  for (const peer of peers) {
    await peer.readSet?.manager.deinit();
    await peer.spam?.manager.deinit();
  }
  await backendsStopped();

  const cell = (s) => (s === null ? ['-', '-'] : [fmt(s.mean), fmt(Math.max(0, s.p99))]);
  const js = stats.get(peers[0].name);
  const readSetRows = peers.map((peer) => {
    const s = stats.get(peer.name);
    return [peer.name, ...cell(s.readSet), (s.readSet.mean / js.readSet.mean).toFixed(1)];
  });
  const spamRows = peers.filter((peer) => peer.kind === 'js' || peer.spam !== null).map((peer) => {
    const s = stats.get(peer.name);
    return [peer.name, ...cell(s.spamScored), ...cell(s.spamHost)];
  });
  return {
    title: 'Hook-event cost per plugin, as the server pays it',
    description:
      'The server\'s cost of one hook event with one plugin: `HookRunner.run`, as the server fires every hook, on a `PluginManager` ' +
      'holding the plugin: the event\'s keys are encoded once into a fresh context, the chain runs (lifecycle check, the call, ' +
      'the plugin\'s changes copied back), and the verdict is read through the reply policy. `test/fixtures/plugins/read_set.zig` ' +
      'reads `a` and sets `b` (at `command_validated`); `plugins/spam_filter.zig` (config `{"spam_threshold": 5, "whitelist": ' +
      '["trusted.example"]}`) gets the `message_filtered` keys the server gives a 1 KiB message (12 keys and the body), once from ' +
      '`example.com` (it scans the body and sets `spam_score`) and once from `trusted.example` (it reads `sender_domain` and sets ' +
      '`spam_whitelisted` without scanning: the host\'s part of a spam-filter event). The plain JS function does the same work on ' +
      'the same keys with no context at all. The socket-granted plugin runs in its own worker thread and each event is awaited, ' +
      'as the server awaits it.',
    commands: ['npm run bench -- hook-call'],
    tables: [
      {
        caption: 'Read one key, set one (`read_set.zig`), ns per event',
        header: ['peer', 'mean', 'p99', 'x plain JS'],
        rows: readSetRows,
      },
      {
        caption: 'Spam filter on a 1 KiB message (`spam_filter.zig`, `message_filtered`), ns per event',
        header: ['peer', 'scoring the body: mean', 'p99', 'whitelisted sender (host part): mean', 'p99'],
        rows: spamRows,
      },
    ],
    notes: [
      `${ROUNDS} rounds, peers interleaved round by round; per round ${CALLS_PER_ROUND.toLocaleString('en')} events per in-thread peer and hook, ${WORKER_CALLS_PER_ROUND.toLocaleString('en')} for the worker, ${COMPONENT_CALLS_PER_ROUND} for the component, timed twice: all together (the mean, the median over rounds) and each on its own (the p99, the timer's own cost of ${overheadNs.toFixed(0)} ns subtracted). The plain JS spam filter scans with \`toLowerCase\` and \`includes\`. What each further plugin of a chain adds is scenario 3.`,
    ],
    targets: [],
    profiles,
    chart: {
      type: 'bars',
      title: 'Hook-event cost, mean ns (log scale; whisker: p99)',
      log: true,
      unit: 'ns',
      groups: events.filter((e) => e.id === 'readSet' || e.id === 'spamHost').map((event) => ({
        label: event.id === 'readSet' ? 'read one key, set one' : 'spam filter on a 1 KiB message, host part',
        bars: peers.filter((peer) => stats.get(peer.name)[event.id] !== null).map((peer) => ({
          label: peer.name,
          value: Math.max(1, stats.get(peer.name)[event.id].mean),
          whisker: stats.get(peer.name)[event.id].p99,
          color: peer.kind,
        })),
      })),
    },
  };
}
