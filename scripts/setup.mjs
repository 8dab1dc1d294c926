// Everything `npm install` / `npm ci` must leave ready: the TypeScript
// compiled into dist/, the pinned Zig (and the newest supported one, which CI
// builds with too) installed into .toolchain/, the native host runtime and
// the example plugins built. Idempotent; Zig's cache makes reruns fast.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const step = (what) => process.stderr.write(`[setup] ${what}\n`);

step('compiling TypeScript into dist/');
const tsc = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);

const { findZig, PINNED_ZIG_VERSION, SUPPORTED_ZIG_VERSIONS } = await import('../dist/src/toolchain/zig.js');
const { buildPlugin, buildRuntime } = await import('../dist/src/toolchain/build.js');

try {
  for (const version of SUPPORTED_ZIG_VERSIONS) {
    step(`Zig ${version}: ${findZig(version)}`);
  }
  step(`building the native host runtime with Zig ${PINNED_ZIG_VERSION}`);
  const builds = [buildRuntime()];
  const pluginDir = join(root, 'plugins');
  for (const file of readdirSync(pluginDir).filter((name) => name.endsWith('.zig')).sort()) {
    // Every example builds both ways: native beside its source, sandboxed into wasm-plugins/.
    builds.push(buildPlugin({ source: join(pluginDir, file) }));
    builds.push(buildPlugin({ source: join(pluginDir, file), target: 'wasm', output: join(root, 'wasm-plugins', file.replace(/\.zig$/, '.wasm')) }));
  }
  // JavaScript examples become components of the WIT world (docs/components.md).
  const jsDir = join(pluginDir, 'js');
  for (const file of readdirSync(jsDir).filter((name) => name.endsWith('.js')).sort()) {
    builds.push(buildPlugin({ source: join(jsDir, file), target: 'component', output: join(root, 'wasm-plugins', file.replace(/\.js$/, '.component.wasm')) }));
  }
  for (const output of await Promise.all(builds)) step(`built ${output}`);
} catch (error) {
  process.stderr.write(`[setup] ${error.code ?? 'error'}: ${error.message}\n`);
  process.exit(1);
}
