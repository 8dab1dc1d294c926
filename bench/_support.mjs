// Shared by the bench scenarios: fixture builds and timing helpers.
import { join } from 'node:path';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { BUILD_DIR, PROJECT_ROOT, sharedLibraryName } from '../dist/src/paths.js';

export const FIXTURES = join(PROJECT_ROOT, 'test', 'fixtures', 'plugins');

/** Builds a fixture (native and wasm) into build/bench/. */
export async function buildFixture(name, source = join(FIXTURES, `${name}.zig`)) {
  const [native, wasm] = await Promise.all([
    buildPlugin({ source, output: join(BUILD_DIR, 'bench', sharedLibraryName(name)) }),
    buildPlugin({ source, target: 'wasm', output: join(BUILD_DIR, 'bench', `${name}.wasm`) }),
  ]);
  return { native, wasm };
}

export const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** Mean ns per call of `fn` over `calls` calls, after a warm-up. */
export function timePerCall(fn, calls) {
  for (let i = 0; i < Math.min(10_000, calls); i++) fn();
  const start = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) fn();
  return Number(process.hrtime.bigint() - start) / calls;
}
