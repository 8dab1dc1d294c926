import { join } from 'node:path';
import { silentLogger, type Logger } from '../log.js';
import { hostError } from '../errors.js';
import type { Spool, SpooledMessage } from '../storage/spool.js';
import { MaildirError, deliverToMaildir, type MessageBody } from './maildir.js';
import { RelayError, createRelay, type Relay, type RelayOptions } from './relay.js';

export type DeliveryMode = 'maildir' | 'relay' | 'none';

export interface DeliveryQueueOptions {
  readonly spool: Spool;
  readonly mode: DeliveryMode;
  /** Mode maildir: mailboxes are <maildirRoot>/<recipient>/{tmp,new,cur}. */
  readonly maildirRoot?: string;
  /** Mode relay: the smarthost. */
  readonly relay?: RelayOptions;
  readonly fsync: boolean;
  /** Wait before the first retry; it doubles per attempt up to retryMaxMs. Default 1000. */
  readonly retryInitialMs?: number;
  /** Default 300000. */
  readonly retryMaxMs?: number;
  /** Attempts after which a message still failing temporarily is bounced. Default 20. */
  readonly maxAttempts?: number;
  /** Messages delivered at once, so a burst does not open hundreds of relay connections. Default 4. */
  readonly concurrency?: number;
  /** Bytes of message bodies handed to enqueue() kept in memory until delivered, so delivery need not read them back. Default 16 MiB. */
  readonly bodyCacheBytesMax?: number;
  readonly logger?: Logger;
  /** Called after each successful delivery, once per recipient. */
  readonly onDelivered?: (message: SpooledMessage, recipient: string, detail: { mode: DeliveryMode; path?: string }) => void | Promise<void>;
  /** Called when a message is given up (a permanent failure, or maxAttempts reached), after it was moved to <spool dir>/bounced/. */
  readonly onBounced?: (message: SpooledMessage, reason: string) => void | Promise<void>;
}

export const DEFAULT_RETRY_INITIAL_MS = 1000;
export const DEFAULT_RETRY_MAX_MS = 300_000;
export const DEFAULT_MAX_ATTEMPTS = 20;
export const DEFAULT_DELIVERY_CONCURRENCY = 4;
export const DEFAULT_BODY_CACHE_BYTES_MAX = 16 * 2 ** 20;
/** Retries are spread by up to this fraction of their delay, so messages deferred together do not retry in lockstep. */
const RETRY_JITTER_FRACTION = 0.1;
/** Where bounced messages go, under the spool directory. */
export const BOUNCED_SUBDIR = 'bounced';

/** One message the queue knows about: ready, in flight, or waiting for a retry. */
interface Job {
  readonly message: SpooledMessage;
  /** Attempts that ended in a temporary failure (they set the backoff). */
  attempts: number;
  /** Every attempt made in this process. */
  tries: number;
  /** Recipients done, including this process's deliveries not yet recorded in the spool. */
  readonly delivered: Set<string>;
  /** Recipients refused for good, with why. */
  readonly failed: Map<string, string>;
  timer: NodeJS.Timeout | undefined;
  /** The body in memory: given to enqueue() (counted in the cache), or read for the attempt in flight. */
  body: Buffer | undefined;
  bodyCached: boolean;
}

/**
 * Delivers spooled messages onward (into Maildirs, or to a smarthost), at
 * most `concurrency` at a time, retrying temporary failures with exponential
 * backoff. A spool entry is removed only once every recipient was delivered
 * or the message was bounced, so a crash at any point delivers again rather
 * than loses (at-least-once).
 */
export class DeliveryQueue {
  readonly stats = { delivered: 0, deferred: 0, bounced: 0 };
  readonly #spool: Spool;
  readonly #mode: DeliveryMode;
  readonly #maildirRoot: string;
  readonly #relay: Relay | undefined;
  readonly #fsync: boolean;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  readonly #maxAttempts: number;
  readonly #concurrency: number;
  readonly #bodyCacheBytesMax: number;
  #bodyCacheBytes = 0;
  readonly #logger: Logger;
  readonly #onDelivered: DeliveryQueueOptions['onDelivered'];
  readonly #onBounced: DeliveryQueueOptions['onBounced'];
  /** By message id. A message is in here from enqueue until its spool entry is gone. */
  readonly #jobs = new Map<string, Job>();
  readonly #ready: Job[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  #idleWaiters: (() => void)[] = [];
  #stopped = false;

  constructor(options: DeliveryQueueOptions) {
    this.#spool = options.spool;
    this.#mode = options.mode;
    this.#fsync = options.fsync;
    this.#retryInitialMs = options.retryInitialMs ?? DEFAULT_RETRY_INITIAL_MS;
    this.#retryMaxMs = options.retryMaxMs ?? DEFAULT_RETRY_MAX_MS;
    this.#maxAttempts = Math.max(1, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    this.#concurrency = Math.max(1, options.concurrency ?? DEFAULT_DELIVERY_CONCURRENCY);
    this.#bodyCacheBytesMax = Math.max(0, options.bodyCacheBytesMax ?? DEFAULT_BODY_CACHE_BYTES_MAX);
    this.#logger = (options.logger ?? silentLogger()).child({ component: 'delivery', mode: options.mode });
    this.#onDelivered = options.onDelivered;
    this.#onBounced = options.onBounced;
    if (options.mode === 'maildir' && !options.maildirRoot) throw hostError('SMTP_E_DELIVERY_MAILDIR', 'delivery mode maildir needs a maildir root');
    if (options.mode === 'relay' && !options.relay) throw hostError('SMTP_E_DELIVERY_RELAY', 'delivery mode relay needs a relay host and port');
    this.#maildirRoot = options.maildirRoot ?? '';
    this.#relay = options.mode === 'relay' ? createRelay(options.relay!) : undefined;
  }

  /**
   * Queues a stored message for delivery and returns at once; a message
   * already queued is not queued twice. `body`, the bytes of a message just
   * stored inline, spares delivery reading them back (kept while the cache
   * has room).
   */
  enqueue(message: SpooledMessage, body?: Buffer | null): void {
    if (this.#stopped) {
      // Still in the spool: the next start's recover() delivers it.
      this.#logger.debug({ id: message.id }, 'queue stopped; message left in the spool');
      return;
    }
    if (this.#jobs.has(message.id)) return;
    if (this.#mode === 'none') {
      this.#drop(message);
      return;
    }
    const cached = body != null && body.length === message.size && this.#bodyCacheBytes + body.length <= this.#bodyCacheBytesMax;
    if (cached) this.#bodyCacheBytes += body.length;
    const job: Job = { message, attempts: 0, tries: 0, delivered: new Set(message.delivered), failed: new Map(), timer: undefined, body: cached ? body : undefined, bodyCached: cached };
    this.#jobs.set(message.id, job);
    this.#ready.push(job);
    this.#pump();
  }

  /** Queues whatever the spool still holds (after a restart); returns how many messages were queued. */
  async recover(): Promise<number> {
    const messages = await this.#spool.list();
    let queued = 0;
    for (const message of messages) {
      if (this.#stopped || this.#jobs.has(message.id)) continue;
      this.enqueue(message);
      queued++;
    }
    return queued;
  }

  /** Resolves when nothing is queued, in flight or waiting for a retry (or, after stop, when nothing is in flight). */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Stops retries and timers and waits for deliveries in flight; what is left stays in the spool. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const job of this.#jobs.values()) clearTimeout(job.timer);
    this.#ready.length = 0;
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
    for (const job of this.#jobs.values()) this.#finish(job);
    this.#relay?.close();
    this.#wakeIdle();
  }

  #isIdle(): boolean {
    return this.#inFlight.size === 0 && (this.#stopped || this.#jobs.size === 0);
  }

  #wakeIdle(): void {
    if (!this.#isIdle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const wake of waiters) wake();
  }

  #pump(): void {
    while (!this.#stopped && this.#inFlight.size < this.#concurrency && this.#ready.length > 0) {
      const job = this.#ready.shift()!;
      const run = this.#run(job).finally(() => {
        this.#inFlight.delete(run);
        this.#pump();
        this.#wakeIdle();
      });
      this.#inFlight.add(run);
    }
  }

  /** Mode none: the message leaves the spool as soon as it is in it (its DONE rides along with the next batch). */
  #drop(message: SpooledMessage): void {
    const run = this.#spool
      .remove(message.id)
      .then(() => this.#logger.debug({ id: message.id }, 'delivery mode none: message dropped from the spool'))
      .catch((error: unknown) => this.#logger.error({ id: message.id, err: error }, 'delivery mode none: cannot drop the message from the spool; it is delivered (dropped) again at the next start'))
      .finally(() => {
        this.#inFlight.delete(run);
        this.#wakeIdle();
      });
    this.#inFlight.add(run);
  }

  async #run(job: Job): Promise<void> {
    try {
      await this.#attempt(job);
    } catch (error) {
      // The spool itself failed (a full or broken disk): keep the message
      // and try again later; bouncing would need the same disk.
      job.attempts++;
      this.#logger.error({ id: job.message.id, err: error }, 'delivery bookkeeping failed; will retry');
      this.#retryLater(job, (error as Error).message);
    }
  }

  async #attempt(job: Job): Promise<void> {
    const { message } = job;
    job.tries++;
    // Gone already: delivered or bounced elsewhere (e.g. queued twice across recover()).
    if (!this.#spool.has(message.id)) {
      this.#finish(job);
      return;
    }
    const pending = [...new Set(message.envelope.to)].filter((r) => !job.delivered.has(r) && !job.failed.has(r));
    let temporary: Map<string, string>;
    try {
      temporary = this.#mode === 'maildir' ? await this.#deliverMaildir(job, pending) : await this.#deliverRelay(job, pending);
    } finally {
      // A body read for this attempt is not kept for a retry that may be hours away.
      if (!job.bodyCached) job.body = undefined;
    }

    if (temporary.size > 0) {
      job.attempts++;
      const why = [...temporary].map(([recipient, reason]) => `${recipient}: ${reason}`).join('; ');
      if (job.attempts < this.#maxAttempts) {
        this.#retryLater(job, why);
        return;
      }
      for (const [recipient, reason] of temporary) job.failed.set(recipient, `${reason} (gave up after ${job.attempts} attempts)`);
    }
    if (job.failed.size > 0) await this.#bounce(job);
    else {
      await this.#spool.remove(message.id);
      this.#finish(job);
    }
  }

  /** The job is over: forget it and give its cached body back. */
  #finish(job: Job): void {
    this.#jobs.delete(job.message.id);
    this.#dropBody(job);
  }

  #dropBody(job: Job): void {
    if (job.bodyCached && job.body !== undefined) this.#bodyCacheBytes -= job.body.length;
    job.body = undefined;
    job.bodyCached = false;
  }

  /** Where the bytes come from: the cached body, the message's own file, or the spool (read once per attempt). */
  async #bodyOf(job: Job): Promise<MessageBody> {
    if (job.body !== undefined) return job.body;
    if (job.message.path !== undefined) return { path: job.message.path };
    job.body = await this.#spool.readBody(job.message);
    return job.body;
  }

  /** Delivers to each pending recipient; returns the temporary failures. */
  async #deliverMaildir(job: Job, pending: readonly string[]): Promise<Map<string, string>> {
    const temporary = new Map<string, string>();
    for (const recipient of pending) {
      let path: string;
      try {
        path = await deliverToMaildir(this.#maildirRoot, recipient, job.message, this.#fsync, await this.#bodyOf(job));
      } catch (error) {
        if (error instanceof MaildirError && error.permanent) job.failed.set(recipient, error.message);
        else temporary.set(recipient, (error as Error).message);
        continue;
      }
      await this.#recordDelivered(job, [recipient], path);
    }
    return temporary;
  }

  /** Sends to every pending recipient in one transaction; returns the temporary failures. */
  async #deliverRelay(job: Job, pending: readonly string[]): Promise<Map<string, string>> {
    const temporary = new Map<string, string>();
    try {
      const body = await this.#bodyOf(job);
      await this.#relay!.send(job.message, pending, Buffer.isBuffer(body) ? body : this.#spool.openBody(job.message));
      await this.#recordDelivered(job, pending, undefined);
    } catch (error) {
      if (!(error instanceof RelayError)) throw error;
      if (error.accepted.length > 0) await this.#recordDelivered(job, error.accepted, undefined);
      const rejections =
        error.rejections.length > 0
          ? error.rejections
          : pending.filter((r) => !error.accepted.includes(r)).map((recipient) => ({ recipient, permanent: error.permanent, response: error.message }));
      for (const { recipient, permanent, response } of rejections) {
        if (permanent) job.failed.set(recipient, response);
        else temporary.set(recipient, response);
      }
    }
    return temporary;
  }

  /**
   * Notes recipients as delivered: in memory at once (so a retry in this
   * process never repeats them), then in the spool, unless the entry is about
   * to be removed anyway.
   */
  async #recordDelivered(job: Job, recipients: readonly string[], path: string | undefined): Promise<void> {
    const { message } = job;
    for (const recipient of recipients) job.delivered.add(recipient);
    this.stats.delivered += recipients.length;
    this.#logger.info({ id: message.id, recipients: recipients.length, ...(path === undefined ? {} : { path }) }, 'delivered');
    const all = new Set(message.envelope.to);
    const lastOfAll = job.failed.size === 0 && [...all].every((r) => job.delivered.has(r));
    if (!lastOfAll) await this.#spool.markDelivered(message.id, recipients);
    for (const recipient of recipients) {
      try {
        await this.#onDelivered?.(message, recipient, path === undefined ? { mode: this.#mode } : { mode: this.#mode, path });
      } catch (error) {
        this.#logger.warn({ id: message.id, err: error }, 'onDelivered callback failed');
      }
    }
  }

  /** Gives the message up: moves it with the reason into <spool dir>/bounced/ and tells onBounced. */
  async #bounce(job: Job): Promise<void> {
    const { message } = job;
    const reason = [...job.failed].map(([recipient, why]) => `${recipient}: ${why}`).join('; ');
    await this.#spool.quarantine(message, join(this.#spool.dir, BOUNCED_SUBDIR), {
      reason,
      failed_recipients: [...job.failed.keys()].join(','),
      delivered_recipients: [...job.delivered].join(','),
      attempts: String(job.tries),
      bounced_at: new Date().toISOString(),
    });
    this.#finish(job);
    this.stats.bounced++;
    this.#logger.warn({ id: message.id, failed: job.failed.size }, 'message bounced');
    try {
      await this.#onBounced?.(message, reason);
    } catch (error) {
      this.#logger.warn({ id: message.id, err: error }, 'onBounced callback failed');
    }
  }

  #retryLater(job: Job, why: string): void {
    // The cache is for messages delivered at once; a retry reads the body back.
    this.#dropBody(job);
    if (this.#stopped) return;
    const baseMs = Math.min(this.#retryMaxMs, this.#retryInitialMs * 2 ** (job.attempts - 1));
    const delayMs = Math.round(baseMs * (1 - RETRY_JITTER_FRACTION * Math.random()));
    this.stats.deferred++;
    this.#logger.warn({ id: job.message.id, attempt: job.attempts, retry_in_ms: delayMs, reason: why }, 'delivery deferred');
    job.timer = setTimeout(() => {
      job.timer = undefined;
      if (this.#stopped) return;
      this.#ready.push(job);
      this.#pump();
    }, delayMs);
  }
}
