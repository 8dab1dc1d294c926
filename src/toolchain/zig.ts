import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { hostError } from '../errors.js';
import { TOOLCHAIN_DIR } from '../paths.js';

/** The Zig every build uses unless told otherwise: it accepts the guide's callconv(.C). */
export const PINNED_ZIG_VERSION = '0.14.1';
/** The newest ziglang on the Python package index when pinned; CI builds with both. */
export const NEWEST_ZIG_VERSION = '0.17.1';
export const SUPPORTED_ZIG_VERSIONS: readonly string[] = [PINNED_ZIG_VERSION, NEWEST_ZIG_VERSION];

/** Where the project installs Zig `version` (pip --target layout of the ziglang wheel). */
export function localZigPath(version: string): string {
  return join(TOOLCHAIN_DIR, `zig-${version}`, 'ziglang', process.platform === 'win32' ? 'zig.exe' : 'zig');
}

/** Zig's caches, kept inside the project so builds need nothing in $HOME. */
export const ZIG_CACHE_DIR = join(TOOLCHAIN_DIR, 'zig-cache');

export function zigEnv(): NodeJS.ProcessEnv {
  return { ...process.env, ZIG_GLOBAL_CACHE_DIR: ZIG_CACHE_DIR, ZIG_LOCAL_CACHE_DIR: ZIG_CACHE_DIR };
}

function versionOf(command: string): string | null {
  const result = spawnSync(command, ['version'], { encoding: 'utf8', env: zigEnv() });
  return result.status === 0 ? result.stdout.trim() : null;
}

/** Installs ziglang==version from the Python package index into .toolchain/. */
export function installZig(version: string): string {
  const target = join(TOOLCHAIN_DIR, `zig-${version}`);
  const args = ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-warn-script-location', '--target', target, `ziglang==${version}`];
  const tried: string[] = [];
  for (const python of ['python3', 'python']) {
    const result = spawnSync(python, args, { encoding: 'utf8', env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' } });
    if (result.status === 0 && existsSync(localZigPath(version))) return localZigPath(version);
    tried.push(`${python}: ${result.error ? result.error.message : (result.stderr || '').trim().split('\n').slice(-1)[0] ?? `exit ${result.status}`}`);
  }
  throw hostError(
    'SMTP_E_ZIG_NOT_FOUND',
    `Zig ${version} is not in ${target} nor on PATH, and installing it failed (${tried.join('; ')}). ` +
      `Install Python 3 with pip and run "python3 -m pip install --target ${target} ziglang==${version}", or put Zig ${version} on PATH.`,
  );
}

/**
 * The zig command for `version`: the project's own install, else a `zig`
 * on PATH of exactly that version, else a fresh install (when allowed).
 */
export function findZig(version: string = PINNED_ZIG_VERSION, options: { install?: boolean } = {}): string {
  if (!SUPPORTED_ZIG_VERSIONS.includes(version)) {
    throw hostError('SMTP_E_ZIG_VERSION', `Zig ${version} is not supported; use one of ${SUPPORTED_ZIG_VERSIONS.join(', ')}`);
  }
  const local = localZigPath(version);
  if (existsSync(local)) return local;
  if (versionOf('zig') === version) return 'zig';
  if (options.install === false) {
    throw hostError('SMTP_E_ZIG_NOT_FOUND', `Zig ${version} is not installed in ${TOOLCHAIN_DIR} nor on PATH: run "npm run setup"`);
  }
  return installZig(version);
}
