// Scenario 1: the host's cost of one hook call, per plugin per hook, median
// and p99 in ns. Peers: a plain JS function doing the same work on the same
// HookContext; the native plugin (koffi); the same source sandboxed in the
// event loop's thread (wasm, deadline on); sandboxed with a socket grant
// (allow_connect: the plugin then runs in its own worker thread, each call
// awaited); and, for read-one-set-one, a JavaScript component. Hooks:
// read one key and set one (test/fixtures/plugins/read_set.zig), and the spam
// filter (plugins/spam_filter.zig) on a message context with a 1 KiB body,
// once scoring it and once for a whitelisted sender (the filter reads one
// key and sets one without scanning: what is left is the host's part with
// the body in the context). Every call gets a fresh context, as every hook
// of every message does in the server; contexts are built before the clock
// starts. Each call is timed on its own (performance.now(), whose own cost,
// measured on an empty call, is subtracted); peers interleave round by round.
import { join } from 'node:path';
import { HookContext } from '../dist/src/plugin/hook-context.js';
import { PluginInstance } from '../dist/src/plugin/lifecycle.js';
import { backendsStopped, openPlugin } from '../dist/src/plugin/backends.js';
import { resolvePluginOptions } from '../dist/src/plugin/options.js';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { BUILD_DIR, PROJECT_ROOT } from '../dist/src/paths.js';
import { buildExample, buildFixture, fmt, median, percentile } from './_support.mjs';
import { profileInProcess, profileMarkdown } from './_profile.mjs';

const ROUNDS = 7;
const CALLS_PER_ROUND = 20_000;
/** A worker round trip is about 10-30 us: fewer calls keep the round short. */
const WORKER_CALLS_PER_ROUND = 1_000;
/** The JavaScript component is interpreted inside its wasm engine (about 0.3 ms a call). */
const COMPONENT_CALLS_PER_ROUND = 300;
const TARGET_NATIVE_NS = 300;
const TARGET_SANDBOXED_NS = 1_000;
/** A grant the plugin never uses: it only moves the sandboxed plugin into its own worker. */
const UNUSED_GRANT = 'tcp:127.0.0.1:9';

const KEYWORDS = ['viagra', 'casino', 'winner', 'free money', 'click here', 'limited time', 'act now', 'congratulations'];

/** A 1 KiB message as smtp-source would send it, without any keyword. */
function messageBody() {
  const head = 'From: <a@example.com>\r\nTo: <b@example.com>\r\nSubject: bench\r\nMessage-Id: <1.bench@example.com>\r\n\r\n';
  let body = head;
  for (let line = 1; body.length < 1024; line++) body += `La de da de da ${line}.\r\n`;
  return Buffer.from(body.slice(0, 1024), 'latin1');
}

/** The message_filtered context the server builds for one message (docs/hooks.md keys). */
function messageContext(body, senderDomain) {
  const context = new HookContext('message_filtered');
  const metadata = {
    session_id: 'abcdefghijklmnop',
    remote_ip: '127.0.0.1',
    client_hostname: '[127.0.0.1]',
    helo: 'bench.localdomain',
    sender: `a@${senderDomain}`,
    sender_domain: senderDomain,
    recipients: 'b@example.com',
    recipient: 'b@example.com',
    recipient_count: '1',
    message_id: '<1.bench@example.com>',
    subject: 'bench',
    size: String(body.length),
  };
  for (const [key, value] of Object.entries(metadata)) context.setMetadata(key, value);
  context.setMetadata('message_body', body);
  return context;
}

function readSetContext() {
  const context = new HookContext('message_received');
  context.setMetadata('a', 'sender@example.com');
  return context;
}

/** The plain JS peers: the same work, on the same HookContext API a backend uses. */
const plainJs = {
  readSet: {
    executeHook(context) {
      const value = context.getMetadataBytes('a');
      if (value !== undefined) context.applyPluginChange('b', value);
    },
  },
  spam: {
    executeHook(context) {
      const domain = context.getMetadata('sender_domain');
      if (domain === 'trusted.example') {
        context.applyPluginChange('spam_whitelisted', Buffer.from('true'));
        return;
      }
      const text = Buffer.from(context.getMetadataBytes('message_body')).toString('latin1').toLowerCase();
      let score = 0;
      for (const keyword of KEYWORDS) if (text.includes(keyword)) score++;
      context.applyPluginChange('spam_score', Buffer.from(String(score)));
    },
  },
};

async function start(file, options = {}) {
  const instance = new PluginInstance(await openPlugin(file, { options: resolvePluginOptions(options) }));
  await instance.init(JSON.stringify(options.config ?? {}));
  await instance.enable();
  return instance;
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

/** ns per call, each call timed on its own, on fresh contexts. */
function timeSync(peer, contexts, overheadNs) {
  const samples = new Float64Array(contexts.length);
  for (let i = 0; i < contexts.length; i++) {
    const context = contexts[i];
    const t0 = performance.now();
    peer.executeHook(context);
    samples[i] = (performance.now() - t0) * 1e6 - overheadNs;
  }
  return samples;
}

async function timeAwaited(peer, contexts, overheadNs) {
  const samples = new Float64Array(contexts.length);
  for (let i = 0; i < contexts.length; i++) {
    const context = contexts[i];
    const t0 = performance.now();
    await peer.executeHookAsync(context);
    samples[i] = (performance.now() - t0) * 1e6 - overheadNs;
  }
  return samples;
}

/** Checks that a peer did the work: the key it sets is there. */
function check(name, context, key) {
  if (!context.hasMetadata(key)) throw new Error(`${name} did not set ${key}`);
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
    { name: 'plain JS function', kind: 'js', readSet: plainJs.readSet, spam: plainJs.spam },
    { name: 'native plugin (koffi)', kind: 'native', readSet: await start(readSet.native), spam: await start(spam.native, { config: spamConfig }) },
    { name: 'sandboxed, in-thread (wasm, deadline on)', kind: 'sandboxed', readSet: await start(readSet.wasm), spam: await start(spam.wasm, { config: spamConfig }) },
    {
      name: 'sandboxed with a socket grant (own worker thread)',
      kind: 'worker',
      awaited: true,
      readSet: await start(readSet.wasm, { allowConnect: [UNUSED_GRANT] }),
      spam: await start(spam.wasm, { allowConnect: [UNUSED_GRANT], config: spamConfig }),
    },
    { name: 'component plugin (JavaScript via jco, deadline on)', kind: 'component', readSet: await start(component), spam: null },
  ];
  const body = messageBody();
  const seen = readSetContext();
  const hooks = [
    { id: 'readSet', key: 'b', make: readSetContext, plugin: 'readSet' },
    // The same context again: a later plugin of a chain, whose backend may already hold a copy.
    { id: 'readSetSame', key: 'b', make: () => seen, plugin: 'readSet' },
    { id: 'spamScored', key: 'spam_score', make: () => messageContext(body, 'example.com'), plugin: 'spam' },
    { id: 'spamHost', key: 'spam_whitelisted', make: () => messageContext(body, 'trusted.example'), plugin: 'spam' },
  ];
  const overheadNs = timerOverhead();
  const samples = new Map(peers.map((peer) => [peer.name, Object.fromEntries(hooks.map((hook) => [hook.id, []]))]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const hook of hooks) {
      for (const peer of peers) {
        const instance = peer[hook.plugin];
        if (instance === null) continue;
        const calls = peer.kind === 'component' ? COMPONENT_CALLS_PER_ROUND : peer.awaited ? WORKER_CALLS_PER_ROUND : CALLS_PER_ROUND;
        const contexts = Array.from({ length: calls }, hook.make);
        // Warm-up on contexts of its own, so that every timed call gets a fresh one.
        const warm = Array.from({ length: Math.min(calls, 1_000) }, hook.make);
        if (peer.awaited) await timeAwaited(instance, warm, overheadNs);
        else timeSync(instance, warm, overheadNs);
        const values = peer.awaited ? await timeAwaited(instance, contexts, overheadNs) : timeSync(instance, contexts, overheadNs);
        check(`${peer.name} (${hook.id})`, contexts[calls - 1], hook.key);
        samples.get(peer.name)[hook.id].push(...values);
      }
    }
  }
  const stat = (name, id) => {
    const values = samples.get(name)[id];
    return values.length === 0 ? null : { median: median(values), p99: percentile(values, 99) };
  };
  const stats = new Map(peers.map((peer) => [peer.name, Object.fromEntries(hooks.map((hook) => [hook.id, stat(peer.name, hook.id)]))]));

  // Targets: native under 0.3 us and sandboxed in-thread under 1 us of host cost per call, for both hooks.
  const targets = [];
  const misses = [];
  for (const [peer, limit] of [[peers[1], TARGET_NATIVE_NS], [peers[2], TARGET_SANDBOXED_NS]]) {
    for (const [id, what] of [['readSet', 'read one key, set one'], ['spamHost', 'spam filter on a 1 KiB message, host part']]) {
      const measured = stats.get(peer.name)[id].median;
      targets.push({ scenario: '1', name: `${peer.kind === 'native' ? 'native' : 'sandboxed in-thread'} hook call under ${limit / 1000} us of host cost (${what})`, measured: `${fmt(measured)} ns (${(measured / limit).toFixed(2)} x the target)`, met: measured < limit });
      if (measured >= limit) misses.push({ peer, id, what });
    }
  }
  const profiles = [];
  for (const { peer, id, what } of misses) {
    const hook = hooks.find((h) => h.id === id);
    const instance = peer[hook.plugin];
    const contexts = Array.from({ length: 50_000 }, hook.make);
    const summary = await profileInProcess(() => {
      for (const context of contexts) instance.executeHook(context);
    });
    profiles.push({ what: `${peer.name}, ${what}`, markdown: profileMarkdown(summary, `50,000 calls of the ${peer.name} (${what}) in this process (inspector profiler, 100 us sampling)`) });
  }
  for (const peer of peers) {
    peer.readSet.shutdown?.();
    peer.spam?.shutdown?.();
  }
  await backendsStopped();

  const cell = (s) => (s === null ? ['-', '-'] : [fmt(s.median), fmt(s.p99)]);
  const js = stats.get(peers[0].name);
  const readSetRows = peers.map((peer) => {
    const s = stats.get(peer.name);
    return [peer.name, ...cell(s.readSet), ...cell(s.readSetSame), (s.readSet.median / js.readSet.median).toFixed(1)];
  });
  const spamRows = peers.filter((peer) => peer.spam !== null).map((peer) => {
    const s = stats.get(peer.name);
    return [peer.name, ...cell(s.spamScored), ...cell(s.spamHost)];
  });
  return {
    title: 'Hook-call cost per plugin per hook',
    description:
      'The host\'s cost of one hook call. `test/fixtures/plugins/read_set.zig` reads `a` and sets `b`; ' +
      '`plugins/spam_filter.zig` (config `{"spam_threshold": 5, "whitelist": ["trusted.example"]}`) gets the `message_filtered` ' +
      'context the server builds for a 1 KiB message (12 keys and the body), once from `example.com` (it scans the body and sets ' +
      '`spam_score`) and once from `trusted.example` (it reads `sender_domain` and sets `spam_whitelisted` without scanning: ' +
      'that call is the host\'s part of a spam-filter call, copying the context in and the change out). Each call goes through ' +
      '`PluginInstance.executeHook` (the lifecycle check, the call, copying the change back into the JS context) on a fresh ' +
      'context, as every hook of every message does; the plain JS function does the same work on the same `HookContext`. ' +
      'The socket-granted plugin runs in its own worker thread and each call is awaited, as the server awaits it.',
    commands: ['npm run bench -- hook-call'],
    tables: [
      {
        caption: 'Read one key, set one (`read_set.zig`), ns per call',
        header: ['peer', 'fresh context: median', 'p99', 'context seen before: median', 'p99', 'fresh, x plain JS'],
        rows: readSetRows,
      },
      {
        caption: 'Spam filter on a 1 KiB message (`spam_filter.zig`, `message_filtered`, fresh context), ns per call',
        header: ['peer', 'scoring the body: median', 'p99', 'whitelisted sender (host part): median', 'p99'],
        rows: spamRows,
      },
    ],
    notes: [
      `${ROUNDS} rounds, peers interleaved round by round; per round ${CALLS_PER_ROUND.toLocaleString('en')} calls per in-thread peer and hook, ${WORKER_CALLS_PER_ROUND.toLocaleString('en')} for the worker, ${COMPONENT_CALLS_PER_ROUND} for the component; each call timed on its own, the timer's own cost (${overheadNs.toFixed(0)} ns, the median of an empty call) subtracted. A fresh context is what the first plugin called for a hook of a message gets; "context seen before" is the same context called again (a later plugin of a chain: the native backend keeps one copy of a context for every native plugin, each sandboxed plugin keeps its own). The plain JS spam filter scans with \`toLowerCase\` and \`includes\`. Targets are judged on fresh contexts.`,
    ],
    targets,
    profiles,
    chart: {
      type: 'bars',
      title: 'Hook-call cost, median ns per call (log scale; whisker: p99)',
      log: true,
      unit: 'ns',
      groups: hooks.filter((h) => h.id === 'readSet' || h.id === 'spamHost').map((hook) => ({
        label: hook.id === 'readSet' ? 'read one key, set one (fresh context)' : 'spam filter on a 1 KiB message, host part',
        bars: peers.filter((peer) => stats.get(peer.name)[hook.id] !== null).map((peer) => ({
          label: peer.name,
          value: Math.max(1, stats.get(peer.name)[hook.id].median),
          whisker: stats.get(peer.name)[hook.id].p99,
          color: peer.kind,
        })),
      })),
    },
  };
}
