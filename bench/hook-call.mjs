// Scenario: the host's cost of one hook call that reads one metadata key and
// sets one, native (koffi) beside a plain JS function doing the same, in one
// run with the two interleaved so that machine drift hits both alike.
// Run: npm run bench (needs `npm install` to have built the fixtures' sources;
// this script builds read_set itself).
import { join } from 'node:path';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { BUILD_DIR, PROJECT_ROOT, sharedLibraryName } from '../dist/src/paths.js';
import { HookContext } from '../dist/src/plugin/hook-context.js';
import { PluginInstance } from '../dist/src/plugin/lifecycle.js';
import { loadNativePlugin } from '../dist/src/native/native-plugin.js';

const CALLS_PER_ROUND = 200_000;
const ROUNDS = 10;

export async function run() {
  const library = await buildPlugin({
    source: join(PROJECT_ROOT, 'test', 'fixtures', 'plugins', 'read_set.zig'),
    output: join(BUILD_DIR, 'bench', sharedLibraryName('read_set')),
  });
  const native = new PluginInstance(loadNativePlugin(library));
  native.init('{}');
  native.enable();
  const js = {
    executeHook(context) {
      const value = context.getMetadataBytes('a');
      if (value !== undefined) context.applyPluginChange('b', value);
      return { code: 0, action: 'continue' };
    },
  };

  // One context per peer, as one message's hook context is reused across a
  // chain; "a" is set once by the host, "b" is set by the plugin every call.
  const peers = { 'plain JS function': js, 'native plugin (koffi)': native };
  const samples = Object.fromEntries(Object.keys(peers).map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, peer] of Object.entries(peers)) {
      const context = new HookContext('message_received');
      context.setMetadata('a', 'sender@example.com');
      for (let i = 0; i < 10_000; i++) peer.executeHook(context); // warm-up
      const start = process.hrtime.bigint();
      for (let i = 0; i < CALLS_PER_ROUND; i++) peer.executeHook(context);
      const ns = Number(process.hrtime.bigint() - start) / CALLS_PER_ROUND;
      if (context.getMetadata('b') !== 'sender@example.com') throw new Error(`${name} did not set b`);
      samples[name].push(ns);
    }
  }
  native.shutdown();
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  return Object.entries(samples).map(([name, values]) => ({
    name,
    median_ns: median(values),
    min_ns: Math.min(...values),
    max_ns: Math.max(...values),
  }));
}
