import { closeSync, openSync, readSync } from 'node:fs';
import { extname } from 'node:path';
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import { loadNativePlugin } from '../native/native-plugin.js';
import { isComponent, loadComponentPlugin } from '../component/component-plugin.js';
import { loadWasmPlugin } from '../wasm/wasm-plugin.js';
import { loadWorkerPlugin } from '../wasm/worker-plugin.js';
import { PluginFlag } from '../abi/hooks.js';
import { DEFAULT_PLUGIN_OPTIONS } from './options.js';
import { silentLogger } from '../log.js';
import type { PluginOptions } from './options.js';
import type { Plugin } from './plugin.js';

/** File extensions of native plugin libraries, on any platform. */
export const NATIVE_EXTENSIONS: readonly string[] = ['.so', '.dylib', '.dll'];
export const WASM_EXTENSION = '.wasm';

export interface LoadOptions {
  /** Limits and failure policy; the limits apply to sandboxed plugins. */
  readonly options?: PluginOptions;
  readonly logger?: Logger;
}

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

/**
 * A core module runs in the event loop's thread unless it may wait: with
 * allow_connect grants, or when it (or its config) says it blocks, it gets a
 * worker thread of its own.
 */
function loadSandboxed(path: string, load: LoadOptions): Plugin {
  const options = load.options ?? DEFAULT_PLUGIN_OPTIONS;
  const logger = load.logger ?? silentLogger();
  if (options.allowConnect.length > 0 || options.blocking === true) return loadWorkerPlugin(path, options, logger);
  const plugin = loadWasmPlugin(path, load);
  if (options.blocking === false || (plugin.metadata.flags & PluginFlag.BLOCKING) === 0n) return plugin;
  plugin.unload();
  return loadWorkerPlugin(path, options, logger);
}

/**
 * Loads a plugin file with the backend it needs: a native library by its
 * extension; a .wasm file as a core module (sandboxed) or, when its header
 * says so, as a component.
 */
export function loadPluginFile(path: string, load: LoadOptions = {}): Plugin {
  const extension = extname(path).toLowerCase();
  if (NATIVE_EXTENSIONS.includes(extension)) return loadNativePlugin(path, load);
  if (extension === WASM_EXTENSION) return isComponentFile(path) ? loadComponentPlugin(path, load) : loadSandboxed(path, load);
  throw hostError('SMTP_E_PLUGIN_UNSUPPORTED_FILE', `${path}: unknown plugin file type "${extension}" (expected ${[...NATIVE_EXTENSIONS, WASM_EXTENSION].join(', ')})`);
}
