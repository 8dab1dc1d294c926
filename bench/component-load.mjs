// Scenario: what loading a component costs: jco's transpile (cold: the
// first load of a new build, run in a child process) against a load from the
// transpile cache (a restart), for the JavaScript spam filter.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { COMPONENT_CACHE_DIR, contentHash } from '../dist/src/component/transpile.js';
import { backendsStopped, openPlugin } from '../dist/src/plugin/backends.js';
import { BUILD_DIR, PROJECT_ROOT } from '../dist/src/paths.js';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { median } from './_support.mjs';

const ROUNDS = 3;

export async function run() {
  const started = process.hrtime.bigint();
  const file = await buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'js', 'spam_filter.js'), target: 'component', output: join(BUILD_DIR, 'bench', 'spam_filter.component.wasm') });
  const buildMs = Number(process.hrtime.bigint() - started) / 1e6;
  const cache = join(COMPONENT_CACHE_DIR, contentHash(readFileSync(file)));
  const load = async () => {
    const t = process.hrtime.bigint();
    await (await openPlugin(file)).unload();
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  const cold = [];
  const cached = [];
  for (let round = 0; round < ROUNDS; round++) {
    rmSync(cache, { recursive: true, force: true });
    cold.push(await load());
    cached.push(await load());
  }
  return {
    title: 'Component load: transpile cold and cached',
    header: ['step', 'median ms', 'min', 'max'],
    rows: [
      ['componentize-js build (plugin build --target component)', buildMs.toFixed(0), '-', '-'],
      ['load, cold (jco transpile + instrument + instantiate)', median(cold).toFixed(0), Math.min(...cold).toFixed(0), Math.max(...cold).toFixed(0)],
      ['load, cached transpile (instrument + instantiate)', median(cached).toFixed(0), Math.min(...cached).toFixed(0), Math.max(...cached).toFixed(0)],
    ],
  };
}
