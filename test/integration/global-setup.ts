import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { buildPlugin, buildRuntime } from '../../src/toolchain/build.js';
import { EXAMPLE_BUILD_DIR, EXAMPLE_SOURCES, examplePlugin, exampleNames } from './helpers/plugins.js';

/** Builds the native runtime and every example plugin, native and wasm, from source. */
export default async function setup(): Promise<void> {
  await buildRuntime();
  mkdirSync(EXAMPLE_BUILD_DIR, { recursive: true });
  await Promise.all(
    exampleNames().flatMap((stem) => [
      buildPlugin({ source: join(EXAMPLE_SOURCES, `${stem}.zig`), output: examplePlugin(stem, 'native') }),
      buildPlugin({ source: join(EXAMPLE_SOURCES, `${stem}.zig`), output: examplePlugin(stem, 'wasm'), target: 'wasm' }),
    ]),
  );
}
