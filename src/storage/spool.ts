import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readFile, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { hostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';


export interface Envelope {
  readonly from: string;
  readonly to: readonly string[];
}

export interface SpooledMessage {
  /** Unique and filename-safe: base-36 milliseconds, a dash, 16 hex digits. */
  readonly id: string;
  readonly envelope: Envelope;
  /** The message file: the raw RFC 5322 bytes as received. */
  readonly path: string;
  /** Bytes in the message file. */
  readonly size: number;
  /** ISO 8601 time the message was stored. */
  readonly receivedAt: string;
  /** The `extra` strings given to store(). */
  readonly extra: Readonly<Record<string, string>>;
  /** Recipients already delivered to (see markDelivered), so a restart does not deliver twice. */
  readonly delivered: readonly string[];
}

export interface SpoolOptions {
  readonly dir: string;
  /** Off only for tests and throwaway setups: without it a power loss can drop acknowledged mail. */
  readonly fsync: boolean;
  /**
   * When > 0, directory fsyncs requested within this many milliseconds are
   * coalesced into one, for throughput under concurrent load. 0 (the
   * default) fsyncs the directory once per operation.
   */
  readonly groupCommitMs?: number;
  readonly logger?: Logger;
}

/** What <id>.json holds. */
interface SpoolRecord {
  readonly version: 1;
  readonly id: string;
  readonly envelope: Envelope;
  readonly size: number;
  readonly receivedAt: string;
  readonly extra: Record<string, string>;
  readonly delivered: string[];
}

const ID_PATTERN = /^[0-9a-z]+-[0-9a-f]+$/;
/** Temp files are dot files, so nothing that scans for <id>.eml or <id>.json can mistake one for an entry. */
const TEMP_PREFIX = '.tmp-';

function newId(): string {
  // Base-36 milliseconds padded to a fixed width sort in time order as strings.
  return `${Date.now().toString(36).padStart(9, '0')}-${randomBytes(8).toString('hex')}`;
}

/** A fresh temp name in `dir` for a file that will become <id>.<ext>; the nonce keeps two writers apart. */
function tempPath(dir: string, id: string, ext: 'eml' | 'json'): string {
  return join(dir, `${TEMP_PREFIX}${id}.${randomBytes(4).toString('hex')}.${ext}`);
}

/** The id a temp file belongs to, from `.tmp-<id>.<nonce>.<ext>`. */
function tempOwner(name: string): string {
  return name.slice(TEMP_PREFIX.length).split('.')[0] ?? '';
}

/** fsync(2) of a directory, which makes the creates, renames and unlinks in it durable. */
export async function syncDirectory(dir: string): Promise<void> {
  // Windows cannot open a directory for fsync; NTFS journals metadata itself.
  if (process.platform === 'win32') return;
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync(2) of a file already written and closed by someone else (copyFile). */
export async function syncFile(path: string): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `data` to a new file (never over an existing one) and returns its size in bytes. */
async function writeNewFile(path: string, data: Buffer | Uint8Array | AsyncIterable<Buffer | Uint8Array | string>, fsync: boolean): Promise<number> {
  const handle = await open(path, 'wx', 0o600);
  let size = 0;
  try {
    const writeAll = async (chunk: Uint8Array): Promise<void> => {
      let offset = 0;
      while (offset < chunk.length) offset += (await handle.write(chunk, offset, chunk.length - offset)).bytesWritten;
      size += chunk.length;
    };
    if (data instanceof Uint8Array) await writeAll(data);
    else for await (const chunk of data) await writeAll(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    if (fsync) await handle.sync();
  } finally {
    await handle.close();
  }
  return size;
}

/**
 * Directory fsyncs, optionally group-committed: callers that arrive while a
 * batch is still waiting for its timer share that batch's single fsync. A
 * batch whose fsync has started takes no new callers, because their renames
 * may have landed after the fsync began; they wait for the next batch.
 */
class DirectorySync {
  readonly #dir: string;
  readonly #windowMs: number;
  #waiting: Promise<void> | undefined;

  constructor(dir: string, windowMs: number) {
    this.#dir = dir;
    this.#windowMs = windowMs;
  }

  sync(): Promise<void> {
    if (this.#windowMs <= 0) return syncDirectory(this.#dir);
    this.#waiting ??= new Promise<void>((resolve, reject) => {
      setTimeout(() => {
        this.#waiting = undefined;
        syncDirectory(this.#dir).then(resolve, reject);
      }, this.#windowMs);
    });
    return this.#waiting;
  }
}

function isRecord(value: unknown): value is SpoolRecord {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Partial<SpoolRecord>;
  const strings = (list: unknown): boolean => Array.isArray(list) && list.every((item) => typeof item === 'string');
  const stringMap = (map: unknown): boolean => typeof map === 'object' && map !== null && Object.values(map).every((v) => typeof v === 'string');
  return (
    typeof record.id === 'string' &&
    typeof record.envelope === 'object' &&
    record.envelope !== null &&
    typeof record.envelope.from === 'string' &&
    strings(record.envelope.to) &&
    typeof record.size === 'number' &&
    typeof record.receivedAt === 'string' &&
    stringMap(record.extra) &&
    strings(record.delivered)
  );
}

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

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * The durable queue of accepted messages. Each entry is <id>.eml (the bytes
 * as received) plus <id>.json (envelope and progress); the rename of the
 * .json is the commit point, so a reader never sees half an entry. One
 * process owns a spool directory.
 */
export class Spool {
  readonly dir: string;
  readonly #fsync: boolean;
  readonly #logger: Logger;
  readonly #dirSync: DirectorySync;
  /** Ids whose store() has not resolved: list() neither returns nor cleans them. */
  readonly #storing = new Set<string>();
  /** Per id, the tail of its chain of json rewrites and removals, so they never interleave. */
  readonly #locks = new Map<string, Promise<unknown>>();

  constructor(options: SpoolOptions) {
    this.dir = options.dir;
    this.#fsync = options.fsync;
    this.#logger = (options.logger ?? silentLogger()).child({ component: 'spool' });
    this.#dirSync = new DirectorySync(options.dir, options.groupCommitMs ?? 0);
  }

  /** Creates the directory (mkdir -p). */
  async open(): Promise<void> {
    try {
      const created = await mkdir(this.dir, { recursive: true, mode: 0o700 });
      if (created !== undefined && this.#fsync) await syncDirectory(dirname(created));
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot create the spool directory ${this.dir}: ${(cause as Error).message}`, cause);
    }
  }

  /**
   * Durably stores one message and resolves only when a crash can no longer
   * lose it: the .eml and .json are written to temp files and fsynced, the
   * .eml is renamed into place, then the .json (the commit), then the
   * directory is fsynced.
   */
  async store(envelope: Envelope, data: Buffer | AsyncIterable<Buffer> | NodeJS.ReadableStream, extra: Record<string, string> = {}): Promise<SpooledMessage> {
    if (envelope.to.length === 0) throw hostError('SMTP_E_SPOOL_WRITE', 'cannot store a message without recipients');
    const id = newId();
    const receivedAt = new Date().toISOString();
    const emlPath = join(this.dir, `${id}.eml`);
    const jsonPath = join(this.dir, `${id}.json`);
    const emlTemp = tempPath(this.dir, id, 'eml');
    const jsonTemp = tempPath(this.dir, id, 'json');
    this.#storing.add(id);
    let committed = false;
    try {
      const size = await writeNewFile(emlTemp, data, this.#fsync);
      const record: SpoolRecord = {
        version: 1,
        id,
        envelope: { from: envelope.from, to: [...envelope.to] },
        size,
        receivedAt,
        extra: { ...extra },
        delivered: [],
      };
      await writeNewFile(jsonTemp, Buffer.from(JSON.stringify(record)), this.#fsync);
      await rename(emlTemp, emlPath);
      await rename(jsonTemp, jsonPath);
      committed = true;
      if (this.#fsync) await this.#dirSync.sync();
      this.#logger.debug({ id, size, recipients: envelope.to.length }, 'message spooled');
      return { id, envelope: record.envelope, path: emlPath, size, receivedAt, extra: record.extra, delivered: [] };
    } catch (cause) {
      // The caller will answer 4xx, so the client sends again: an entry left
      // behind would be delivered twice. Without the .json it is no entry.
      await Promise.all([emlTemp, jsonTemp, ...(committed ? [jsonPath] : []), emlPath].map((path) => rm(path, { force: true }).catch(() => undefined)));
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot store message ${id} in ${this.dir}: ${(cause as Error).message}`, cause);
    } finally {
      this.#storing.delete(id);
    }
  }

  /**
   * Every complete entry, oldest first. Leftovers of a crash are cleaned up
   * on the way: temp files, and an .eml without its .json (a store that never
   * committed, so never acknowledged, or a removal cut short).
   */
  async list(): Promise<SpooledMessage[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_READ', `cannot read the spool directory ${this.dir}: ${(cause as Error).message}`, cause);
    }
    const busy = (id: string): boolean => this.#storing.has(id) || this.#locks.has(id);
    const emls = new Set<string>();
    const jsons = new Set<string>();
    const leftovers: string[] = [];
    for (const name of names) {
      if (name.startsWith(TEMP_PREFIX)) {
        if (!busy(tempOwner(name))) leftovers.push(name);
      } else if (name.endsWith('.eml') && ID_PATTERN.test(name.slice(0, -4))) {
        emls.add(name.slice(0, -4));
      } else if (name.endsWith('.json') && ID_PATTERN.test(name.slice(0, -5))) {
        jsons.add(name.slice(0, -5));
      }
    }
    for (const id of emls) if (!jsons.has(id) && !busy(id)) leftovers.push(`${id}.eml`);

    const messages: SpooledMessage[] = [];
    for (const id of jsons) {
      if (this.#storing.has(id)) continue;
      const message = await this.#read(id);
      if (message !== undefined) messages.push(message);
    }

    if (leftovers.length > 0) {
      this.#logger.info({ files: leftovers }, 'removing leftovers of an interrupted write');
      try {
        await Promise.all(leftovers.map((name) => rm(join(this.dir, name), { force: true })));
        if (this.#fsync) await this.#dirSync.sync();
      } catch (cause) {
        throw hostError('SMTP_E_SPOOL_WRITE', `cannot remove leftovers in ${this.dir}: ${(cause as Error).message}`, cause);
      }
    }
    return messages.sort((a, b) => (a.receivedAt === b.receivedAt ? (a.id < b.id ? -1 : 1) : a.receivedAt < b.receivedAt ? -1 : 1));
  }

  /** Removes an entry (both files); removing a missing entry is not an error. */
  async remove(id: string): Promise<void> {
    this.#checkId(id);
    await this.#withLock(id, () => this.#remove(id));
  }

  /**
   * Copies an entry into `quarantineDir` as <id>.eml and <id>.json (the
   * record plus `reason`), durably, then removes it from the spool; returns
   * the quarantined message path. A crash in between leaves a copy in both
   * places, never in neither.
   */
  async quarantine(message: SpooledMessage, quarantineDir: string, reason: Record<string, string>): Promise<string> {
    this.#checkId(message.id);
    return this.#withLock(message.id, async () => {
      const emlPath = join(quarantineDir, `${message.id}.eml`);
      const jsonPath = join(quarantineDir, `${message.id}.json`);
      const emlTemp = tempPath(quarantineDir, message.id, 'eml');
      const jsonTemp = tempPath(quarantineDir, message.id, 'json');
      try {
        const created = await mkdir(quarantineDir, { recursive: true, mode: 0o700 });
        // Folders made here must survive a crash too: each one's entry is in its parent.
        if (created !== undefined && this.#fsync) {
          const top = resolve(created);
          for (let dir = resolve(quarantineDir); ; dir = dirname(dir)) {
            await syncDirectory(dirname(dir));
            if (dir === top || dirname(dir) === dir) break;
          }
        }
        const record = (await this.#readRecord(message.id)) ?? this.#recordOf(message);
        await copyFile(message.path, emlTemp);
        if (this.#fsync) await syncFile(emlTemp);
        const quarantined = { ...record, quarantinedAt: new Date().toISOString(), reason };
        await writeNewFile(jsonTemp, Buffer.from(JSON.stringify(quarantined)), this.#fsync);
        await rename(emlTemp, emlPath);
        await rename(jsonTemp, jsonPath);
        if (this.#fsync) await syncDirectory(quarantineDir);
      } catch (cause) {
        await Promise.all([emlTemp, jsonTemp].map((path) => rm(path, { force: true }).catch(() => undefined)));
        throw hostError('SMTP_E_SPOOL_WRITE', `cannot quarantine message ${message.id} into ${quarantineDir}: ${(cause as Error).message}`, cause);
      }
      await this.#remove(message.id);
      this.#logger.info({ id: message.id, dir: quarantineDir }, 'message quarantined');
      return emlPath;
    });
  }

  /**
   * Records that `recipient` (or each of several) has been delivered, by
   * rewriting the .json atomically, so a restart does not deliver twice.
   */
  async markDelivered(id: string, recipient: string | readonly string[]): Promise<void> {
    this.#checkId(id);
    const recipients = typeof recipient === 'string' ? [recipient] : recipient;
    await this.#withLock(id, async () => {
      const record = await this.#readRecord(id);
      if (record === undefined) throw hostError('SMTP_E_SPOOL_READ', `message ${id} is not in the spool ${this.dir}`);
      const delivered = [...record.delivered];
      for (const r of recipients) if (!delivered.includes(r)) delivered.push(r);
      if (delivered.length === record.delivered.length) return;
      const jsonTemp = tempPath(this.dir, id, 'json');
      try {
        await writeNewFile(jsonTemp, Buffer.from(JSON.stringify({ ...record, delivered })), this.#fsync);
        await rename(jsonTemp, join(this.dir, `${id}.json`));
        if (this.#fsync) await this.#dirSync.sync();
      } catch (cause) {
        await rm(jsonTemp, { force: true }).catch(() => undefined);
        throw hostError('SMTP_E_SPOOL_WRITE', `cannot record delivery progress of message ${id}: ${(cause as Error).message}`, cause);
      }
    });
  }

  /** Removes the .json first: once it is gone the entry no longer exists, and list() sweeps a stray .eml. */
  async #remove(id: string): Promise<void> {
    try {
      await rm(join(this.dir, `${id}.json`), { force: true });
      await rm(join(this.dir, `${id}.eml`), { force: true });
      if (this.#fsync) await this.#dirSync.sync();
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot remove message ${id} from ${this.dir}: ${(cause as Error).message}`, cause);
    }
  }

  /** The record in <id>.json; undefined when there is none. */
  async #readRecord(id: string): Promise<SpoolRecord | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.dir, `${id}.json`), 'utf8');
    } catch (cause) {
      if (errorCode(cause) === 'ENOENT') return undefined;
      throw hostError('SMTP_E_SPOOL_READ', `cannot read ${id}.json in ${this.dir}: ${(cause as Error).message}`, cause);
    }
    let record: unknown;
    try {
      record = JSON.parse(text);
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_READ', `${id}.json in ${this.dir} is not JSON`, cause);
    }
    if (!isRecord(record) || record.id !== id) throw hostError('SMTP_E_SPOOL_READ', `${id}.json in ${this.dir} is not a spool record`);
    return record;
  }

  /**
   * One entry for list(). An entry that cannot be read is skipped but left
   * in place: it may hold acknowledged mail, so only an operator may drop it.
   */
  async #read(id: string): Promise<SpooledMessage | undefined> {
    const path = join(this.dir, `${id}.eml`);
    try {
      const record = await this.#readRecord(id);
      if (record === undefined) return undefined; // removed meanwhile
      const { size } = await stat(path);
      if (size !== record.size) throw hostError('SMTP_E_SPOOL_READ', `${id}.eml holds ${size} bytes, its record says ${record.size}`);
      return { id, envelope: record.envelope, path, size, receivedAt: record.receivedAt, extra: record.extra, delivered: record.delivered };
    } catch (error) {
      if (errorCode(error) === 'ENOENT' && this.#locks.has(id)) return undefined; // being removed
      this.#logger.warn({ id, err: error }, 'skipping a spool entry that cannot be read; it is left in place');
      return undefined;
    }
  }

  #recordOf(message: SpooledMessage): SpoolRecord {
    return {
      version: 1,
      id: message.id,
      envelope: message.envelope,
      size: message.size,
      receivedAt: message.receivedAt,
      extra: { ...message.extra },
      delivered: [...message.delivered],
    };
  }

  /** Ids become file names: refuse anything that is not one this spool made. */
  #checkId(id: string): void {
    if (!ID_PATTERN.test(id)) throw hostError('SMTP_E_SPOOL_READ', `not a spool message id: ${JSON.stringify(id)}`);
  }

  async #withLock<T>(id: string, run: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(id) ?? Promise.resolve();
    const result = previous.then(run, run);
    const tail = result.catch(() => undefined);
    this.#locks.set(id, tail);
    void tail.then(() => {
      if (this.#locks.get(id) === tail) this.#locks.delete(id);
    });
    return result;
  }
}
