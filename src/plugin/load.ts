import { closeSync, openSync, readSync } from 'node:fs';
import { extname } from 'node:path';
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import { loadNativePlugin } from '../native/native-plugin.js';
import { isComponent, loadComponentPlugin } from '../component/component-plugin.js';
import { loadWasmPlugin } from '../wasm/wasm-plugin.js';
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
 * Loads a plugin file with the backend it needs: a native library by its
 * extension; a .wasm file as a core module (sandboxed) or, when its header
 * says so, as a component.
 */
export function loadPluginFile(path: string, load: LoadOptions = {}): Plugin {
  const extension = extname(path).toLowerCase();
  if (NATIVE_EXTENSIONS.includes(extension)) return loadNativePlugin(path);
  if (extension === WASM_EXTENSION) return isComponentFile(path) ? loadComponentPlugin(path, load) : loadWasmPlugin(path, load);
  throw hostError('SMTP_E_PLUGIN_UNSUPPORTED_FILE', `${path}: unknown plugin file type "${extension}" (expected ${[...NATIVE_EXTENSIONS, WASM_EXTENSION].join(', ')})`);
}
