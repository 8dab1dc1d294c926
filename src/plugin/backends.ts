import { closeSync, openSync, readSync } from 'node:fs';
import { extname } from 'node:path';
import { isComponent, loadComponentPlugin } from '../component/component-plugin.js';
import { hostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { loadNativePlugin } from '../native/native-plugin.js';
import { loadProcessPlugin, processesStopped } from '../isolation/process-plugin.js';
import { loadWasmPlugin } from '../wasm/wasm-plugin.js';
import { sandboxCounters } from '../runtime/counters.js';
import { loadWorkerPlugin, workersStopped } from '../wasm/worker-plugin.js';
import { isMilterSource, loadMilterPlugin } from '../milter/milter-plugin.js';
import { PluginFlag } from '../abi/hooks.js';
import { DEFAULT_PLUGIN_OPTIONS, ISOLATIONS, type Isolation, type PluginOptions } from './options.js';
import type { Plugin } from './plugin.js';

/**
 * The backend seam: what kind of file a plugin is, which backend runs it,
 * and whether that backend keeps the plugin out of the server's memory. The
 * manager, hot reload and the CLI load every plugin through openPlugin()
 * and never know which backend they got; a new backend is one file plus one
 * line in BACKENDS.
 */

/** File extensions of native plugin libraries, on any platform. */
export const NATIVE_EXTENSIONS: readonly string[] = ['.so', '.dylib', '.dll'];
export const WASM_EXTENSION = '.wasm';

/** What a plugin file holds, from its name and header. */
export type FileKind = 'native' | 'wasm-module' | 'component';

/** How a native library runs (config `isolation`): in the server's process, or in a child process of its own (src/isolation/). */
export { ISOLATIONS, type Isolation };

export interface OpenOptions {
  /** Limits, failure policy and grants. */
  readonly options?: PluginOptions;
  readonly logger?: Logger;
  /** For a native library: where it runs. Default: the options' isolation, else in-process. */
  readonly isolation?: Isolation;
}

interface Backend {
  /** The plugin's code runs outside the server's memory: a crash there is the plugin's, not the server's. */
  readonly isolated: boolean;
  load(path: string, options: PluginOptions, logger: Logger): Plugin | Promise<Plugin>;
}

/**
 * A core module runs in the event loop's thread unless it may wait: with
 * allow_connect grants, or when it (or its config) says it blocks, it gets a
 * worker thread of its own.
 */
async function loadSandboxed(path: string, options: PluginOptions, logger: Logger): Promise<Plugin> {
  if (options.allowConnect.length > 0 || options.blocking === true) return loadWorkerPlugin(path, options, logger);
  const plugin = loadWasmPlugin(path, { options, logger, counters: sandboxCounters(options.allowCounters, logger) });
  if (options.blocking === false || (plugin.metadata.flags & PluginFlag.BLOCKING) === 0n) return plugin;
  await plugin.unload();
  return loadWorkerPlugin(path, options, logger);
}

export const BACKENDS = {
  native: { isolated: false, load: (path, options, logger) => loadNativePlugin(path, { options, logger }) },
  process: { isolated: true, load: (path, options, logger) => loadProcessPlugin(path, { options, logger }) },
  wasm: { isolated: true, load: loadSandboxed },
  component: { isolated: true, load: (path, options, logger) => loadComponentPlugin(path, { options, logger }) },
  // A milter runs in a process of its own, reached over a socket (src/milter/).
  milter: { isolated: true, load: loadMilterPlugin },
} as const satisfies Record<string, Backend>;

export type BackendName = keyof typeof BACKENDS;

/** True when the .wasm file is a component (its header says so), not a core module. */
function isComponentFile(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const header = Buffer.alloc(8);
    readSync(fd, header, 0, 8, 0);
    return isComponent(header);
  } catch {
    return false; // the backend reports the missing file
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The kind of a plugin file, by its extension (and a .wasm file's header); SMTP_E_PLUGIN_UNSUPPORTED_FILE otherwise. */
export function fileKind(path: string): FileKind {
  const extension = extname(path).toLowerCase();
  if (NATIVE_EXTENSIONS.includes(extension)) return 'native';
  if (extension === WASM_EXTENSION) return isComponentFile(path) ? 'component' : 'wasm-module';
  throw hostError('SMTP_E_PLUGIN_UNSUPPORTED_FILE', `${path}: unknown plugin file type "${extension}" (expected ${[...NATIVE_EXTENSIONS, WASM_EXTENSION].join(', ')})`);
}

/** The backend that runs `path` with these options. */
export function backendFor(path: string, open: OpenOptions = {}): BackendName {
  if (isMilterSource(path)) return 'milter';
  const kind = fileKind(path);
  if (kind === 'component') return 'component';
  if (kind === 'wasm-module') return 'wasm';
  const isolation = open.isolation ?? open.options?.isolation ?? 'in-process';
  if (!ISOLATIONS.includes(isolation)) throw hostError('SMTP_E_PLUGIN_OPTIONS', `${path}: isolation "${String(isolation)}" is not one of ${ISOLATIONS.join(', ')}`);
  return isolation === 'process' ? 'process' : 'native';
}

/** Whether a plugin's code runs out of the server's memory (a crash there is the plugin's, not the server's). */
export function isIsolated(plugin: Plugin): boolean {
  return BACKENDS[plugin.backend].isolated;
}

/** Resolves when every backend's out-of-thread resources (sandbox workers) are gone: before the process exits. */
export async function backendsStopped(): Promise<void> {
  await workersStopped();
  await processesStopped();
}

/**
 * Opens a plugin file with the backend it needs (metadata read, nothing
 * initialised). Every failure is a coded error naming the file.
 */
export async function openPlugin(path: string, open: OpenOptions = {}): Promise<Plugin> {
  const backend = BACKENDS[backendFor(path, open)];
  return backend.load(path, open.options ?? DEFAULT_PLUGIN_OPTIONS, open.logger ?? silentLogger());
}
