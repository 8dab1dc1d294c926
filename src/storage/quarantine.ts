/**
 * Quarantine folders: where a plugin may ask a refused message to be kept,
 * confined to quarantine_dir; and writing a message there durably as
 * <id>.eml + <id>.json.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, mkdir, realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { closeFd, errorCode, fsyncFd, openFd, renamePath, syncDirectory, syncFile, unlinkIfPresent, writevFd } from './fs-raw.js';

/** The folder a message is quarantined in: the one asked for, or quarantine_dir itself with the reason it was refused. */
export interface QuarantineFolder {
  readonly dir: string;
  /** Why the folder asked for was refused; null when it is used (or none was asked for). */
  readonly refused: string | null;
}

/** Whether `path` is `base` or below it (both absolute and normalised). */
function isWithin(base: string, path: string): boolean {
  const rel = relative(base, path);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * Resolves the folder a plugin named for a quarantined message (the
 * `quarantine_path` metadata key). It is honoured only inside
 * `quarantineDir`: a relative path is taken relative to it, and an absolute
 * one must lie within it. Anything else (`/etc`, `../x`, a symlink that
 * leads out, a NUL) gives `quarantineDir` itself and the reason, because a
 * plugin, sandboxed or not, must not choose where the host writes.
 */
export async function quarantineFolder(quarantineDir: string, requested: string | undefined): Promise<QuarantineFolder> {
  const base = resolve(quarantineDir);
  if (requested === undefined || requested === '') return { dir: base, refused: null };
  if (requested.includes('\0')) return { dir: base, refused: 'it contains a NUL byte' };
  const target = resolve(base, requested);
  if (!isWithin(base, target)) return { dir: base, refused: `it resolves to ${target}, outside ${base}` };
  // Lexically inside; the deepest part that exists must also be inside once
  // symlinks are followed. The walk climbs one folder per step up to base.
  const realBase = await realpath(base).catch(() => base);
  let probe = target;
  for (;;) {
    try {
      const real = await realpath(probe);
      if (!isWithin(realBase, real)) return { dir: base, refused: `${probe} leads to ${real}, outside ${realBase}` };
      break;
    } catch (error) {
      if (errorCode(error) !== 'ENOENT' || probe === base) break;
      probe = dirname(probe);
    }
  }
  return { dir: target, refused: null };
}

/** Temp files are dot files, so nothing that scans for <id>.eml or <id>.json can mistake one for an entry. */
const TEMP_PREFIX = '.tmp-';

function tempPath(dir: string, id: string, ext: 'eml' | 'json'): string {
  return join(dir, `${TEMP_PREFIX}${id}.${randomBytes(4).toString('hex')}.${ext}`);
}

/** mkdir -p; with fsync, every folder it made is made durable in its parent. */
export async function makeDirectory(dir: string, fsync: boolean): Promise<void> {
  const created = await mkdir(dir, { recursive: true, mode: 0o700 });
  if (created === undefined || !fsync) return;
  const top = resolve(created);
  for (let d = resolve(dir); ; d = dirname(d)) {
    await syncDirectory(dirname(d));
    if (d === top || dirname(d) === d) break;
  }
}

/** Writes a new file (never over an existing one), fsynced when asked. */
export async function writeNewFile(path: string, data: Buffer, fsync: boolean): Promise<void> {
  const fd = await openFd(path, 'wx', 0o600);
  try {
    const written = await writevFd(fd, [data], 0);
    if (written !== data.length) throw new Error(`wrote ${written} of ${data.length} bytes`);
    if (fsync) await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

/**
 * Writes <id>.eml (the body, from memory or copied from a file) and
 * <id>.json into `dir`, each through a temp file, renamed into place and
 * made durable; returns the .eml path. Nothing is left behind on failure.
 */
export async function writeQuarantined(dir: string, id: string, body: Buffer | { readonly path: string }, record: object, fsync: boolean): Promise<string> {
  const emlPath = join(dir, `${id}.eml`);
  const emlTemp = tempPath(dir, id, 'eml');
  const jsonTemp = tempPath(dir, id, 'json');
  try {
    await makeDirectory(dir, fsync);
    if (Buffer.isBuffer(body)) {
      await writeNewFile(emlTemp, body, fsync);
    } else {
      await copyFile(body.path, emlTemp, constants.COPYFILE_EXCL);
      if (fsync) await syncFile(emlTemp);
    }
    await writeNewFile(jsonTemp, Buffer.from(JSON.stringify(record)), fsync);
    await renamePath(emlTemp, emlPath);
    await renamePath(jsonTemp, join(dir, `${id}.json`));
    if (fsync) await syncDirectory(dir);
    return emlPath;
  } catch (error) {
    await Promise.all([emlTemp, jsonTemp].map((path) => unlinkIfPresent(path).catch(() => undefined)));
    throw error;
  }
}
