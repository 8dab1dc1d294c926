/**
 * The append side of the spool: numbered segment files, one writer loop,
 * group commit. Records queued by any number of messages go out in one
 * writev at the tail of the active segment, then one fdatasync, and every
 * record in that batch resolves together. The spool keeps the index; this
 * file knows only bytes, positions and durability.
 */
import fs from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { closeFd, fdatasyncFd, ftruncateFd, openFd, readExactly, renamePath, syncDirectory, unlinkIfPresent, writevFd } from './fs-raw.js';
import { encodeSegment, type EncodedRecord } from './record.js';

/** Segment names: the number in fixed-width decimal, so names sort in write order. */
const SEGMENT_DIGITS = 16;
export const SEGMENT_NAME = /^(\d{16})\.seg$/;
/** Bytes per batch: enough for 20 inline messages at the default inlineBytesMax; more waits for the next batch. */
export const BATCH_BYTES_MAX = 8 * 2 ** 20;
/**
 * Batches up to this size are written with writevSync: measured here, a
 * 40 KiB writev costs 20-30 us in the kernel either way, plus ~50 us of
 * thread-pool handoff when asynchronous. Larger batches go to the pool so
 * the event loop is not held for a big copy.
 */
export const SYNC_WRITE_BYTES_MAX = 256 * 2 ** 10;
/**
 * With fsync on, the active segment is zero-filled ahead of its tail, this
 * many bytes at a time (in the thread pool). A batch that overwrites blocks
 * already written and made durable changes no file metadata, so its
 * fdatasync flushes the data alone; an append also commits the file's new
 * size and blocks (on ext4, a journal commit). Measured here (13 KiB write
 * + fdatasync, ext4 on virtio, 3 runs of 800): appending 870-1,210 us and
 * 184-212 us of system CPU each, overwriting 541-615 us and 70-85 us.
 */
export const PREALLOCATE_EXTENT_BYTES = 4 * 2 ** 20;
/** The next extent is zero-filled once the tail comes this close to the end of the filled part. */
const PREALLOCATE_LOW_WATER_BYTES = 2 * 2 ** 20;
/** Zeros written per iovec by the fill (shared, never written to). */
const ZERO_CHUNK = Buffer.alloc(2 ** 20);

/** Durable batches remembered for groupCommitMs's early flush. */
const RECENT_BATCHES = 8;
/** Records written without an fsync of their own (DONE) are made durable within this long if nothing else comes. */
export const IDLE_SYNC_MS = 1000;

export function segmentName(sequence: number): string {
  return `${String(sequence).padStart(SEGMENT_DIGITS, '0')}.seg`;
}

/** Where a segment that could not be read whole is kept for an operator: out of the log, never reused. */
export function damagedName(path: string): string {
  return `${path}.${Date.now()}.damaged`;
}

export interface Segment {
  readonly sequence: number;
  readonly path: string;
  fd: number;
  /** Bytes of whole records in the file: the next record goes here. */
  bytes: number;
  /** Bytes of the file written, records or the zeros filled ahead of them (PREALLOCATE_EXTENT_BYTES): at least `bytes`; set to segmentBytesMax after a failed fill, so that none is tried again. */
  allocated: number;
  /** Live messages whose current STORE record is in this segment, and their record bytes. */
  live: number;
  liveBytes: number;
  /** Reads in progress: the fd is closed only when none is left. */
  readers: number;
  deleted: boolean;
  /**
   * Recovery met a corrupt record in it with bytes after (not a torn tail):
   * when no longer needed it is renamed to <name>.<ms>.damaged rather than
   * unlinked, so an operator can look at what could not be read.
   */
  readonly damaged: boolean;
}

/** Where a record landed. */
export interface Position {
  readonly sequence: number;
  readonly offset: number;
  readonly bytes: number;
}

export interface LogStats {
  batches: number;
  records: number;
  fsyncs: number;
}

export interface AppendHooks {
  /**
   * Runs synchronously once the record is written (and durable, when asked),
   * before the append resolves: the spool updates its index and segment
   * counts here, so no other task can see the record on disk but not in
   * the counts (and, say, delete its segment).
   */
  readonly onWritten?: (position: Position) => void;
  /** Runs once the record is on stable storage, however long that takes (for DONE: the next batch's fsync or the idle flush). */
  readonly afterDurable?: () => void;
}

interface Pending {
  readonly record: EncodedRecord;
  /** Must be on stable storage before it resolves (STORE, DELIVERED); DONE rides along with the next fsync. */
  readonly durable: boolean;
  readonly hooks: AppendHooks | undefined;
  readonly resolve: (position: Position) => void;
  readonly reject: (error: Error) => void;
}

export interface SegmentLogOptions {
  readonly dir: string;
  readonly largeDir: string;
  readonly fsync: boolean;
  readonly groupCommitMs: number;
  readonly segmentBytesMax: number;
  readonly logger: Logger;
  readonly stats: LogStats;
  /** Told when a segment stops being the active one, so the spool can look at deleting old ones. */
  readonly onRoll: () => void;
}

export class SegmentLog {
  /** Every segment on disk that is not deleted, oldest first (Map keeps insertion order; sequences only grow). */
  readonly segments = new Map<number, Segment>();
  readonly #options: SegmentLogOptions;
  #active: Segment | null = null;
  #nextSequence = 1;
  #queue: Pending[] = [];
  #queuedBytes = 0;
  /** Records in the queue that need an fsync. */
  #queuedDurable = 0;
  /** When the oldest durable record in the queue arrived (groupCommitMs > 0 only). */
  #firstQueuedAt = 0;
  /** Durable records in each of the last RECENT_BATCHES batches (groupCommitMs > 0 only). */
  readonly #recentBatches: number[] = [];
  #running = false;
  #scheduled = false;
  #timer: NodeJS.Timeout | null = null;
  #idleTimer: NodeJS.Timeout | null = null;
  /** Written records not yet covered by an fdatasync, and what waits for them. */
  #unsynced = false;
  #afterSync: (() => void)[] = [];
  #syncWanted = false;
  /** Changes to the spool directory and to large/ (creates, renames, unlinks), and how many of them an fsync has covered. */
  #dirChanges = 0;
  #dirSynced = 0;
  #largeChanges = 0;
  #largeSynced = 0;
  #drained: (() => void)[] = [];
  #closed = false;
  /** The zero fill in progress (one at a time) and its segment; it starts at that segment's `allocated`, which moves only when it ends. */
  #filling: Promise<void> | null = null;
  #fillingSegment: Segment | null = null;

  constructor(options: SegmentLogOptions) {
    this.#options = options;
  }

  get active(): Segment | null {
    return this.#active;
  }

  /** A segment found at open: closed for appends, readable, counted by the spool. */
  adopt(sequence: number, fd: number, bytes: number, damaged: boolean): Segment {
    const segment: Segment = { sequence, path: join(this.#options.dir, segmentName(sequence)), fd, bytes, allocated: bytes, live: 0, liveBytes: 0, readers: 0, deleted: false, damaged };
    this.segments.set(sequence, segment);
    this.#nextSequence = Math.max(this.#nextSequence, sequence + 1);
    return segment;
  }

  /** Starts the first active segment; the spool calls it once at open, after adopting what it found. */
  async start(): Promise<void> {
    await this.#roll();
  }

  /** A file was created, renamed or unlinked in the spool directory or large/: the next durable batch fsyncs that directory too. */
  dirChanged(): void {
    this.#dirChanges++;
  }

  largeChanged(): void {
    this.#largeChanges++;
  }

  /**
   * Queues a record for the tail; resolves with where it landed once it is
   * written and, when `durable` (and the spool fsyncs), on stable storage.
   */
  append(record: EncodedRecord, durable: boolean, hooks?: AppendHooks): Promise<Position> {
    if (this.#closed) return Promise.reject(new Error('the spool is closed'));
    return new Promise<Position>((resolve, reject) => {
      if (durable) {
        if (this.#queuedDurable === 0 && this.#options.groupCommitMs > 0) this.#firstQueuedAt = Date.now();
        this.#queuedDurable++;
      }
      this.#queue.push({ record, durable, hooks, resolve, reject });
      this.#queuedBytes += record.bytes;
      this.#kick();
    });
  }

  /** Resolves once everything queued so far is written (and, with fsync, durable). */
  flush(): Promise<void> {
    if (this.#options.fsync && this.#unsynced) this.#syncWanted = true;
    if (!this.#running && this.#queue.length === 0 && !this.#syncWanted) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#drained.push(resolve));
    this.#kick();
    return done;
  }

  /** Reads `bytes` at `offset` of a segment; a segment deleted meanwhile stays readable until its last reader is done. */
  async read(sequence: number, offset: number, bytes: number): Promise<Buffer> {
    const segment = this.segments.get(sequence);
    if (segment === undefined || segment.deleted) throw new Error(`segment ${segmentName(sequence)} is gone`);
    segment.readers++;
    try {
      return await readExactly(segment.fd, bytes, offset);
    } finally {
      segment.readers--;
      if (segment.deleted && segment.readers === 0) this.#closeQuietly(segment);
    }
  }

  /** Unlinks a segment the spool no longer needs; the caller syncs the directory afterwards (syncDirectory). */
  async remove(segment: Segment): Promise<void> {
    if (segment === this.#active) throw new Error('the active segment cannot be removed');
    this.segments.delete(segment.sequence);
    segment.deleted = true;
    this.#dirChanges++;
    try {
      if (segment.damaged) await renamePath(segment.path, damagedName(segment.path));
      else await unlinkIfPresent(segment.path);
    } finally {
      if (segment.readers === 0) this.#closeQuietly(segment);
    }
  }

  /** fsync of the spool directory, counted so that a durable batch need not repeat it. */
  async syncDirectory(): Promise<void> {
    if (!this.#options.fsync) return;
    const covers = this.#dirChanges;
    await syncDirectory(this.#options.dir);
    this.#dirSynced = Math.max(this.#dirSynced, covers);
  }

  /** Writes what is queued, syncs what is unsynced, closes every fd. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flush();
    this.#closed = true;
    await this.#filling;
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer);
    if (this.#timer !== null) clearTimeout(this.#timer);
    for (const run of this.#afterSync.splice(0)) run();
    for (const segment of this.segments.values()) {
      segment.deleted = true;
      if (segment.readers === 0) this.#closeQuietly(segment);
    }
    this.segments.clear();
    this.#active = null;
  }

  #closeQuietly(segment: Segment): void {
    if (segment.fd < 0) return;
    // A zero fill queued in the thread pool would write into whatever file reused the fd.
    if (this.#filling !== null && this.#fillingSegment === segment) {
      void this.#filling.then(() => this.#closeQuietly(segment));
      return;
    }
    const fd = segment.fd;
    segment.fd = -1;
    fs.close(fd, (error) => {
      if (error) this.#options.logger.warn({ code: 'SMTP_E_SPOOL_WRITE', segment: segment.path, err: error }, 'cannot close a segment file');
    });
  }

  #kick(): void {
    if (this.#timer !== null && this.#groupWaitMs() <= 0) {
      // The company came before the window closed.
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#running || this.#scheduled || this.#timer !== null) return;
    if (this.#queue.length === 0 && !this.#syncWanted) {
      this.#wakeDrained();
      return;
    }
    const waitMs = this.#groupWaitMs();
    if (waitMs > 0) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        void this.#run();
      }, waitMs);
      return;
    }
    // Not at once: every record queued in this turn of the event loop joins the batch.
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#run();
    });
  }

  /**
   * How much longer the queue should wait for company before it is written
   * (groupCommitMs > 0). No longer once as many durable records are queued
   * as the largest of the last few batches carried: with closed-loop
   * clients (SMTP sessions waiting for their 250) everyone who can come has
   * come, and waiting out the window would only add latency.
   */
  #groupWaitMs(): number {
    const { groupCommitMs, fsync } = this.#options;
    if (groupCommitMs <= 0 || !fsync || this.#queuedBytes >= BATCH_BYTES_MAX || this.#queuedDurable === 0) return 0;
    if (this.#recentBatches.length > 0 && this.#queuedDurable >= Math.max(...this.#recentBatches)) return 0;
    return this.#firstQueuedAt + groupCommitMs - Date.now();
  }

  async #run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#queue.length > 0 || this.#syncWanted) {
        if (this.#queue.length > 0 && this.#groupWaitMs() > 0) break;
        await this.#writeBatch(this.#takeBatch());
      }
    } finally {
      this.#running = false;
    }
    this.#kick();
  }

  #takeBatch(): Pending[] {
    let bytes = 0;
    let count = 0;
    let durable = 0;
    while (count < this.#queue.length && (count === 0 || bytes + this.#queue[count]!.record.bytes <= BATCH_BYTES_MAX)) {
      const p = this.#queue[count]!;
      bytes += p.record.bytes;
      if (p.durable) durable++;
      count++;
    }
    const batch = count === this.#queue.length ? this.#queue : this.#queue.slice(0, count);
    this.#queue = count === this.#queue.length ? [] : this.#queue.slice(count);
    this.#queuedBytes -= bytes;
    this.#queuedDurable -= durable;
    if (durable > 0 && this.#options.groupCommitMs > 0) {
      this.#recentBatches.push(durable);
      if (this.#recentBatches.length > RECENT_BATCHES) this.#recentBatches.shift();
    }
    // What stays queued has waited while this batch is written: it waits at most groupCommitMs more.
    if (this.#options.groupCommitMs > 0 && this.#queuedDurable > 0) this.#firstQueuedAt = Date.now();
    return batch;
  }

  async #writeBatch(batch: Pending[]): Promise<void> {
    const { fsync, segmentBytesMax } = this.#options;
    let bytes = 0;
    let durable = this.#syncWanted;
    for (const p of batch) {
      bytes += p.record.bytes;
      if (p.durable) durable = true;
    }
    durable &&= fsync;
    this.#syncWanted = false;
    let segment = this.#active;
    if (batch.length === 0 && segment === null) {
      // An idle flush after the active segment was retired: what was unsynced went with it (see #fail).
      this.#unsynced = false;
      return;
    }
    try {
      // A batch never spans segments; one bigger than a whole segment gets a segment of its own.
      if (segment === null || (batch.length > 0 && segment.bytes + bytes > segmentBytesMax && segment.bytes > HEADER_ONLY_BYTES)) segment = await this.#roll();
    } catch (error) {
      await this.#fail(batch, error as Error, null);
      return;
    }
    // Never written under a zero fill still in flight: the fill's zeros could land after the records.
    if (this.#filling !== null && this.#fillingSegment === segment && segment.bytes + bytes > segment.allocated) await this.#filling;
    const start = segment.bytes;
    const positions: Position[] = [];
    if (batch.length > 0) {
      const buffers: Buffer[] = [];
      let offset = start;
      for (const p of batch) {
        positions.push({ sequence: segment.sequence, offset, bytes: p.record.bytes });
        offset += p.record.bytes;
        for (const b of p.record.buffers) buffers.push(b);
      }
      try {
        const written = bytes <= SYNC_WRITE_BYTES_MAX ? fs.writevSync(segment.fd, buffers, start) : await writevFd(segment.fd, buffers, start);
        if (written !== bytes) throw new Error(`wrote ${written} of ${bytes} bytes`);
      } catch (error) {
        await this.#fail(batch, error as Error, segment, start);
        return;
      }
      segment.bytes = start + bytes;
      if (segment.allocated < segment.bytes) segment.allocated = segment.bytes;
      this.#fillAhead(segment);
      this.#options.stats.batches++;
      this.#options.stats.records += batch.length;
      if (fsync) this.#unsynced = true;
    }

    if (durable) {
      const waiting = this.#afterSync.splice(0);
      try {
        await this.#sync(segment);
      } catch (error) {
        this.#afterSync.unshift(...waiting);
        await this.#fail(batch, error as Error, segment, start);
        return;
      }
      for (const run of waiting) run();
    } else if (this.#unsynced) {
      this.#armIdleSync();
    }

    for (let i = 0; i < batch.length; i++) {
      const p = batch[i]!;
      const afterDurable = p.hooks?.afterDurable;
      if (afterDurable !== undefined) {
        if (durable || !fsync) afterDurable();
        else this.#afterSync.push(afterDurable);
      }
      try {
        p.hooks?.onWritten?.(positions[i]!);
      } catch (error) {
        p.reject(error as Error);
        continue;
      }
      p.resolve(positions[i]!);
    }
  }

  /** fdatasync of the segment, with the directory fsyncs its new names need, in parallel. */
  async #sync(segment: Segment): Promise<void> {
    const work: Promise<void>[] = [fdatasyncFd(segment.fd)];
    if (this.#dirSynced < this.#dirChanges) work.push(this.syncDirectory());
    if (this.#largeSynced < this.#largeChanges) {
      const covers = this.#largeChanges;
      work.push(syncDirectory(this.#options.largeDir).then(() => void (this.#largeSynced = Math.max(this.#largeSynced, covers))));
    }
    const results = await Promise.allSettled(work);
    this.#options.stats.fsyncs++;
    for (const result of results) if (result.status === 'rejected') throw result.reason;
    this.#unsynced = false;
    if (this.#idleTimer !== null) {
      clearTimeout(this.#idleTimer);
      this.#idleTimer = null;
    }
  }

  /**
   * Zero-fills the next PREALLOCATE_EXTENT_BYTES of the active segment once
   * its tail comes within PREALLOCATE_LOW_WATER_BYTES of the filled end (fsync
   * on only: without fsync there is no commit to spare). The fill is made
   * durable by the next batch's fdatasync, which pays the file's growth once
   * for the batches after it. Recovery reads zeros after the last record as
   * the end of the segment (recovery.ts). A failed fill is logged and the
   * segment appends as before.
   */
  #fillAhead(segment: Segment): void {
    const { fsync, segmentBytesMax } = this.#options;
    if (!fsync || this.#filling !== null || this.#closed || segment !== this.#active) return;
    if (segment.allocated >= segmentBytesMax || segment.allocated - segment.bytes > PREALLOCATE_LOW_WATER_BYTES) return;
    const from = segment.allocated;
    const to = Math.min(segmentBytesMax, from + PREALLOCATE_EXTENT_BYTES);
    const zeros: Buffer[] = [];
    for (let at = from; at < to; at += ZERO_CHUNK.length) zeros.push(at + ZERO_CHUNK.length <= to ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, to - at));
    this.#fillingSegment = segment;
    this.#filling = writevFd(segment.fd, zeros, from)
      .then((written) => {
        if (written !== to - from) throw new Error(`wrote ${written} of ${to - from} bytes of zeros`);
        segment.allocated = Math.max(segment.allocated, to);
      })
      .catch((error: unknown) => {
        // The records go on appending; no further fill is tried in this segment.
        segment.allocated = segmentBytesMax;
        this.#options.logger.warn({ code: 'SMTP_E_SPOOL_WRITE', segment: segment.path, err: error }, "cannot zero-fill ahead of the spool segment's tail; its records are appended");
      })
      .finally(() => {
        this.#filling = null;
        this.#fillingSegment = null;
      });
  }

  #armIdleSync(): void {
    if (this.#idleTimer !== null) return;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      if (!this.#unsynced || this.#closed) return;
      this.#syncWanted = true;
      this.#kick();
    }, IDLE_SYNC_MS);
    this.#idleTimer.unref();
  }

  /**
   * A batch failed: every record in it is rejected. The bytes it may have
   * left are cut off, since a later batch appended after them would be
   * unreachable for recovery (it stops at the first bad record). The
   * segment is retired either way (after a failed fsync Linux may have
   * dropped its dirty pages; after a failed cut its tail is unknown): the
   * next batch starts a new one. It stays readable for what it holds.
   */
  async #fail(batch: readonly Pending[], error: Error, segment: Segment | null, start = 0): Promise<void> {
    this.#options.logger.error({ code: 'SMTP_E_SPOOL_WRITE', segment: segment?.path, records: batch.length, err: error }, 'spool batch failed; its records are refused');
    if (segment !== null) {
      try {
        await ftruncateFd(segment.fd, start);
        segment.bytes = start;
      } catch (truncateError) {
        this.#options.logger.error({ code: 'SMTP_E_SPOOL_WRITE', segment: segment.path, err: truncateError }, 'cannot cut a failed batch off the segment');
      }
      if (this.#active === segment) {
        this.#active = null;
        this.#options.onRoll();
      }
    }
    for (const p of batch) p.reject(error);
  }

  /** Starts a new active segment: created exclusively, its SEGMENT record written; its name is durable with the next batch's directory fsync. */
  async #roll(): Promise<Segment> {
    const previous = this.#active;
    if (previous !== null && this.#options.fsync && this.#unsynced) {
      // Records written lazily (DONE) into the old segment: the next fsync will be of the new file.
      await fdatasyncFd(previous.fd);
      this.#unsynced = false;
      for (const run of this.#afterSync.splice(0)) run();
    }
    const sequence = this.#nextSequence++;
    const path = join(this.#options.dir, segmentName(sequence));
    const fd = await openFd(path, 'wx+');
    this.#dirChanges++;
    const header = encodeSegment(sequence, Date.now());
    try {
      const written = fs.writevSync(fd, header.buffers, 0);
      if (written !== header.bytes) throw new Error(`wrote ${written} of ${header.bytes} bytes of the segment header`);
    } catch (error) {
      await closeFd(fd).catch(() => undefined);
      await unlinkIfPresent(path).catch(() => undefined);
      throw error;
    }
    const segment: Segment = { sequence, path, fd, bytes: header.bytes, allocated: header.bytes, live: 0, liveBytes: 0, readers: 0, deleted: false, damaged: false };
    this.segments.set(sequence, segment);
    this.#active = segment;
    this.#fillAhead(segment);
    if (this.#options.fsync) this.#unsynced = true;
    if (previous !== null) this.#options.onRoll();
    return segment;
  }

  #wakeDrained(): void {
    const waiters = this.#drained.splice(0);
    for (const wake of waiters) wake();
  }
}

/** A segment holding its SEGMENT record and nothing else: never rolled away from, whatever the batch's size. */
const HEADER_ONLY_BYTES = encodeSegment(0, 0).bytes;
