import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { COMPONENT_CACHE_DIR, contentHash, transpileInto } from '../component/transpile.js';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { hostError } from '../errors.js';
import { ABI_DIR, ABI_WIT, CHILD_PROGRAM, CHILD_SOURCE, RUNTIME_LIBRARY, RUNTIME_SOURCE, ZIG_HOST_MODULE_ROOT, ZIG_MODULE_ROOT, sharedLibraryName } from '../paths.js';
import { PINNED_ZIG_VERSION, findZig, zigEnv } from './zig.js';

export const BUILD_TARGETS = ['native', 'wasm', 'component'] as const;
export type BuildTarget = (typeof BUILD_TARGETS)[number];
export const OPTIMIZE_MODES = ['Debug', 'ReleaseSafe', 'ReleaseFast', 'ReleaseSmall'] as const;
export type OptimizeMode = (typeof OPTIMIZE_MODES)[number];

/**
 * A wasm plugin's stack. Zig's default (16 MiB) would be most of a sandbox's
 * memory limit and of its resident size; hooks need far less.
 */
export const WASM_STACK_BYTES = 1024 * 1024;

/** WASI features a JavaScript component does without: the sandbox grants none of them. */
export const COMPONENT_DISABLED_FEATURES: readonly string[] = ['random', 'stdio', 'clocks', 'http', 'fetch-event'];

/** The plugin's six functions, as the sandbox calls them (abi/smtp_wasm.h). */
const PLUGIN_FUNCTIONS = ['init', 'deinit', 'get_metadata', 'execute_hook', 'enable', 'disable'] as const;

/** The Zig root of a C plugin's WebAssembly build: it links the guest half of the sandbox. */
export const C_WASM_ROOT = join(ABI_DIR, 'zig', 'wasm_c_plugin.zig');
/** The six smtp_plugin_* exports over smtp_plugin_get_interface, linked from an archive only when the C file lacks them. */
export const C_WASM_INTERFACE_SOURCE = join(ABI_DIR, 'smtp_wasm_interface.c');

/** What a source file is written in, by its extension: .c is C, .js a component, anything else Zig. */
export type SourceLanguage = 'zig' | 'c' | 'js';

export function sourceLanguage(source: string): SourceLanguage {
  const extension = extname(source).toLowerCase();
  if (extension === '.c') return 'c';
  if (extension === '.js' || extension === '.mjs') return 'js';
  return 'zig';
}

/** For tests that build components of other worlds or with other features. */
export interface ComponentBuildOptions {
  readonly witPath?: string;
  readonly worldName?: string;
  readonly disableFeatures?: readonly string[];
}

export interface PluginBuildOptions {
  readonly source: string;
  readonly target?: BuildTarget;
  readonly component?: ComponentBuildOptions;
  /** Defaults to lib<name>.so (or .dylib/.dll) beside the source. */
  readonly output?: string;
  readonly zigVersion?: string;
  readonly optimize?: OptimizeMode;
}

/**
 * The zig arguments that build `source` against the ABI module. Native: a
 * shared library. Wasm: a reactor module from build-exe, because build-lib
 * gives an archive (static) or a position-independent side module that
 * imports its memory and tables (-dynamic; and Zig 0.15+ refuses to link it
 * without -fPIC): see docs/sandbox.md.
 */
export function pluginBuildArgs(source: string, output: string, optimize: OptimizeMode, target: BuildTarget = 'native'): string[] {
  const kind = target === 'wasm'
    ? ['build-exe', '-fno-entry', '-rdynamic', '-target', 'wasm32-wasi', '--stack', String(WASM_STACK_BYTES)]
    : ['build-lib', '-dynamic'];
  return [
    ...kind, '-O', optimize,
    '--dep', 'smtp-server', `-Mroot=${resolve(source)}`, `-Msmtp-server=${ZIG_MODULE_ROOT}`,
    `-femit-bin=${resolve(output)}`,
  ];
}

/**
 * The zig arguments that build a C plugin (written against abi/smtp_plugin.h
 * alone) with Zig's bundled clang and libc. Native: a shared library. Wasm: a
 * reactor module of the C file, libc (wasi-libc), the guest half of the
 * sandbox (C_WASM_ROOT) and `interfaceArchive` (C_WASM_INTERFACE_SOURCE
 * compiled into an archive), with the six smtp_plugin_* functions forced
 * into the exports. Being an archive member, the interface code is linked
 * only when the C file does not define those six itself; then it calls the C
 * file's smtp_plugin_get_interface, and its absence is a link error.
 */
export function cPluginBuildArgs(source: string, output: string, optimize: OptimizeMode, target: 'native' | 'wasm', interfaceArchive?: string): string[] {
  const common = ['-O', optimize, '-lc', `-I${ABI_DIR}`];
  if (target === 'native') return ['build-lib', '-dynamic', ...common, resolve(source), `-femit-bin=${resolve(output)}`];
  if (interfaceArchive === undefined) throw new Error('a C plugin\'s wasm build needs the interface archive');
  return [
    'build-exe', '-fno-entry', '-rdynamic', '-mexec-model=reactor', '-target', 'wasm32-wasi', '--stack', String(WASM_STACK_BYTES),
    ...common, ...PLUGIN_FUNCTIONS.map((name) => `--export=smtp_plugin_${name}`),
    resolve(source), interfaceArchive, `-Mroot=${C_WASM_ROOT}`,
    `-femit-bin=${resolve(output)}`,
  ];
}

/** The zig arguments that compile C_WASM_INTERFACE_SOURCE for wasm32 into the archive `output`. */
export function cInterfaceArchiveArgs(output: string): string[] {
  return ['build-lib', '-target', 'wasm32-wasi', '-O', 'ReleaseSmall', `-I${ABI_DIR}`, C_WASM_INTERFACE_SOURCE, `-femit-bin=${output}`];
}

export function defaultOutput(source: string, target: BuildTarget): string {
  const name = basename(source).replace(/\.(zig|c|js|mjs)$/i, '');
  return join(dirname(source), target === 'native' ? sharedLibraryName(name) : `${name}.wasm`);
}

/**
 * Builds a JavaScript plugin into a component of the smtp-plugin world with
 * componentize-js (offline: the JS engine ships in the npm package), then
 * fills the transpile cache so the first load is quick.
 */
async function buildComponent(source: string, output: string, options: ComponentBuildOptions = {}): Promise<string> {
  const { componentize } = await import('@bytecodealliance/componentize-js');
  let component: Uint8Array;
  try {
    ({ component } = await componentize({
      sourcePath: resolve(source),
      witPath: options.witPath ?? ABI_WIT,
      worldName: options.worldName ?? 'smtp-plugin',
      disableFeatures: [...(options.disableFeatures ?? COMPONENT_DISABLED_FEATURES)],
      // disableFeatures is typed as a closed union; the list above is checked by the tests.
    } as never));
  } catch (cause) {
    throw hostError('SMTP_E_BUILD_FAILED', `componentize ${source} failed:\n${(cause as Error).message}`, cause);
  }
  writeFileSync(output, component);
  await transpileInto(component, join(COMPONENT_CACHE_DIR, contentHash(component)));
  return resolve(output);
}

interface Run {
  readonly status: number | null;
  readonly stderr: string;
}

function runZigAsync(zig: string, args: string[]): Promise<Run> {
  return new Promise((done) => {
    const child = spawn(zig, args, { env: zigEnv(), stdio: ['ignore', 'inherit', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (error) => done({ status: null, stderr: error.message }));
    child.on('close', (status) => done({ status, stderr }));
  });
}

function checkRun(run: Run, what: string): void {
  if (run.status !== 0) throw hostError('SMTP_E_BUILD_FAILED', `${what} failed:\n${run.stderr.trim()}`);
}

/** Zig 0.14 leaves the object file beside the library or module it emits (a failed link too); nothing reads it. */
function removeObjectBeside(output: string): void {
  rmSync(`${output}.o`, { force: true });
}

/** A C file that defines neither smtp_plugin_get_interface nor all six functions fails to link for wasm with this. */
const MISSING_INTERFACE = 'undefined symbol: smtp_plugin_get_interface';

/** Builds a C plugin with Zig's C compiler (see cPluginBuildArgs). */
async function buildC(zig: string, source: string, output: string, optimize: OptimizeMode, target: 'native' | 'wasm'): Promise<void> {
  if (target === 'native') {
    checkRun(await runZigAsync(zig, cPluginBuildArgs(source, output, optimize, target)), `zig build-lib (native) ${source}`);
    return;
  }
  const scratch = mkdtempSync(join(tmpdir(), 'smtp-c-wasm-'));
  try {
    const archive = join(scratch, 'libsmtp_wasm_interface.a');
    checkRun(await runZigAsync(zig, cInterfaceArchiveArgs(archive)), `zig build-lib ${C_WASM_INTERFACE_SOURCE}`);
    const run = await runZigAsync(zig, cPluginBuildArgs(source, output, optimize, target, archive));
    if (run.status !== 0 && run.stderr.includes(MISSING_INTERFACE)) {
      throw hostError('SMTP_E_BUILD_FAILED', `zig build-exe (wasm) ${source} failed: a C plugin must define smtp_plugin_get_interface or all six of smtp_plugin_init, _deinit, _get_metadata, _execute_hook, _enable and _disable (abi/smtp_plugin.h):\n${run.stderr.trim()}`);
    }
    checkRun(run, `zig build-exe (wasm) ${source}`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Builds one plugin source; returns the path of the library it wrote. */
export async function buildPlugin(options: PluginBuildOptions): Promise<string> {
  const target = options.target ?? 'native';
  if (!BUILD_TARGETS.includes(target)) throw hostError('SMTP_E_BUILD_TARGET', `unknown target "${String(target)}" (expected ${BUILD_TARGETS.join(' or ')})`);
  const language = sourceLanguage(options.source);
  if (language === 'c' && target === 'component') throw hostError('SMTP_E_BUILD_TARGET', `${options.source}: a C plugin builds with --target native or wasm; component is for JavaScript`);
  if (language === 'js' && target !== 'component') throw hostError('SMTP_E_BUILD_TARGET', `${options.source}: a JavaScript plugin builds with --target component only`);
  const output = options.output ?? defaultOutput(options.source, target);
  mkdirSync(dirname(resolve(output)), { recursive: true });
  if (target === 'component') return buildComponent(options.source, output, options.component);
  const zig = findZig(options.zigVersion ?? PINNED_ZIG_VERSION);
  const optimize = options.optimize ?? 'ReleaseFast';
  try {
    if (language === 'c') {
      await buildC(zig, options.source, output, optimize, target);
    } else {
      checkRun(await runZigAsync(zig, pluginBuildArgs(options.source, output, optimize, target)), `zig build (${target}) ${options.source}`);
    }
  } finally {
    removeObjectBeside(resolve(output));
  }
  return resolve(output);
}

/** Runs the Zig unit tests of one plugin source with @import("smtp-server") resolved. */
export function testPlugin(source: string, zigVersion: string = PINNED_ZIG_VERSION): number {
  const zig = findZig(zigVersion);
  const result = spawnSync(zig, ['test', '--dep', 'smtp-server', `-Mroot=${resolve(source)}`, `-Msmtp-server=${ZIG_MODULE_ROOT}`], {
    env: zigEnv(),
    stdio: 'inherit',
  });
  return result.status ?? 1;
}

/** Builds the native host runtime (src/runtime/host_runtime.zig). */
export async function buildRuntime(zigVersion: string = PINNED_ZIG_VERSION, output: string = RUNTIME_LIBRARY): Promise<string> {
  mkdirSync(dirname(output), { recursive: true });
  const zig = findZig(zigVersion);
  // Built beside and renamed into place: a process that has the old library
  // loaded, or loads it meanwhile, never sees a half-written file.
  const temporary = `${output}.${process.pid}.tmp${extname(output)}`;
  const run = await runZigAsync(zig, [
    'build-lib', '-dynamic', '-lc', '-O', 'ReleaseFast',
    '--dep', 'smtp-host', `-Mroot=${RUNTIME_SOURCE}`, `-Msmtp-host=${ZIG_HOST_MODULE_ROOT}`,
    `-femit-bin=${temporary}`,
  ]);
  checkRun(run, 'zig build-lib host_runtime.zig');
  removeObjectBeside(temporary);
  renameSync(temporary, output);
  // The child program of process-isolated plugins (src/isolation/), beside it.
  const child = join(dirname(output), basename(CHILD_PROGRAM));
  const childTemporary = `${child}.${process.pid}.tmp`;
  const childRun = await runZigAsync(zig, [
    'build-exe', '-lc', '-O', 'ReleaseFast',
    '--dep', 'smtp-host', `-Mroot=${CHILD_SOURCE}`, `-Msmtp-host=${ZIG_HOST_MODULE_ROOT}`,
    `-femit-bin=${childTemporary}`,
  ]);
  checkRun(childRun, 'zig build-exe plugin_child.zig');
  removeObjectBeside(childTemporary);
  renameSync(childTemporary, child);
  return output;
}
