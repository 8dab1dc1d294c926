// Scenario: what running a hook off the event loop costs (ABI 1.1,
// SMTP_PLUGIN_FLAG_BLOCKING or `blocking = true`): the same read-one-key,
// set-one plugin called in the event loop's thread, and off it (native: a
// koffi pool thread; sandboxed: the plugin's own worker thread), awaited one
// call at a time as the server awaits a chain. Peers are interleaved round by
// round. The second table is the point of it: while one blocking call waits
// 50 ms on a slow peer, how many 1 ms timers the event loop still fires.
import { createServer } from 'node:net';
import { HookContext } from '../dist/src/plugin/hook-context.js';
import { PluginInstance } from '../dist/src/plugin/lifecycle.js';
import { backendsStopped, openPlugin } from '../dist/src/plugin/backends.js';
import { resolvePluginOptions } from '../dist/src/plugin/options.js';
import { buildFixture, median } from './_support.mjs';

const CALLS_PER_ROUND = 2_000;
const ROUNDS = 7;

async function start(file, options) {
  const instance = new PluginInstance(await openPlugin(file, { options: resolvePluginOptions(options) }));
  await instance.init('{}');
  await instance.enable();
  return instance;
}

async function timeAwaited(instance, calls) {
  const context = new HookContext('message_received');
  context.setMetadata('a', 'sender@example.com');
  // settle(): the key comes back into the context after every call, as the server's chain end takes it
  // (a native plugin's changes otherwise wait in the native copy until the context is read).
  for (let i = 0; i < 200; i++) {
    await instance.executeHookAsync(context);
    context.settle();
  }
  const begin = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) {
    await instance.executeHookAsync(context);
    context.settle();
  }
  const perCall = Number(process.hrtime.bigint() - begin) / calls;
  if (context.getMetadata('b') !== 'sender@example.com') throw new Error('the plugin did not set b');
  return perCall;
}

/** Timer ticks (1 ms interval) the event loop fires while one call waits on a peer that answers after 50 ms. */
async function ticksDuringWait(instance, address) {
  const context = new HookContext('message_received');
  context.setMetadata('address', address);
  context.setMetadata('send', 'x');
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const begin = performance.now();
  await instance.executeHookAsync(context);
  const elapsed = performance.now() - begin;
  clearInterval(timer);
  if (context.getMetadata('reply') === undefined) throw new Error(`no reply: ${context.getMetadata('net_error')}`);
  return { ticks, elapsed };
}

export async function run() {
  const readSet = await buildFixture('read_set');
  const netProbe = await buildFixture('net_probe');
  const peers = {
    'native, event loop thread': await start(readSet.native, { blocking: false }),
    'native, koffi pool thread (blocking)': await start(readSet.native, { blocking: true }),
    'sandboxed, event loop thread': await start(readSet.wasm, { blocking: false }),
    'sandboxed, own worker thread (blocking)': await start(readSet.wasm, { blocking: true }),
  };
  const samples = Object.fromEntries(Object.keys(peers).map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, instance] of Object.entries(peers)) samples[name].push(await timeAwaited(instance, CALLS_PER_ROUND));
  }
  for (const instance of Object.values(peers)) await instance.shutdown();

  // The probe sends its line in two writes and closes after the first answer: a second answer
  // reaching a closed socket is reset, which is no error of the server's.
  const server = createServer((socket) => socket.on('error', () => undefined).on('data', () => setTimeout(() => socket.writable && socket.write('ok\n'), 50)));
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  const address = `tcp:127.0.0.1:${server.address().port}`;
  const waits = [];
  for (const [name, file] of [['native, koffi pool thread', netProbe.native], ['sandboxed, own worker thread', netProbe.wasm]]) {
    const instance = await start(file, { allowConnect: [address] });
    const { ticks, elapsed } = await ticksDuringWait(instance, address);
    waits.push([name, elapsed.toFixed(0), String(ticks)]);
    await instance.shutdown();
  }
  server.close();
  await backendsStopped();

  const base = median(samples['native, event loop thread']);
  return {
    title: 'Blocking plugins: the cost of a hook call off the event loop (read one key, set one, awaited)',
    header: ['where the hook runs', 'median ns/call', 'min', 'max', 'x native in-thread'],
    rows: Object.entries(samples).map(([name, values]) => [
      name,
      median(values).toFixed(0),
      Math.min(...values).toFixed(0),
      Math.max(...values).toFixed(0),
      (median(values) / base).toFixed(1),
    ]),
    notes: [
      `${CALLS_PER_ROUND} awaited calls per round, ${ROUNDS} rounds, peers interleaved; the in-thread figures include the await the manager does on every call.`,
      '| one call waiting on a peer that answers after 50 ms | call ms | 1 ms timers fired meanwhile |\n|---|---:|---:|\n' + waits.map((row) => `| ${row.join(' | ')} |`).join('\n'),
    ],
  };
}
