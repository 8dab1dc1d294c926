// Scenario: resident memory per loaded sandboxed plugin. Loads the spam filter
// 50 times (each load compiles, instruments and instantiates) and reports the
// RSS growth per instance, after a GC where --expose-gc allows one.
import { join } from 'node:path';
import { backendsStopped, openPlugin } from '../dist/src/plugin/backends.js';
import { PROJECT_ROOT } from '../dist/src/paths.js';
import { buildFixture } from './_support.mjs';

const INSTANCES = 50;

export async function run() {
  const { wasm } = await buildFixture('spam_filter', join(PROJECT_ROOT, 'plugins', 'spam_filter.zig'));
  const rss = () => {
    globalThis.gc?.();
    return process.memoryUsage().rss;
  };
  const kept = [await openPlugin(wasm)];
  await kept[0].init('{}');
  const before = rss();
  for (let i = 1; i <= INSTANCES; i++) {
    const plugin = await openPlugin(wasm);
    await plugin.init('{}');
    kept.push(plugin);
  }
  const perInstance = (rss() - before) / INSTANCES;
  return {
    title: 'Memory per loaded sandboxed plugin',
    header: ['plugin', 'instances', 'RSS growth per instance (KiB)'],
    rows: [['spam_filter.wasm', String(INSTANCES), (perInstance / 1024).toFixed(0)]],
  };
}
