/**
 * One message being received (one DATA): kept in memory while it is small,
 * streamed to its own file under large/ once it grows past inlineBytesMax,
 * so the memory a message holds stays bounded whatever its size.
 */
import fs from 'node:fs';
import { readFile } from 'node:fs/promises';
import { hostError, isHostError } from '../errors.js';
import { closeFd, fdatasyncFd, openFd, readFd, unlinkIfPresent } from './fs-raw.js';

/** Bytes queued for a large message's file beyond which write() asks the caller to wait. */
export const LARGE_QUEUE_BYTES_MAX = 2 ** 20;

export interface Envelope {
  readonly from: string;
  readonly to: readonly string[];
}

export interface SpooledMessage {
  /** Unique, filename-safe and time-sortable: base-36 milliseconds, a dash, 16 hex digits. */
  readonly id: string;
  readonly envelope: Envelope;
  /** Bytes of the message as received. */
  readonly size: number;
  /** ISO 8601 time the message began to arrive. */
  readonly receivedAt: string;
  /** The `extra` strings given at commit. */
  readonly extra: Readonly<Record<string, string>>;
  /** Recipients already delivered to (see markDelivered), so a restart does not deliver twice. */
  readonly delivered: readonly string[];
  /** The message's own file (a large message, or an adopted old entry); undefined for inline messages. */
  readonly path: string | undefined;
}

export interface IncomingMessage {
  readonly id: string;
  /** Appends a chunk as it arrives; returns a promise only when the caller must wait before the next chunk. */
  write(chunk: Buffer): Promise<void> | undefined;
  /** Bytes written so far. */
  readonly size: number;
  /** True while the whole message is in memory (size <= inlineBytesMax). */
  readonly inline: boolean;
  /** Bytes this message holds in memory now: the head plus what is queued for its file. */
  readonly heldBytes: number;
  /** The first min(size, inlineBytesMax) bytes. */
  head(): Buffer;
  /** The whole message as one Buffer when inline (built once, cached), else null. */
  body(): Buffer | null;
  /** The whole message (reads a large message's file). */
  readBody(): Promise<Buffer>;
  /** The whole message, a large one read into `target` (at least `size` bytes): the bytes are a view of it. */
  readBodyInto(target: Buffer): Promise<Buffer>;
  /** Durably stores it; resolves once a crash can no longer lose it. Fails with SMTP_E_SPOOL_WRITE leaving nothing behind. */
  commit(envelope: Envelope, extra?: Record<string, string>): Promise<SpooledMessage>;
  /** Drops what was received (refused, client gone); idempotent; safe after a failed write. After a successful commit it does nothing: use Spool.remove. */
  discard(): Promise<void>;
}

/** What an IncomingMessage needs from its spool. */
export interface IncomingHost {
  readonly inlineBytesMax: number;
  readonly fsync: boolean;
  /** Resolves once large/ exists (made on first use, its name durable with the next batch). */
  largeDirReady(): Promise<void>;
  largePath(id: string): string;
  /** A large/ file was created: the next durable batch fsyncs large/. */
  largeCreated(): void;
  commitInline(id: string, receivedAt: string, envelope: Envelope, extra: Record<string, string>, body: Buffer[], size: number): Promise<SpooledMessage>;
  commitFile(id: string, receivedAt: string, envelope: Envelope, extra: Record<string, string>, size: number): Promise<SpooledMessage>;
}

interface Waiter {
  /** Wake when the queued bytes are at most this. */
  readonly belowBytes: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

/**
 * The file of a large message, written as chunks arrive: one write in
 * flight at a time, everything queued meanwhile going out in the next
 * writev.
 */
class LargeFile {
  readonly path: string;
  #fd = -1;
  readonly #opened: Promise<void>;
  #queue: Buffer[] = [];
  /** Queued and in flight. */
  #queuedBytes = 0;
  #position = 0;
  #writing = false;
  #error: Error | null = null;
  #waiters: Waiter[] = [];

  constructor(path: string, ready: Promise<void>, created: () => void) {
    this.path = path;
    this.#opened = ready
      .then(() => openFd(path, 'wx', 0o600))
      .then((fd) => {
        this.#fd = fd;
        created();
        this.#pump();
      })
      .catch((error: unknown) => this.#failed(error as Error));
  }

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  write(chunk: Buffer): Promise<void> | undefined {
    if (this.#error !== null) return Promise.reject(this.#error);
    this.#queue.push(chunk);
    this.#queuedBytes += chunk.length;
    this.#pump();
    if (this.#queuedBytes <= LARGE_QUEUE_BYTES_MAX) return undefined;
    return this.#until(LARGE_QUEUE_BYTES_MAX);
  }

  /** Resolves once everything queued is in the file. */
  async drained(): Promise<void> {
    await this.#opened;
    await this.#until(0);
  }

  /** Writes what is queued, fdatasyncs (with fsync) and closes the file. */
  async finish(fsync: boolean): Promise<void> {
    await this.#opened;
    await this.#until(0);
    const fd = this.#fd;
    this.#fd = -1;
    try {
      if (fsync) await fdatasyncFd(fd);
    } finally {
      await closeFd(fd);
    }
  }

  /** Closes (once no write is in flight) and unlinks the file. */
  async abort(): Promise<void> {
    this.#failed(new Error('discarded'));
    await this.#opened;
    while (this.#writing) await new Promise((resolve) => setImmediate(resolve));
    if (this.#fd >= 0) {
      const fd = this.#fd;
      this.#fd = -1;
      await closeFd(fd).catch(() => undefined);
    }
    await unlinkIfPresent(this.path);
  }

  #until(belowBytes: number): Promise<void> {
    if (this.#error !== null) return Promise.reject(this.#error);
    if (this.#queuedBytes <= belowBytes) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ belowBytes, resolve, reject }));
  }

  #pump(): void {
    if (this.#writing || this.#fd < 0 || this.#queue.length === 0 || this.#error !== null) return;
    const buffers = this.#queue;
    this.#queue = [];
    let bytes = 0;
    for (const b of buffers) bytes += b.length;
    this.#writing = true;
    fs.writev(this.#fd, buffers, this.#position, (error, written) => {
      this.#writing = false;
      if (error !== null || written !== bytes) {
        this.#failed(error ?? new Error(`wrote ${written} of ${bytes} bytes`));
        return;
      }
      this.#position += bytes;
      this.#queuedBytes -= bytes;
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) {
        if (this.#queuedBytes <= w.belowBytes) w.resolve();
        else this.#waiters.push(w);
      }
      this.#pump();
    });
  }

  #failed(error: Error): void {
    if (this.#error !== null) return;
    this.#error = error;
    this.#queue = [];
    for (const w of this.#waiters.splice(0)) w.reject(error);
  }
}

type State = 'receiving' | 'committing' | 'committed' | 'failed' | 'discarded';

export class Incoming implements IncomingMessage {
  readonly id: string;
  readonly receivedAt: string;
  readonly #host: IncomingHost;
  /** The whole message while inline; its first inlineBytesMax bytes once it has a file. */
  #chunks: Buffer[] = [];
  #headBytes = 0;
  #size = 0;
  #joined: Buffer | null = null;
  #file: LargeFile | null = null;
  #state: State = 'receiving';
  #committing: Promise<unknown> | null = null;
  #discarding: Promise<void> | null = null;

  constructor(host: IncomingHost, id: string, receivedAt: string) {
    this.#host = host;
    this.id = id;
    this.receivedAt = receivedAt;
  }

  get size(): number {
    return this.#size;
  }

  get inline(): boolean {
    return this.#file === null;
  }

  get heldBytes(): number {
    return this.#headBytes + (this.#file?.queuedBytes ?? 0);
  }

  write(chunk: Buffer): Promise<void> | undefined {
    if (this.#state !== 'receiving') throw hostError('SMTP_E_SPOOL_WRITE', `message ${this.id} is ${this.#state}: it takes no more data`);
    if (chunk.length === 0) return undefined;
    const max = this.#host.inlineBytesMax;
    if (this.#file === null && this.#size + chunk.length <= max) {
      this.#chunks.push(chunk);
      this.#headBytes += chunk.length;
      this.#size += chunk.length;
      this.#joined = null;
      return undefined;
    }
    if (this.#file === null) {
      // Past inlineBytesMax: from here on the bytes go to large/<id>.eml, starting with what is held.
      this.#file = new LargeFile(this.#host.largePath(this.id), this.#host.largeDirReady(), () => this.#host.largeCreated());
      for (const held of this.#chunks) void this.#file.write(held)?.catch(() => undefined);
    }
    if (this.#headBytes < max) {
      const take = Math.min(chunk.length, max - this.#headBytes);
      this.#chunks.push(take === chunk.length ? chunk : chunk.subarray(0, take));
      this.#headBytes += take;
      this.#joined = null;
    }
    this.#size += chunk.length;
    return this.#file.write(chunk);
  }

  head(): Buffer {
    if (this.#joined === null) {
      this.#joined = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#headBytes);
      this.#chunks = [this.#joined];
    }
    return this.#joined;
  }

  body(): Buffer | null {
    return this.#file === null ? this.head() : null;
  }

  async readBody(): Promise<Buffer> {
    if (this.#file === null) return this.head();
    try {
      if (this.#state === 'receiving') await this.#file.drained();
      return await readFile(this.#file.path);
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_READ', `cannot read message ${this.id} from ${this.#file.path}: ${(cause as Error).message}`, cause);
    }
  }

  async readBodyInto(target: Buffer): Promise<Buffer> {
    if (this.#file === null) return this.head();
    if (target.length < this.#size) throw new RangeError(`readBodyInto: ${target.length} bytes cannot hold message ${this.id} (${this.#size} bytes)`);
    let fd = -1;
    try {
      if (this.#state === 'receiving') await this.#file.drained();
      fd = await openFd(this.#file.path, 'r');
      let done = 0;
      while (done < this.#size) {
        const read = await readFd(fd, target, done, this.#size - done, done);
        if (read === 0) throw new Error(`the file ends at ${done} of ${this.#size} bytes`);
        done += read;
      }
      return target.subarray(0, this.#size);
    } catch (cause) {
      throw hostError('SMTP_E_SPOOL_READ', `cannot read message ${this.id} from ${this.#file.path}: ${(cause as Error).message}`, cause);
    } finally {
      if (fd >= 0) await closeFd(fd).catch(() => undefined);
    }
  }

  commit(envelope: Envelope, extra: Record<string, string> = {}): Promise<SpooledMessage> {
    if (this.#state !== 'receiving') return Promise.reject(hostError('SMTP_E_SPOOL_WRITE', `message ${this.id} is ${this.#state}: it cannot be committed`));
    this.#state = 'committing';
    const committing = this.#commit(envelope, extra);
    this.#committing = committing.catch(() => undefined);
    return committing;
  }

  async #commit(envelope: Envelope, extra: Record<string, string>): Promise<SpooledMessage> {
    try {
      if (envelope.to.length === 0) throw hostError('SMTP_E_SPOOL_WRITE', 'cannot store a message without recipients');
      let message: SpooledMessage;
      if (this.#file === null) {
        message = await this.#host.commitInline(this.id, this.receivedAt, envelope, extra, this.#chunks, this.#size);
      } else {
        await this.#file.finish(this.#host.fsync);
        message = await this.#host.commitFile(this.id, this.receivedAt, envelope, extra, this.#size);
      }
      this.#state = 'committed';
      return message;
    } catch (cause) {
      this.#state = 'failed';
      // The client will be told 4xx and send again: a file left behind would be an orphan at best.
      await this.#file?.abort().catch(() => undefined);
      this.#chunks = [];
      if (isHostError(cause, 'SMTP_E_SPOOL_WRITE')) throw cause;
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot store message ${this.id}: ${(cause as Error).message}`, cause);
    }
  }

  discard(): Promise<void> {
    this.#discarding ??= this.#discard();
    return this.#discarding;
  }

  async #discard(): Promise<void> {
    if (this.#committing !== null) {
      await this.#committing;
      return;
    }
    this.#state = 'discarded';
    this.#chunks = [];
    this.#joined = null;
    this.#headBytes = 0;
    await this.#file?.abort().catch(() => undefined);
  }
}
