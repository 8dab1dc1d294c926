import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { silentLogger, type Logger } from '../log.js';
import { hostError } from '../errors.js';
import type { Spool, SpooledMessage } from '../storage/spool.js';
import { HELD_MESSAGES_MAX, HoldList } from './hold-list.js';
import { MaildirError, deliverToMaildir, type MessageBody } from './maildir.js';
import { selectorMatcher, type QueueEntry, type QueueEntryState, type QueueOperationResult, type QueueSelector, type QueueSummary } from './queue-selector.js';
import { RelayError, createRelay, type Relay, type RelayOptions } from './relay.js';

export type { QueueEntry, QueueEntryState, QueueOperationResult, QueueSelector, QueueSummary } from './queue-selector.js';

export type DeliveryMode = 'maildir' | 'relay' | 'none';

/** How an attempt on a message ended; `failed`: the spool's own bookkeeping failed (the message is retried). */
export type AttemptOutcome = 'delivered' | 'deferred' | 'bounced' | 'failed';

/** Optional; for metrics. Called synchronously: it must be cheap and must not throw (a throw is logged and ignored). */
export interface DeliveryObserver {
  /** After each attempt on a message: how it ended, how long it had waited in the queue when the attempt began (seconds since receivedAt), and how long the attempt took (seconds). */
  attempted(outcome: AttemptOutcome, queuedSeconds: number, attemptSeconds: number): void;
}

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
  readonly observer?: DeliveryObserver;
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

/** One message the queue knows about: ready, in flight, waiting for a retry, or held. */
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
  /** When `timer` fires, in ms since the epoch; null when no retry waits. */
  nextAttemptAt: number | null;
  /** An attempt is running. */
  delivering: boolean;
  /** Why the last temporary failure happened; null if none did. */
  lastError: string | null;
  /** The body in memory: given to enqueue() (counted in the cache), or read for the attempt in flight. */
  body: Buffer | undefined;
  bodyCached: boolean;
}

/** "a@x, b@x: reason; c@y: other reason": a relay that refused the whole transaction gives one reason for all. */
function byReason(failures: ReadonlyMap<string, string>): string {
  const grouped = new Map<string, string[]>();
  for (const [recipient, reason] of failures) grouped.set(reason, [...(grouped.get(reason) ?? []), recipient]);
  return [...grouped].map(([reason, recipients]) => `${recipients.join(', ')}: ${reason}`).join('; ');
}

/**
 * Delivers spooled messages onward (into Maildirs, or to a smarthost), at
 * most `concurrency` at a time, retrying temporary failures with exponential
 * backoff. A spool entry is removed only once every recipient was delivered
 * or the message was bounced, so a crash at any point delivers again rather
 * than loses (at-least-once). An operator can list, flush, hold, release
 * and delete queued messages (as Postfix's postqueue and postsuper do);
 * holds are kept in <spool dir>/hold.list, so they outlive a restart.
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
  readonly #observer: DeliveryObserver | undefined;
  readonly #holdList: HoldList;
  /**
   * Ids of held messages: the hold list as read once (#loadHolds), then as
   * operations change it. It may name messages already gone; those are
   * pruned before each write of the list.
   */
  readonly #held = new Set<string>();
  #holdsLoaded: Promise<void> | null = null;
  /** By message id. A message is in here from enqueue until its spool entry is gone. */
  readonly #jobs = new Map<string, Job>();
  #ready: Job[] = [];
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
    this.#observer = options.observer;
    this.#holdList = new HoldList({ dir: options.spool.dir, fsync: options.fsync, logger: this.#logger });
    if (options.mode === 'maildir' && !options.maildirRoot) throw hostError('SMTP_E_DELIVERY_MAILDIR', 'delivery mode maildir needs a maildir root');
    if (options.mode === 'relay' && !options.relay) throw hostError('SMTP_E_DELIVERY_RELAY', 'delivery mode relay needs a relay host and port');
    this.#maildirRoot = options.maildirRoot ?? '';
    this.#relay = options.mode === 'relay' ? createRelay(options.relay!) : undefined;
  }

  /**
   * Queues a stored message for delivery and returns at once; a message
   * already queued is not queued twice. `body`, the bytes of a message just
   * stored inline, spares delivery reading them back (kept while the cache
   * has room). A held message is queued but not attempted.
   */
  enqueue(message: SpooledMessage, body?: Buffer | null): void {
    if (this.#stopped) {
      // Still in the spool: the next start's recover() delivers it.
      this.#logger.debug({ id: message.id }, 'queue stopped; message left in the spool');
      return;
    }
    if (this.#jobs.has(message.id)) return;
    const held = this.#held.has(message.id);
    if (this.#mode === 'none') {
      // Dropping is this mode's delivery, which a hold forbids: the message waits in the spool for a mode that delivers.
      if (held) this.#logger.info({ id: message.id }, 'delivery mode none: held message left in the spool');
      else this.#drop(message);
      return;
    }
    const cached = !held && body != null && body.length === message.size && this.#bodyCacheBytes + body.length <= this.#bodyCacheBytesMax;
    if (cached) this.#bodyCacheBytes += body.length;
    const job: Job = {
      message,
      attempts: 0,
      tries: 0,
      delivered: new Set(message.delivered),
      failed: new Map(),
      timer: undefined,
      nextAttemptAt: null,
      delivering: false,
      lastError: null,
      body: cached ? body : undefined,
      bodyCached: cached,
    };
    this.#jobs.set(message.id, job);
    if (held) return;
    this.#ready.push(job);
    this.#pump();
  }

  /** Queues whatever the spool still holds (after a restart), held messages as held; returns how many messages were queued. */
  async recover(): Promise<number> {
    await this.#loadHolds();
    const messages = await this.#spool.list();
    let queued = 0;
    for (const message of messages) {
      if (this.#stopped || this.#jobs.has(message.id)) continue;
      this.enqueue(message);
      queued++;
    }
    return queued;
  }

  /** Resolves when nothing is in flight, ready or waiting for a retry: every message left, if any, is held (after stop: when nothing is in flight). */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Stops retries and timers and waits for deliveries in flight and hold list writes; what is left stays in the spool. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const job of this.#jobs.values()) this.#cancelRetry(job);
    this.#ready.length = 0;
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
    for (const job of this.#jobs.values()) this.#finish(job);
    this.#relay?.close();
    await this.#holdList.settled();
    this.#wakeIdle();
  }

  // ---- operations (an operator's, through the admin API) ----

  /** The entries `selector` matches (all of them without one), oldest first. */
  list(selector: QueueSelector = { all: true }): QueueEntry[] {
    const now = Date.now();
    return this.#select(selector).map((job) => this.#entryOf(job, now));
  }

  summary(): QueueSummary {
    const counts = { ready: 0, delivering: 0, deferred: 0, held: 0 };
    let oldestReceivedAt: string | null = null;
    for (const job of this.#jobs.values()) {
      counts[this.#stateOf(job)]++;
      if (oldestReceivedAt === null || job.message.receivedAt < oldestReceivedAt) oldestReceivedAt = job.message.receivedAt;
    }
    return { depth: this.#jobs.size, oldestReceivedAt, ...counts };
  }

  /** Retries deferred entries now. Their backoff is kept: a further failure waits as long as it would have. Held, ready and delivering entries are left as they are. */
  flush(selector: QueueSelector): QueueOperationResult {
    const flushed: string[] = [];
    for (const job of this.#select(selector)) {
      if (this.#stateOf(job) !== 'deferred') continue;
      this.#cancelRetry(job);
      this.#ready.push(job);
      flushed.push(job.message.id);
    }
    if (flushed.length > 0) this.#logger.info({ messages: flushed.length }, 'deferred messages flushed by an operator');
    this.#pump();
    return { ids: flushed, busy: [] };
  }

  /**
   * Holds entries: they are not attempted until released, across restarts.
   * A deferred entry's retry is cancelled; one being delivered is held once
   * its attempt ends (unless that attempt delivers it). Rejects with
   * SMTP_E_SPOOL_WRITE when the hold list cannot be written (the entries
   * are then held in this process only) or would grow past
   * HELD_MESSAGES_MAX (nothing is held).
   */
  async hold(selector: QueueSelector): Promise<QueueOperationResult> {
    await this.#loadHolds();
    const fresh = this.#select(selector).filter((job) => !this.#held.has(job.message.id));
    if (fresh.length === 0) return { ids: [], busy: [] };
    this.#pruneHolds();
    if (this.#held.size + fresh.length > HELD_MESSAGES_MAX) {
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot hold ${fresh.length} more messages: ${this.#held.size} are held and the hold list takes at most ${HELD_MESSAGES_MAX}`);
    }
    for (const job of fresh) {
      this.#held.add(job.message.id);
      this.#cancelRetry(job);
      // A held message may wait for days: its body goes back to the cache for messages delivered at once.
      if (!job.delivering) this.#dropBody(job);
      this.#logger.info({ id: job.message.id }, 'message held by an operator');
    }
    this.#ready = this.#ready.filter((job) => !this.#held.has(job.message.id));
    this.#wakeIdle();
    await this.#writeHolds(`${fresh.length} messages are held in this process`);
    return { ids: fresh.map((job) => job.message.id), busy: [] };
  }

  /** Releases held entries: they are ready at once. Rejects with SMTP_E_SPOOL_WRITE when the hold list cannot be written (they are released in this process only). */
  async release(selector: QueueSelector): Promise<QueueOperationResult> {
    await this.#loadHolds();
    const released = this.#select(selector).filter((job) => this.#held.has(job.message.id));
    if (released.length === 0) return { ids: [], busy: [] };
    for (const job of released) {
      this.#held.delete(job.message.id);
      // One being delivered goes on as if never held: retried after a temporary failure.
      if (!job.delivering) this.#ready.push(job);
      this.#logger.info({ id: job.message.id }, 'message released by an operator');
    }
    this.#pump();
    await this.#writeHolds(`${released.length} messages are released in this process (a restart holds them again)`);
    return { ids: released.map((job) => job.message.id), busy: [] };
  }

  /**
   * Removes entries from the spool, so they are never delivered. An entry
   * being delivered is left alone and named in `busy`: its transmission may
   * already have gone through. Rejects with SMTP_E_SPOOL_WRITE when the
   * spool cannot record a removal; those entries stay queued.
   */
  async delete(selector: QueueSelector): Promise<QueueOperationResult> {
    const busy: string[] = [];
    const doomed: Job[] = [];
    for (const job of this.#select(selector)) {
      if (job.delivering) busy.push(job.message.id);
      else doomed.push(job);
    }
    if (doomed.length === 0) return { ids: [], busy };
    const leaving = new Set(doomed);
    this.#ready = this.#ready.filter((job) => !leaving.has(job));
    for (const job of doomed) {
      this.#cancelRetry(job);
      this.#finish(job);
    }
    // Removed from the queue first, so nothing attempts them while their DONE records are written (together, in one batch).
    const removals = await Promise.allSettled(doomed.map((job) => this.#spool.remove(job.message.id, { durable: true })));
    const deleted: string[] = [];
    const failures: unknown[] = [];
    removals.forEach((removal, i) => {
      const { message } = doomed[i]!;
      if (removal.status === 'fulfilled') {
        deleted.push(message.id);
        this.#logger.info({ id: message.id }, 'message deleted by an operator');
      } else {
        failures.push(removal.reason);
        this.enqueue(message);
      }
    });
    this.#wakeIdle();
    if (failures.length > 0) {
      const first = failures[0] as Error;
      throw hostError('SMTP_E_SPOOL_WRITE', `deleted ${deleted.length} of ${doomed.length} messages; the other ${failures.length} stay queued: ${first.message}`, first);
    }
    return { ids: deleted, busy };
  }

  #select(selector: QueueSelector): Job[] {
    const matches = selectorMatcher(selector);
    const jobs = [...this.#jobs.values()].filter((job) => matches(job.message));
    // Stable: messages of the same millisecond keep their queue order.
    return jobs.sort((a, b) => (a.message.receivedAt < b.message.receivedAt ? -1 : a.message.receivedAt > b.message.receivedAt ? 1 : 0));
  }

  #stateOf(job: Job): QueueEntryState {
    if (job.delivering) return 'delivering';
    if (this.#held.has(job.message.id)) return 'held';
    return job.timer === undefined ? 'ready' : 'deferred';
  }

  #entryOf(job: Job, now: number): QueueEntry {
    const { message } = job;
    return {
      id: message.id,
      receivedAt: message.receivedAt,
      ageSeconds: (now - Date.parse(message.receivedAt)) / 1000,
      sender: message.envelope.from,
      recipients: [...message.envelope.to],
      pending: pendingOf(job),
      size: message.size,
      state: this.#stateOf(job),
      attempts: job.tries,
      lastError: job.lastError,
      nextAttemptAt: job.nextAttemptAt === null ? null : new Date(job.nextAttemptAt).toISOString(),
    };
  }

  /** Reads the hold list, once, before anything is recovered or held (a write before it would drop the holds it lists). */
  #loadHolds(): Promise<void> {
    this.#holdsLoaded ??= this.#holdList.read().then((ids) => {
      for (const id of ids) this.#held.add(id);
    });
    return this.#holdsLoaded;
  }

  /** Forgets holds of messages no longer in the spool (delivered, bounced or deleted). */
  #pruneHolds(): void {
    for (const id of this.#held) if (!this.#spool.has(id)) this.#held.delete(id);
  }

  /** Writes the hold list; `applied` says what already took effect in memory, for the error if the write fails. */
  async #writeHolds(applied: string): Promise<void> {
    this.#pruneHolds();
    try {
      await this.#holdList.write(this.#held);
    } catch (error) {
      throw hostError('SMTP_E_SPOOL_WRITE', `${applied}, but not for a restart: ${(error as Error).message}`, error);
    }
  }

  #cancelRetry(job: Job): void {
    clearTimeout(job.timer);
    job.timer = undefined;
    job.nextAttemptAt = null;
  }

  #isIdle(): boolean {
    if (this.#inFlight.size > 0) return false;
    if (this.#stopped) return true;
    for (const id of this.#jobs.keys()) if (!this.#held.has(id)) return false;
    return true;
  }

  #wakeIdle(): void {
    // Checked only when someone waits: #isIdle walks the jobs.
    if (this.#idleWaiters.length === 0 || !this.#isIdle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const wake of waiters) wake();
  }

  #pump(): void {
    while (!this.#stopped && this.#inFlight.size < this.#concurrency && this.#ready.length > 0) {
      const job = this.#ready.shift()!;
      job.delivering = true;
      const run = this.#run(job).finally(() => {
        job.delivering = false;
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
    // Timed only for an observer: no clock reads otherwise.
    const queuedSeconds = this.#observer === undefined ? 0 : (Date.now() - Date.parse(job.message.receivedAt)) / 1000;
    const startedAt = this.#observer === undefined ? 0 : performance.now();
    let outcome: AttemptOutcome | null;
    try {
      outcome = await this.#attempt(job);
    } catch (error) {
      // The spool itself failed (a full or broken disk): keep the message
      // and try again later; bouncing would need the same disk.
      job.attempts++;
      this.#logger.error({ id: job.message.id, err: error }, 'delivery bookkeeping failed; will retry');
      this.#retryLater(job, (error as Error).message);
      outcome = 'failed';
    }
    if (this.#observer === undefined || outcome === null) return;
    try {
      this.#observer.attempted(outcome, queuedSeconds, (performance.now() - startedAt) / 1000);
    } catch (error) {
      this.#logger.warn({ id: job.message.id, err: error }, 'delivery observer failed');
    }
  }

  /** One attempt; null when the message turned out to be gone already. */
  async #attempt(job: Job): Promise<AttemptOutcome | null> {
    const { message } = job;
    job.tries++;
    // Gone already: delivered or bounced elsewhere (e.g. queued twice across recover()).
    if (!this.#spool.has(message.id)) {
      this.#finish(job);
      return null;
    }
    const pending = pendingOf(job);
    let temporary: Map<string, string>;
    try {
      temporary = this.#mode === 'maildir' ? await this.#deliverMaildir(job, pending) : await this.#deliverRelay(job, pending);
    } finally {
      // A body read for this attempt is not kept for a retry that may be hours away.
      if (!job.bodyCached) job.body = undefined;
    }

    if (temporary.size > 0) {
      job.attempts++;
      const why = byReason(temporary);
      if (job.attempts < this.#maxAttempts) {
        this.#retryLater(job, why);
        return 'deferred';
      }
      for (const [recipient, reason] of temporary) job.failed.set(recipient, `${reason} (gave up after ${job.attempts} attempts)`);
    }
    if (job.failed.size > 0) {
      await this.#bounce(job);
      return 'bounced';
    }
    await this.#spool.remove(message.id);
    this.#finish(job);
    return 'delivered';
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
    job.lastError = why;
    if (this.#stopped) return;
    this.stats.deferred++;
    if (this.#held.has(job.message.id)) {
      this.#logger.warn({ id: job.message.id, attempt: job.attempts, reason: why }, 'delivery deferred; the message is held: no retry until it is released');
      return;
    }
    const baseMs = Math.min(this.#retryMaxMs, this.#retryInitialMs * 2 ** (job.attempts - 1));
    const delayMs = Math.round(baseMs * (1 - RETRY_JITTER_FRACTION * Math.random()));
    this.#logger.warn({ id: job.message.id, attempt: job.attempts, retry_in_ms: delayMs, reason: why }, 'delivery deferred');
    job.nextAttemptAt = Date.now() + delayMs;
    job.timer = setTimeout(() => {
      job.timer = undefined;
      job.nextAttemptAt = null;
      if (this.#stopped) return;
      this.#ready.push(job);
      this.#pump();
    }, delayMs);
  }
}

/** Recipients neither delivered nor refused for good, each once. */
function pendingOf(job: Job): string[] {
  return [...new Set(job.message.envelope.to)].filter((r) => !job.delivered.has(r) && !job.failed.has(r));
}
