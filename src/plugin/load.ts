import { extname } from 'node:path';
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import { loadNativePlugin } from '../native/native-plugin.js';
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

/** Loads a plugin file with the backend its extension names: native or sandboxed. */
export function loadPluginFile(path: string, load: LoadOptions = {}): Plugin {
  const extension = extname(path).toLowerCase();
  if (NATIVE_EXTENSIONS.includes(extension)) return loadNativePlugin(path);
  if (extension === WASM_EXTENSION) return loadWasmPlugin(path, load);
  throw hostError('SMTP_E_PLUGIN_UNSUPPORTED_FILE', `${path}: unknown plugin file type "${extension}" (expected ${[...NATIVE_EXTENSIONS, WASM_EXTENSION].join(', ')})`);
}
