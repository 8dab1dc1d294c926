/**
 * Promise wrappers around the callback `fs` API on raw file descriptors.
 * The spool calls these on its hot path: a callback request costs one
 * thread-pool hop, where `fs.promises` and FileHandle objects add promise
 * chains, a handle object and its close tracking on top.
 */
import fs from 'node:fs';

export function openFd(path: string, flags: string, mode = 0o600): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, mode, (error, fd) => (error ? reject(error) : resolve(fd))));
}

export function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (error) => (error ? reject(error) : resolve())));
}

/** Writes every byte of `buffers` at `position` (libuv loops over short writes and IOV_MAX); resolves with the bytes written. */
export function writevFd(fd: number, buffers: readonly Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.writev(fd, buffers as Buffer[], position, (error, written) => (error ? reject(error) : resolve(written))));
}

export function readFd(fd: number, buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buffer, offset, length, position, (error, read) => (error ? reject(error) : resolve(read))));
}

/** Reads exactly `length` bytes at `position`, or fails (a record cut short is an error to the caller). */
export async function readExactly(fd: number, length: number, position: number): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const read = await readFd(fd, buffer, done, length - done, position + done);
    if (read === 0) throw Object.assign(new Error(`read ${done} of ${length} bytes at offset ${position}: end of file`), { code: 'EOF' });
    done += read;
  }
  return buffer;
}

export function fdatasyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (error) => (error ? reject(error) : resolve())));
}

export function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, (error) => (error ? reject(error) : resolve())));
}

export function ftruncateFd(fd: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, length, (error) => (error ? reject(error) : resolve())));
}

export function fstatSize(fd: number): Promise<number> {
  return new Promise((resolve, reject) => fs.fstat(fd, (error, stats) => (error ? reject(error) : resolve(stats.size))));
}

/** unlink(2); one syscall, where `rm` adds an lstat. */
export function unlinkPath(path: string): Promise<void> {
  return new Promise((resolve, reject) => fs.unlink(path, (error) => (error ? reject(error) : resolve())));
}

/** unlink(2) that treats a file already gone as done. */
export async function unlinkIfPresent(path: string): Promise<boolean> {
  try {
    await unlinkPath(path);
    return true;
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return false;
    throw error;
  }
}

export function renamePath(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => fs.rename(from, to, (error) => (error ? reject(error) : resolve())));
}

/** fsync(2) of a directory, which makes the creates, renames and unlinks in it durable. */
export async function syncDirectory(dir: string): Promise<void> {
  // Windows cannot open a directory for fsync; NTFS journals metadata itself.
  if (process.platform === 'win32') return;
  const fd = await openFd(dir, 'r');
  try {
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

/** fsync(2) of a file already written and closed by someone else (copyFile). */
export async function syncFile(path: string): Promise<void> {
  const fd = await openFd(path, 'r+');
  try {
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

export function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
