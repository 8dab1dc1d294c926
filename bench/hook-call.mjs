// Scenario: the host's cost of one hook call that reads one metadata key and
// sets one: a plain JS function, the native plugin (koffi) and the same source
// sandboxed (wasm, deadline enforcement on), interleaved round by round so
// that machine drift hits every peer alike.
import { HookContext } from '../dist/src/plugin/hook-context.js';
import { PluginInstance } from '../dist/src/plugin/lifecycle.js';
import { loadPluginFile } from '../dist/src/plugin/load.js';
import { join } from 'node:path';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { BUILD_DIR, PROJECT_ROOT } from '../dist/src/paths.js';
import { buildFixture, median, timePerCall } from './_support.mjs';

const CALLS_PER_ROUND = 200_000;
const ROUNDS = 10;

export async function run() {
  const { native, wasm } = await buildFixture('read_set');
  const component = await buildPlugin({
    source: join(PROJECT_ROOT, 'test', 'fixtures', 'components', 'read_set.js'),
    target: 'component',
    output: join(BUILD_DIR, 'bench', 'read_set.component.wasm'),
  });
  const start = (file) => {
    const instance = new PluginInstance(loadPluginFile(file));
    instance.init('{}');
    instance.enable();
    return instance;
  };
  const peers = {
    'plain JS function': {
      executeHook(context) {
        const value = context.getMetadataBytes('a');
        if (value !== undefined) context.applyPluginChange('b', value);
      },
    },
    'native plugin (koffi)': start(native),
    'sandboxed plugin (wasm, in-thread, deadline on)': start(wasm),
    'component plugin (JavaScript via jco, deadline on)': start(component),
  };
  const samples = Object.fromEntries(Object.keys(peers).map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, peer] of Object.entries(peers)) {
      // One context per peer, as one message's context runs down a chain:
      // "a" is set once by the host, "b" by the plugin on every call.
      const context = new HookContext('message_received');
      context.setMetadata('a', 'sender@example.com');
      // The JavaScript component is interpreted inside its wasm engine: fewer calls keep the round short.
      const calls = name.startsWith('component') ? CALLS_PER_ROUND / 200 : CALLS_PER_ROUND;
      samples[name].push(timePerCall(() => peer.executeHook(context), calls));
      if (context.getMetadata('b') !== 'sender@example.com') throw new Error(`${name} did not set b`);
    }
  }
  for (const peer of Object.values(peers)) peer.shutdown?.();
  const js = median(samples['plain JS function']);
  return {
    title: 'Hook-call cost: read one key, set one',
    header: ['peer', 'median ns/call', 'min', 'max', 'x plain JS'],
    rows: Object.entries(samples).map(([name, values]) => [
      name,
      median(values).toFixed(0),
      Math.min(...values).toFixed(0),
      Math.max(...values).toFixed(0),
      (median(values) / js).toFixed(1),
    ]),
    notes: [`${ROUNDS} rounds of ${CALLS_PER_ROUND.toLocaleString('en')} calls per peer (${(CALLS_PER_ROUND / 200).toLocaleString('en')} for the component), interleaved; median, min and max of the round means.`],
  };
}
