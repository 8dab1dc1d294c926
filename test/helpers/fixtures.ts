import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ABI_DIR, BUILD_DIR, PROJECT_ROOT, sharedLibraryName } from '../../src/paths.js';
import { buildPlugin } from '../../src/toolchain/build.js';
import { NEWEST_ZIG_VERSION, PINNED_ZIG_VERSION } from '../../src/toolchain/zig.js';

/** Where the test run builds its plugin fixtures (never committed). */
export const FIXTURE_DIR = join(BUILD_DIR, 'test-fixtures');
export const FIXTURE_SOURCES = join(PROJECT_ROOT, 'test', 'fixtures', 'plugins');

export function fixture(name: string): string {
  return join(FIXTURE_DIR, sharedLibraryName(name));
}

export const COMPONENT_SOURCES = join(PROJECT_ROOT, 'test', 'fixtures', 'components');

/** A sandboxed (.wasm) fixture: a core module, or a component (name ending in _component). */
export function wasmFixture(name: string): string {
  return join(FIXTURE_DIR, `${name}.wasm`);
}

/** name -> -D flags for test/fixtures/plugins/c_variants.c. */
export const C_VARIANTS: Record<string, string[]> = {
  c_plain: ['-DNAME="plain"'],
  c_second: ['-DNAME="second"'],
  c_stop: ['-DVARIANT_STOP', '-DNAME="stopper"'],
  c_cancel_code: ['-DVARIANT_CANCEL_CODE', '-DNAME="canceller"'],
  c_cancel_flag: ['-DVARIANT_CANCEL_FLAG', '-DNAME="flag-setter"'],
  c_filtered_only: ['-DNAME="filtered-only"', '-DHANDLED=SMTP_HOOK_BIT(SMTP_HOOK_MESSAGE_FILTERED)'],
  c_bad_code: ['-DVARIANT_BAD_CODE', '-DNAME="bad-code"'],
  c_bad_abi: ['-DVARIANT_BAD_ABI'],
  c_no_marker: ['-DVARIANT_NO_MARKER'],
  c_null_metadata: ['-DVARIANT_NULL_METADATA'],
  c_bad_utf8: ['-DVARIANT_BAD_UTF8'],
  c_init_fails: ['-DVARIANT_INIT_FAILS'],
  c_individual: ['-DVARIANT_INDIVIDUAL_EXPORTS', '-DNAME="individual"'],
  c_missing_disable: ['-DVARIANT_INDIVIDUAL_EXPORTS', '-DVARIANT_MISSING_DISABLE'],
  c_bad_name: ['-DNAME="bad name!"'],
  c_needs_plain: ['-DNAME="needs-plain"', '-DDEPS="plain@^1.0"'],
  c_needs_needs: ['-DNAME="needs-needs"', '-DDEPS="needs-plain"'],
  c_needs_plain2: ['-DNAME="needs-plain2"', '-DDEPS="plain@^2.0"'],
  c_cycle_a: ['-DNAME="cycle-a"', '-DDEPS="cycle-b"'],
  c_cycle_b: ['-DNAME="cycle-b"', '-DDEPS="cycle-a"'],
  c_future: ['-DNAME="future"', '-DMIN_SERVER="9.0.0"'],
  c_plain_fails: ['-DNAME="plain"', '-DVARIANT_INIT_FAILS'],
  c_needs_bad: ['-DNAME="needs-bad"', '-DDEPS="bad-code"'],
};

export function compileC(source: string, name: string, defines: string[] = []): string {
  const output = fixture(name);
  const result = spawnSync('gcc', ['-shared', '-fPIC', '-O2', '-Wall', '-Werror', '-Wno-unused-function', '-std=c11', `-I${ABI_DIR}`, ...defines, '-o', output, source], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`gcc ${name} failed:\n${result.stderr}${result.error?.message ?? ''}`);
  return output;
}

/** Builds every plugin fixture from source: gcc for C, both Zig versions for Zig. */
export async function buildFixtures(): Promise<void> {
  mkdirSync(FIXTURE_DIR, { recursive: true });
  compileC(join(FIXTURE_SOURCES, 'c_spam_filter.c'), 'c_spam_filter');
  compileC(join(FIXTURE_SOURCES, 'c_policy.c'), 'c_policy', ['-D_GNU_SOURCE']);
  compileC(join(FIXTURE_SOURCES, 'c_isolation_probe.c'), 'c_isolation_probe');
  // The same probe with SMTP_PLUGIN_FLAG_BLOCKING: in-process, its hooks run on a pool thread.
  compileC(join(FIXTURE_SOURCES, 'c_isolation_probe.c'), 'c_blocking_probe', ['-DPROBE_FLAGS=SMTP_PLUGIN_FLAG_BLOCKING']);
  for (const [name, defines] of Object.entries(C_VARIANTS)) compileC(join(FIXTURE_SOURCES, 'c_variants.c'), name, defines);
  writeFileSync(fixture('not_a_library'), 'this is text, not an ELF file\n');
  await Promise.all([
    // Components (componentize-js, ~8 s each): the JS spam filter and the bad-input fixtures.
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'js', 'spam_filter.js'), output: wasmFixture('spam_filter_component'), target: 'component' }),
    buildPlugin({ source: join(COMPONENT_SOURCES, 'read_set.js'), output: wasmFixture('read_set_component'), target: 'component' }),
    buildPlugin({ source: join(COMPONENT_SOURCES, 'traps.js'), output: wasmFixture('traps_component'), target: 'component' }),
    buildPlugin({ source: join(COMPONENT_SOURCES, 'uses_stdio.js'), output: wasmFixture('uses_stdio_component'), target: 'component', component: { disableFeatures: ['random', 'clocks', 'http', 'fetch-event'] } }),
    buildPlugin({ source: join(COMPONENT_SOURCES, 'other_world.js'), output: wasmFixture('other_world_component'), target: 'component', component: { witPath: join(COMPONENT_SOURCES, 'other_world.wit'), worldName: 'other' } }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'guide_spam_filter.zig'), output: fixture('guide_spam_filter'), zigVersion: PINNED_ZIG_VERSION }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'read_set.zig'), output: fixture('read_set') }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'net_probe.zig'), output: fixture('net_probe') }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'net_probe.zig'), output: wasmFixture('net_probe'), target: 'wasm' }),
    // The host counters in every backend (test/runtime/counters.test.ts), and the rate limiter on them.
    buildPlugin({ source: join(FIXTURE_SOURCES, 'counter_probe.zig'), output: fixture('counter_probe') }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'counter_probe.zig'), output: wasmFixture('counter_probe'), target: 'wasm' }),
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'rate_limiter.zig'), output: fixture('rate_limiter') }),
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'rate_limiter.zig'), output: wasmFixture('rate_limiter'), target: 'wasm' }),
    // The same C probe as gcc's native build above, sandboxed: the parity test runs both.
    buildPlugin({ source: join(FIXTURE_SOURCES, 'c_isolation_probe.c'), output: wasmFixture('c_isolation_probe'), target: 'wasm' }),
    // c_variants.c sandboxed, with its default name "c-variant": appends to "visited" in a chain of mixed backends.
    buildPlugin({ source: join(FIXTURE_SOURCES, 'c_variants.c'), output: wasmFixture('c_variant'), target: 'wasm' }),
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'spam_filter.zig'), output: fixture('spam_filter') }),
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'spam_filter.zig'), output: fixture('spam_filter_newest'), zigVersion: NEWEST_ZIG_VERSION }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'guide_spam_filter.zig'), output: wasmFixture('guide_spam_filter'), target: 'wasm' }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'read_set.zig'), output: wasmFixture('read_set'), target: 'wasm' }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'sandbox_probe.zig'), output: wasmFixture('sandbox_probe'), target: 'wasm' }),
    buildPlugin({ source: join(FIXTURE_SOURCES, 'sandbox_probe.zig'), output: wasmFixture('sandbox_probe_newest'), target: 'wasm', zigVersion: NEWEST_ZIG_VERSION }),
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'spam_filter.zig'), output: wasmFixture('spam_filter'), target: 'wasm' }),
    buildPlugin({ source: join(PROJECT_ROOT, 'plugins', 'spam_filter.zig'), output: wasmFixture('spam_filter_newest'), target: 'wasm', zigVersion: NEWEST_ZIG_VERSION }),
  ]);
}
