import { extname } from 'node:path';
import { hostError } from '../errors.js';
import { loadNativePlugin } from '../native/native-plugin.js';
import type { Plugin } from './plugin.js';

/** File extensions of native plugin libraries, on any platform. */
export const NATIVE_EXTENSIONS: readonly string[] = ['.so', '.dylib', '.dll'];

/** Loads a plugin file with the backend its extension names. */
export function loadPluginFile(path: string): Plugin {
  const extension = extname(path).toLowerCase();
  if (NATIVE_EXTENSIONS.includes(extension)) return loadNativePlugin(path);
  throw hostError('SMTP_E_PLUGIN_UNSUPPORTED_FILE', `${path}: unknown plugin file type "${extension}" (expected ${NATIVE_EXTENSIONS.join(', ')})`);
}
