/**
 * The durable queue of accepted messages, as an append-only segment log
 * (docs/spool.md). A message is one STORE record (its body inline, or a
 * reference to large/<id>.eml); delivery progress is DELIVERED records;
 * removal is a DONE record. Records from many messages share one writev and
 * one fdatasync (group commit). The live messages are indexed in memory,
 * rebuilt from the segments at open. One process owns a spool directory.
 */
import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { hostError, isHostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { closeFd, errorCode, fstatSize, openFd, renamePath, unlinkIfPresent } from './fs-raw.js';
import { Incoming, type Envelope, type IncomingHost, type IncomingMessage, type SpooledMessage } from './incoming.js';
import { makeDirectory, writeQuarantined } from './quarantine.js';
import { BodyKind, HEADER_BYTES, INLINE_BYTES_LIMIT, RecordFormatError, crcMatches, decodeStore, encodeDelivered, encodeDone, encodeSegment, encodeStore, readHeader, type EncodedRecord } from './record.js';
import { ID_PATTERN, newId } from './message-id.js';
import { adoptOldLayout, removeOrphans, type Adoption } from './old-layout.js';
import { IndexBuilder, type Entry } from './recovery.js';
import { SEGMENT_NAME, SegmentLog, damagedName, segmentName, type LogStats, type Position, type Segment } from './segment-log.js';

export { quarantineFolder, type QuarantineFolder } from './quarantine.js';
export { syncDirectory, syncFile } from './fs-raw.js';
export type { Envelope, IncomingMessage, SpooledMessage } from './incoming.js';

export interface SpoolOptions {
  readonly dir: string;
  /** Off only for tests, tmpfs and throwaway setups: without it a power loss can drop acknowledged mail. Writes are batched either way. */
  readonly fsync: boolean;
  /**
   * 0 (the default): a commit that arrives while an fsync runs shares the
   * next one, with no added wait. > 0: a commit also waits up to this many
   * milliseconds for others to share its fsync.
   */
  readonly groupCommitMs?: number;
  readonly logger?: Logger;
  /** Messages up to this many bytes are held in memory and stored inside the segment; larger ones stream to large/<id>.eml. */
  readonly inlineBytesMax?: number;
  /** A segment file is closed and a new one started once it would grow past this many bytes. */
  readonly segmentBytesMax?: number;
}

export const DEFAULT_INLINE_BYTES_MAX = 256 * 2 ** 10;
export const DEFAULT_SEGMENT_BYTES_MAX = 64 * 2 ** 20;
/** Smallest segmentBytesMax accepted: a few records (tests use small segments to exercise rolling). */
export const SEGMENT_BYTES_MIN = 1024;
/**
 * The oldest closed segment is compacted (its live records copied forward,
 * then it is deleted) once they take at most this share of segmentBytesMax:
 * each compaction frees a segment at the cost of writing a quarter of one.
 */
const COMPACT_LIVE_FRACTION = 0.25;
/** Bytes of copies queued at once while compacting. */
const COMPACT_BATCH_BYTES = 4 * 2 ** 20;
export const LARGE_SUBDIR = 'large';
const SEGMENT_RECORD_BYTES = encodeSegment(0, 0).bytes;

/** Directories open in this process: a second Spool on one would corrupt both. */
const openDirs = new Set<string>();

function checkedOption(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max || (name !== 'groupCommitMs' && !Number.isInteger(value))) {
    throw hostError('SMTP_E_CONFIG', `spool option ${name}: expected ${name === 'groupCommitMs' ? 'a number' : 'an integer'} from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return value;
}

type SpoolState = 'new' | 'opening' | 'open' | 'closed';

export class Spool {
  readonly dir: string;
  /** Counters since open: writev batches, records written, fsync rounds. */
  readonly stats = { batches: 0, records: 0, fsyncs: 0, compactions: 0, segmentsRemoved: 0 };
  readonly #fsync: boolean;
  readonly #groupCommitMs: number;
  readonly #inlineBytesMax: number;
  readonly #segmentBytesMax: number;
  readonly #logger: Logger;
  readonly #largeDir: string;
  readonly #index = new Map<string, Entry>();
  #log: SegmentLog | null = null;
  #state: SpoolState = 'new';
  #opening: Promise<void> | null = null;
  #largeDirMade: Promise<void> | null = null;
  #maintaining: Promise<void> | null = null;
  #maintainAgain = false;
  #maintenanceScheduled = false;
  /** Unlinks of large/ files whose DONE is durable, awaited by close(). */
  readonly #unlinking = new Set<Promise<void>>();
  readonly #host: IncomingHost;

  constructor(options: SpoolOptions) {
    if (typeof options.dir !== 'string' || options.dir === '') throw hostError('SMTP_E_CONFIG', `spool option dir: expected a non-empty path, got ${JSON.stringify(options.dir)}`);
    if (typeof options.fsync !== 'boolean') throw hostError('SMTP_E_CONFIG', `spool option fsync: expected a boolean, got ${JSON.stringify(options.fsync)}`);
    this.dir = options.dir;
    this.#fsync = options.fsync;
    this.#groupCommitMs = checkedOption('groupCommitMs', options.groupCommitMs, 0, 0, 10_000);
    this.#inlineBytesMax = checkedOption('inlineBytesMax', options.inlineBytesMax, DEFAULT_INLINE_BYTES_MAX, 0, INLINE_BYTES_LIMIT);
    this.#segmentBytesMax = checkedOption('segmentBytesMax', options.segmentBytesMax, DEFAULT_SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, 2 ** 40);
    this.#logger = (options.logger ?? silentLogger()).child({ component: 'spool' });
    this.#largeDir = join(this.dir, LARGE_SUBDIR);
    this.#host = {
      inlineBytesMax: this.#inlineBytesMax,
      fsync: this.#fsync,
      largeDirReady: () => this.#makeLargeDir(),
      largePath: (id) => this.#largePath(id),
      largeCreated: () => this.#log?.largeChanged(),
      commitInline: (id, receivedAt, envelope, extra, body, size) => this.#commit(id, receivedAt, envelope, extra, body, size, BodyKind.INLINE),
      commitFile: (id, receivedAt, envelope, extra, size) => this.#commit(id, receivedAt, envelope, extra, [], size, BodyKind.FILE),
    };
  }

  /** mkdir -p, recovers what the segments hold, adopts a spool of the previous layout, starts a fresh segment. */
  open(): Promise<void> {
    this.#opening ??= this.#open();
    return this.#opening;
  }

  async #open(): Promise<void> {
    const key = resolve(this.dir);
    if (openDirs.has(key)) throw hostError('SMTP_E_SPOOL_WRITE', `the spool ${this.dir} is already open in this process`);
    openDirs.add(key);
    this.#state = 'opening';
    try {
      await this.#recover();
      this.#state = 'open';
    } catch (cause) {
      openDirs.delete(key);
      this.#state = 'closed';
      const log = this.#log;
      this.#log = null;
      await log?.close().catch(() => undefined);
      if (isHostError(cause)) throw cause;
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot open the spool ${this.dir}: ${(cause as Error).message}`, cause);
    }
  }

  /** Writes what is queued, makes it durable, closes every file. Idempotent. */
  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    if (this.#state === 'opening') await this.#opening?.catch(() => undefined);
    if (this.#state !== 'open') return;
    this.#state = 'closed';
    await this.#maintaining;
    await this.#log?.close();
    await Promise.all(this.#unlinking);
    openDirs.delete(resolve(this.dir));
  }

  /** Starts receiving one message (one DATA). */
  receive(): IncomingMessage {
    this.#checkOpen('SMTP_E_SPOOL_WRITE');
    return new Incoming(this.#host, newId(), new Date().toISOString());
  }

  /** Convenience (tests, quarantine paths): receive, write everything, commit. */
  async store(envelope: Envelope, data: Buffer | AsyncIterable<Buffer> | NodeJS.ReadableStream, extra: Record<string, string> = {}): Promise<SpooledMessage> {
    if (envelope.to.length === 0) throw hostError('SMTP_E_SPOOL_WRITE', 'cannot store a message without recipients');
    const incoming = this.receive();
    try {
      if (data instanceof Uint8Array) {
        const bytes = data as Uint8Array;
        const wait = incoming.write(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
        if (wait) await wait;
      } else {
        for await (const chunk of data as AsyncIterable<Buffer | string>) {
          const wait = incoming.write(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
          if (wait) await wait;
        }
      }
    } catch (cause) {
      await incoming.discard();
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot store message ${incoming.id} in ${this.dir}: ${(cause as Error).message}`, cause);
    }
    return incoming.commit(envelope, extra);
  }

  /** Live messages, oldest first. */
  async list(): Promise<SpooledMessage[]> {
    this.#checkOpen('SMTP_E_SPOOL_READ');
    const messages = [...this.#index.values()].map(messageOf);
    // Stable: messages of the same millisecond stay in log order.
    return messages.sort((a, b) => (a.receivedAt < b.receivedAt ? -1 : a.receivedAt > b.receivedAt ? 1 : 0));
  }

  has(id: string): boolean {
    return this.#index.has(id);
  }

  /** The whole body of a live message. */
  async readBody(message: SpooledMessage): Promise<Buffer> {
    const entry = this.#entry(message.id);
    if (entry.path !== undefined) {
      try {
        return await readFile(entry.path);
      } catch (cause) {
        throw hostError('SMTP_E_SPOOL_READ', `cannot read message ${entry.id} from ${entry.path}: ${(cause as Error).message}`, cause);
      }
    }
    return this.#readInline(entry);
  }

  /** The body as a stream: a large message's file is read as it goes, never whole. */
  openBody(message: SpooledMessage): NodeJS.ReadableStream {
    const entry = this.#index.get(message.id);
    const path = entry?.path ?? message.path;
    if (path !== undefined) return createReadStream(path);
    const spool = this;
    return Readable.from(
      (async function* body(): AsyncGenerator<Buffer> {
        yield await spool.readBody(message);
      })(),
    );
  }

  /** Removes a message (appends its DONE record); removing a missing id is not an error. */
  /**
   * Removes a message (a DONE record). `durable`: resolve only once the DONE
   * is on disk, for an admin's delete, which must not come back after a
   * power cut; delivery's removal need not wait (see below).
   */
  async remove(id: string, options: { durable?: boolean } = {}): Promise<void> {
    this.#checkId(id);
    this.#checkOpen('SMTP_E_SPOOL_WRITE');
    const entry = this.#index.get(id);
    if (entry === undefined) return;
    this.#forget(entry);
    const path = entry.path;
    try {
      // A lost DONE (power cut before its fsync) means one more delivery, never a lost message: it rides along with the next batch.
      await this.#log!.append(encodeDone(id), options.durable === true, path === undefined ? undefined : { afterDurable: () => this.#unlinkLarge(path) });
    } catch (cause) {
      const segment = this.#log?.segments.get(entry.sequence);
      if (segment !== undefined && !this.#index.has(id)) {
        // Still on disk and live there: keep it, so the caller's retry finds it.
        this.#index.set(id, entry);
        segment.live++;
        segment.liveBytes += entry.bytes;
      }
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot remove message ${id} from ${this.dir}: ${(cause as Error).message}`, cause);
    }
  }

  /** Records that `recipients` were delivered, durably, so a restart does not deliver to them again. */
  async markDelivered(id: string, recipients: string | readonly string[]): Promise<void> {
    this.#checkId(id);
    const entry = this.#entry(id);
    const fresh = [...new Set(typeof recipients === 'string' ? [recipients] : recipients)].filter((r) => !entry.delivered.includes(r));
    if (fresh.length === 0) return;
    try {
      await this.#log!.append(encodeDelivered(id, fresh), true, {
        onWritten: () => {
          const current = this.#index.get(id);
          if (current !== undefined) for (const r of fresh) if (!current.delivered.includes(r)) current.delivered.push(r);
        },
      });
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot record delivery progress of message ${id}: ${(cause as Error).message}`, cause);
    }
  }

  /**
   * Copies the message into `dir` as <id>.eml + <id>.json (record + reason)
   * durably, then removes it from the spool; returns the .eml path. A crash
   * in between leaves it in both places, never in neither.
   */
  async quarantine(message: SpooledMessage, dir: string, reason: Record<string, string>): Promise<string> {
    this.#checkId(message.id);
    const entry = this.#index.get(message.id);
    const current = entry === undefined ? message : messageOf(entry);
    let path: string;
    try {
      const body = current.path !== undefined ? { path: current.path } : await this.readBody(current);
      const record = {
        version: 1,
        id: current.id,
        envelope: current.envelope,
        size: current.size,
        receivedAt: current.receivedAt,
        extra: current.extra,
        delivered: current.delivered,
        quarantinedAt: new Date().toISOString(),
        reason,
      };
      path = await writeQuarantined(dir, current.id, body, record, this.#fsync);
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot quarantine message ${message.id} into ${dir}: ${(cause as Error).message}`, cause);
    }
    await this.remove(message.id);
    this.#logger.info({ id: message.id, dir }, 'message quarantined');
    return path;
  }

  /** Deletes segments no live message needs and compacts the oldest when few of its records are live; resolves when done. */
  async compact(): Promise<void> {
    this.#checkOpen('SMTP_E_SPOOL_WRITE');
    do {
      this.#maintainAgain = true;
      this.#runMaintenance();
      await this.#maintaining;
    } while (this.#maintainAgain);
  }

  // ---- writing ----

  async #commit(id: string, receivedAt: string, envelope: Envelope, extra: Record<string, string>, body: Buffer[], size: number, bodyKind: (typeof BodyKind)[keyof typeof BodyKind]): Promise<SpooledMessage> {
    this.#checkOpen('SMTP_E_SPOOL_WRITE');
    const to = [...envelope.to];
    const copyOfExtra = { ...extra };
    let record: EncodedRecord;
    try {
      record = encodeStore({ id, receivedAt, from: envelope.from, to, delivered: [], extra: copyOfExtra, size, bodyKind }, body);
    } catch (cause) {
      if (cause instanceof RecordFormatError) throw hostError('SMTP_E_SPOOL_WRITE', `cannot store message ${id}: ${cause.message}`, cause);
      throw cause;
    }
    const entry: Entry = {
      id,
      envelope: { from: envelope.from, to },
      size,
      receivedAt,
      extra: copyOfExtra,
      delivered: [],
      path: bodyKind === BodyKind.FILE ? this.#largePath(id) : undefined,
      sequence: 0,
      offset: 0,
      bytes: 0,
    };
    await this.#log!.append(record, true, { onWritten: (position) => this.#makeLive(entry, position) });
    return messageOf(entry);
  }

  /** Makes `entry` live at `position` (called in the writer's batch, synchronously). */
  #makeLive(entry: Entry, position: Position): void {
    entry.sequence = position.sequence;
    entry.offset = position.offset;
    entry.bytes = position.bytes;
    this.#index.set(entry.id, entry);
    const segment = this.#log!.segments.get(position.sequence)!;
    segment.live++;
    segment.liveBytes += position.bytes;
  }

  /** Takes `entry` out of the index and its segment's counts; the segment may become deletable. */
  #forget(entry: Entry): void {
    this.#index.delete(entry.id);
    const log = this.#log!;
    const segment = log.segments.get(entry.sequence);
    if (segment === undefined) return;
    segment.live--;
    segment.liveBytes -= entry.bytes;
    if (segment !== log.active && this.#worthMaintaining(segment)) this.#scheduleMaintenance();
  }

  #worthMaintaining(segment: Segment): boolean {
    const log = this.#log!;
    if (log.segments.values().next().value !== segment) return false;
    return segment.live === 0 || segment.liveBytes <= this.#segmentBytesMax * COMPACT_LIVE_FRACTION;
  }

  #unlinkLarge(path: string): void {
    const unlinking = unlinkIfPresent(path)
      .then(() => undefined)
      .catch((error: unknown) => {
        // Left behind, it is an orphan that the next open removes.
        this.#logger.warn({ code: 'SMTP_E_SPOOL_WRITE', path, err: error }, 'cannot unlink the file of a removed message');
      })
      .finally(() => this.#unlinking.delete(unlinking));
    this.#unlinking.add(unlinking);
  }

  #makeLargeDir(): Promise<void> {
    this.#largeDirMade ??= mkdir(this.#largeDir, { mode: 0o700 }).then(
      () => this.#log?.dirChanged(),
      (error: unknown) => {
        if (errorCode(error) !== 'EEXIST') {
          this.#largeDirMade = null;
          throw error;
        }
      },
    );
    return this.#largeDirMade;
  }

  #largePath(id: string): string {
    return join(this.#largeDir, `${id}.eml`);
  }

  // ---- reading ----

  async #readInline(entry: Entry): Promise<Buffer> {
    let record: Buffer;
    try {
      record = await this.#log!.read(entry.sequence, entry.offset, entry.bytes);
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_READ', `cannot read message ${entry.id} from ${segmentName(entry.sequence)}: ${(cause as Error).message}`, cause);
    }
    const header = readHeader(record, 0);
    if (header === null || HEADER_BYTES + header.payloadBytes !== record.length || !crcMatches(record, 0, header)) {
      throw hostError('SMTP_E_SPOOL_READ', `message ${entry.id} in ${segmentName(entry.sequence)} at ${entry.offset} fails its CRC check`);
    }
    const store = decodeStore(record, HEADER_BYTES, record.length);
    if (store.id !== entry.id || store.bodyKind !== BodyKind.INLINE) throw hostError('SMTP_E_SPOOL_READ', `the record at ${segmentName(entry.sequence)}:${entry.offset} is not message ${entry.id}`);
    return record.subarray(store.bodyOffset);
  }

  #entry(id: string): Entry {
    this.#checkOpen('SMTP_E_SPOOL_READ');
    const entry = this.#index.get(id);
    if (entry === undefined) throw hostError('SMTP_E_SPOOL_READ', `message ${id} is not in the spool ${this.dir}`);
    return entry;
  }

  // ---- maintenance: deleting and compacting segments ----

  #scheduleMaintenance(): void {
    if (this.#maintenanceScheduled || this.#state !== 'open') return;
    this.#maintenanceScheduled = true;
    setImmediate(() => {
      this.#maintenanceScheduled = false;
      this.#maintainAgain = true;
      this.#runMaintenance();
    });
  }

  #runMaintenance(): void {
    if (this.#maintaining !== null || this.#state === 'closed') return;
    this.#maintaining = (async () => {
      try {
        while (this.#maintainAgain && this.#state !== 'closed') {
          this.#maintainAgain = false;
          await this.#maintain();
        }
      } catch (error) {
        this.#logger.error({ code: 'SMTP_E_SPOOL_WRITE', err: error }, 'spool maintenance failed; it runs again after the next removal');
      } finally {
        this.#maintaining = null;
      }
    })();
  }

  /**
   * Unlinks segments from the oldest on while they hold no live message.
   * Only from the oldest: DONE and DELIVERED records for a segment's
   * messages live in it or in newer segments, so deleting a newer one while
   * an older one still holds live messages could bring delivered mail back
   * after a crash. The oldest segment, when few of its records are still
   * live, is compacted first: those records are copied forward (durably),
   * after which it holds nothing live.
   */
  async #maintain(): Promise<void> {
    const log = this.#log!;
    let removed = 0;
    const compacted = new Set<number>();
    try {
      for (;;) {
        const oldest = log.segments.values().next().value as Segment | undefined;
        if (oldest === undefined || oldest === log.active) break;
        if (oldest.live === 0) {
          await log.remove(oldest);
          removed++;
          this.stats.segmentsRemoved++;
          continue;
        }
        if (oldest.liveBytes > this.#segmentBytesMax * COMPACT_LIVE_FRACTION || compacted.has(oldest.sequence)) break;
        compacted.add(oldest.sequence);
        await this.#compact(oldest);
      }
    } finally {
      if (removed > 0) await log.syncDirectory();
    }
  }

  /** Copies the live records of `segment` to the tail, with their current progress; resolves once the copies are durable. */
  async #compact(segment: Segment): Promise<void> {
    const log = this.#log!;
    const entries = [...this.#index.values()].filter((e) => e.sequence === segment.sequence);
    this.#logger.info({ segment: segmentName(segment.sequence), live: entries.length, live_bytes: segment.liveBytes }, 'compacting the oldest segment');
    let copies: Promise<Position>[] = [];
    let queuedBytes = 0;
    for (const entry of entries) {
      let body: Buffer[] = [];
      if (entry.path === undefined) {
        try {
          body = [await this.#readInline(entry)];
        } catch (error) {
          // Its bytes fail their CRC: a copy would carry the damage forward. It stays, and so does its segment.
          this.#logger.error({ code: 'SMTP_E_SPOOL_READ', id: entry.id, segment: segmentName(segment.sequence), err: error }, 'cannot compact a message whose record cannot be read; its segment is kept');
          continue;
        }
      }
      // The read awaited: check again, and queue the copy in this same turn,
      // so a DONE or DELIVERED for it queued later lands after the copy.
      if (this.#index.get(entry.id) !== entry || entry.sequence !== segment.sequence) continue;
      const record = encodeStore(
        { id: entry.id, receivedAt: entry.receivedAt, from: entry.envelope.from, to: entry.envelope.to, delivered: entry.delivered, extra: entry.extra, size: entry.size, bodyKind: entry.path === undefined ? BodyKind.INLINE : BodyKind.FILE },
        body,
      );
      copies.push(log.append(record, true, { onWritten: (position) => this.#moved(entry, segment, position) }));
      queuedBytes += record.bytes;
      if (queuedBytes >= COMPACT_BATCH_BYTES) {
        await Promise.all(copies);
        copies = [];
        queuedBytes = 0;
      }
    }
    await Promise.all(copies);
    this.stats.compactions++;
  }

  #moved(entry: Entry, from: Segment, position: Position): void {
    // Removed meanwhile: its DONE follows the copy in the log, and the counts already left `from`.
    if (this.#index.get(entry.id) !== entry || entry.sequence !== from.sequence) return;
    from.live--;
    from.liveBytes -= entry.bytes;
    this.#makeLive(entry, position);
  }

  // ---- open: recovery and migration ----

  async #recover(): Promise<void> {
    await makeDirectory(this.dir, this.#fsync);
    const names = await readdir(this.dir);
    const log = new SegmentLog({
      dir: this.dir,
      largeDir: this.#largeDir,
      fsync: this.#fsync,
      groupCommitMs: this.#groupCommitMs,
      segmentBytesMax: this.#segmentBytesMax,
      logger: this.#logger,
      stats: this.stats as LogStats,
      onRoll: () => this.#scheduleMaintenance(),
    });
    this.#log = log;

    // 1. The segments, oldest first.
    const builder = new IndexBuilder((id) => this.#largePath(id));
    const sequences = names.flatMap((name) => {
      const match = SEGMENT_NAME.exec(name);
      return match ? [Number(match[1])] : [];
    });
    sequences.sort((a, b) => a - b);
    const unusable: string[] = [];
    for (const sequence of sequences) {
      const name = segmentName(sequence);
      const fd = await openFd(join(this.dir, name), 'r');
      let blank = false;
      try {
        const scanned = await builder.scan(sequence, fd, name, await fstatSize(fd));
        blank = scanned.blank;
        if (scanned.usable) {
          log.adopt(sequence, fd, scanned.validBytes, scanned.damaged);
          continue;
        }
        unusable.push(name);
      } catch (error) {
        await closeFd(fd).catch(() => undefined);
        throw error;
      }
      await closeFd(fd);
      // No SEGMENT record: cut short at creation (nothing in it was ever acknowledged) when too short to hold one or only zeros, else kept aside.
      const path = join(this.dir, name);
      const { size } = await stat(path);
      if (size < SEGMENT_RECORD_BYTES || blank) await unlinkIfPresent(path);
      else await renamePath(path, damagedName(path));
      log.dirChanged();
    }
    for (const skip of builder.skipped) {
      this.#logger.warn(
        { code: 'SMTP_E_SPOOL_READ', segment: skip.segment, offset: skip.offset, reason: skip.reason, detail: skip.detail, bytes_skipped: skip.bytesSkipped },
        skip.reason === 'torn_tail' ? 'segment ends in a torn record (a batch cut short, never acknowledged); its earlier records are kept' : 'spool record skipped',
      );
    }

    // 2. Messages whose own file is missing or of the wrong size cannot be delivered.
    const missing: string[] = [];
    for (const entry of builder.entries.values()) {
      if (entry.path === undefined) continue;
      const size = await stat(entry.path).then((s) => s.size, () => -1);
      if (size === entry.size) continue;
      missing.push(entry.id);
      builder.entries.delete(entry.id);
      this.#logger.warn({ code: 'SMTP_E_SPOOL_READ', id: entry.id, path: entry.path, size, expected: entry.size }, 'spooled message skipped: its file is missing or of the wrong size');
    }
    for (const [id, entry] of builder.entries) {
      this.#index.set(id, entry);
      const segment = log.segments.get(entry.sequence)!;
      segment.live++;
      segment.liveBytes += entry.bytes;
    }

    // 3. A fresh segment: nothing is ever appended after a tail that may be torn.
    await log.start();

    // 4. The previous layout's <id>.eml + <id>.json pairs.
    const adoption: Adoption = {
      dir: this.dir,
      largeDir: this.#largeDir,
      logger: this.#logger,
      log,
      isLive: (id) => this.#index.has(id),
      largePath: (id) => this.#largePath(id),
      makeLargeDir: () => this.#makeLargeDir(),
      makeLive: (entry, position) => this.#makeLive(entry, position),
    };
    const migrated = await adoptOldLayout(adoption, names);

    // 5. Files in large/ that no live message references.
    const orphans = await removeOrphans(adoption, migrated.kept);

    this.#state = 'open';
    this.#maintainAgain = true;
    this.#runMaintenance();
    await this.#maintaining;
    this.#logger.info(
      {
        segments: sequences.length,
        segments_unusable: unusable,
        records: builder.records,
        live: this.#index.size,
        skipped: builder.skipped.length,
        missing_files: missing.length,
        migrated: migrated.adopted,
        orphans_removed: orphans,
        segments_removed: this.stats.segmentsRemoved,
      },
      'spool opened',
    );
  }

  // ---- checks ----

  #checkOpen(code: 'SMTP_E_SPOOL_WRITE' | 'SMTP_E_SPOOL_READ'): void {
    if (this.#state !== 'open') throw hostError(code, `the spool ${this.dir} is ${this.#state === 'closed' ? 'closed' : 'not open: call open() first'}`);
  }

  /** Ids become file names: refuse anything that is not one this spool made. */
  #checkId(id: string): void {
    if (!ID_PATTERN.test(id)) throw hostError('SMTP_E_SPOOL_READ', `not a spool message id: ${JSON.stringify(id)}`);
  }
}

function messageOf(entry: Entry): SpooledMessage {
  return {
    id: entry.id,
    envelope: entry.envelope,
    size: entry.size,
    receivedAt: entry.receivedAt,
    extra: entry.extra,
    delivered: [...entry.delivered],
    path: entry.path,
  };
}
