import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findProjectRoot(start: string): string {
  let dir = start;
  for (let depth = 0; depth < 8; depth++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'abi', 'smtp_plugin.h'))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`cannot find the smtp-plugin-host root above ${start}`);
}

/** The checkout (or installed package) root, whether running from src/ or dist/. */
export const PROJECT_ROOT = findProjectRoot(dirname(fileURLToPath(import.meta.url)));
export const ABI_DIR = join(PROJECT_ROOT, 'abi');
export const ABI_HEADER = join(ABI_DIR, 'smtp_plugin.h');
export const ABI_WIT = join(ABI_DIR, 'smtp-plugin.wit');
export const ZIG_MODULE_ROOT = join(ABI_DIR, 'zig', 'smtp-server.zig');
export const ZIG_HOST_MODULE_ROOT = join(ABI_DIR, 'zig', 'metadata_host.zig');
export const TOOLCHAIN_DIR = join(PROJECT_ROOT, '.toolchain');
export const BUILD_DIR = join(PROJECT_ROOT, 'build');
export const RUNTIME_SOURCE = join(PROJECT_ROOT, 'src', 'runtime', 'host_runtime.zig');

/** lib<name>.so, lib<name>.dylib or <name>.dll, as Zig names a dynamic library. */
export function sharedLibraryName(name: string, platform: NodeJS.Platform = process.platform): string {
  if (platform === 'win32') return `${name}.dll`;
  return `lib${name}.${platform === 'darwin' ? 'dylib' : 'so'}`;
}

export const RUNTIME_LIBRARY = join(BUILD_DIR, 'native', sharedLibraryName('smtp_host_runtime'));

/** The program that runs a native plugin in a child process (isolation = "process"), built beside the runtime. */
export const CHILD_SOURCE = join(PROJECT_ROOT, 'src', 'runtime', 'plugin_child.zig');
export const CHILD_PROGRAM = join(BUILD_DIR, 'native', 'smtp-plugin-child');
