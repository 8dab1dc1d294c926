import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { StorageConfig } from '../config/config.js';
import { BOUNCED_SUBDIR, type DeliveryQueue } from '../delivery/delivery-queue.js';
import type { Logger } from '../log.js';
import { SEGMENT_NAME } from '../storage/segment-log.js';
import { DEFAULT_LEASE_TIMES, SpoolLease, handbackWanted, leaseExpired, readLease, type LeaseOwner, type LeaseState, type LeaseTimes } from '../storage/spool-lease.js';
import { LARGE_SUBDIR, Spool } from '../storage/spool.js';

/** Orphaned spool directories are looked for this often (the first look one interval after start, once the other workers have claimed their own). */
export const ADOPT_SCAN_MS = 5_000;
/** An adopted directory is checked this often for its rightful owner asking for it back. */
export const HANDBACK_CHECK_MS = 1_000;
/** Spool directories one process delivers for others at once. */
export const ADOPTED_SPOOLS_MAX = 8;
/** Entries of the spool root looked at per scan. */
export const SCAN_ENTRIES_MAX = 4096;
/** A directory that could not be opened is not tried again for this long (its error is logged once per try). */
export const ADOPT_RETRY_MS = 60_000;

/** File times may be this coarse (ext3, some network file systems), and the release is written just after the spool's last write. */
const FILE_TIME_SLACK_MS = 2_000;

/** The previous layout's per-message records (docs/spool.md): only a single-process run's spool_dir itself may hold them. */
const OLD_LAYOUT_RECORD = /^[0-9a-z]{9}-[0-9a-f]{16}\.json$/;
/** Folders a single-process run keeps in spool_dir itself: never spools (bounced/ holds <id>.json records that must not be delivered again). */
const NOT_SPOOLS: ReadonlySet<string> = new Set([BOUNCED_SUBDIR, LARGE_SUBDIR]);

export interface SpoolAdopterOptions {
  /** [storage] spool_dir: the directories below it, and itself (a spool of a single-process run), are candidates. */
  readonly root: string;
  /** This process's own directory, never adopted here. */
  readonly ownDir: string;
  readonly owner: LeaseOwner;
  readonly storage: Pick<StorageConfig, 'fsync' | 'groupCommitMs'>;
  /** A delivery queue over another spool, delivering as this process's own queue does. */
  readonly queueFor: (spool: Spool) => DeliveryQueue;
  readonly logger: Logger;
  readonly times?: LeaseTimes;
  readonly scanMs?: number;
  readonly handbackCheckMs?: number;
}

/** Why an adopted directory is let go. */
type Ending = 'drained' | 'handback' | 'stopping' | 'lease lost';

/** One adopted directory: its lease, its spool and queue, and how to end it. */
interface Adoption {
  readonly dir: string;
  readonly lease: SpoolLease;
  readonly end: (why: Ending) => void;
  readonly done: Promise<void>;
}

/** Whether `dir` holds spool files written after `sinceMs` (0: at all): segments, and in the spool root the previous layout's records. */
async function holdsMailSince(dir: string, sinceMs: number, isRoot: boolean): Promise<boolean> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names.filter((each) => SEGMENT_NAME.test(each) || (isRoot && OLD_LAYOUT_RECORD.test(each)))) {
    const written = await stat(join(dir, name)).then((s) => s.mtimeMs, () => -1);
    if (written > sinceMs) return true;
  }
  return false;
}

/**
 * Finds spool directories whose owner is gone and delivers what they hold:
 * a directory is adopted when its lease has expired (an owner that stopped
 * renewing: dead, or unable to come back) and it may still hold mail, or
 * when it holds mail and has no lease at all (the spool of a
 * single-process run). The claim is the lease's exclusive claim, so of
 * several workers that find one directory at once exactly one adopts it.
 * The directory is opened as a second Spool in this process; its
 * DeliveryQueue recovers and delivers its messages; once empty it is closed
 * and its lease released with 0 messages left. When its rightful owner asks
 * for it back (a restarted worker of that index), it is closed and released
 * at once, whatever it still holds.
 */
export class SpoolAdopter {
  readonly #options: SpoolAdopterOptions;
  readonly #times: LeaseTimes;
  readonly #adoptions = new Map<string, Adoption>();
  readonly #failedUntil = new Map<string, number>();
  #scanTimer: NodeJS.Timeout | undefined;
  #handbackTimer: NodeJS.Timeout | undefined;
  #scanning: Promise<number> | null = null;
  #stopped = false;

  constructor(options: SpoolAdopterOptions) {
    this.#options = options;
    this.#times = options.times ?? DEFAULT_LEASE_TIMES;
  }

  /** The directories adopted now. */
  get adopted(): string[] {
    return [...this.#adoptions.keys()];
  }

  start(): void {
    const scanMs = this.#options.scanMs ?? ADOPT_SCAN_MS;
    this.#scanTimer = setInterval(() => void this.scan(), scanMs);
    this.#handbackTimer = setInterval(() => void this.#checkHandbacks(), this.#options.handbackCheckMs ?? HANDBACK_CHECK_MS);
  }

  /** One look for orphaned directories; resolves with how many it adopted (their delivery goes on after). */
  scan(): Promise<number> {
    this.#scanning ??= this.#scan().catch((error: unknown) => {
      this.#options.logger.warn({ root: this.#options.root, err: (error as Error).message }, 'looking for orphaned spool directories failed');
      return 0;
    }).finally(() => (this.#scanning = null));
    return this.#scanning;
  }

  async #scan(): Promise<number> {
    const { root, ownDir } = this.#options;
    const entries = await readdir(root, { withFileTypes: true }).catch(() => []);
    const candidates = [resolve(root), ...entries.slice(0, SCAN_ENTRIES_MAX).filter((entry) => entry.isDirectory() && !NOT_SPOOLS.has(entry.name)).map((entry) => resolve(root, entry.name))];
    let adopted = 0;
    for (const dir of candidates) {
      if (this.#stopped || this.#adoptions.size >= ADOPTED_SPOOLS_MAX) break;
      if (dir === resolve(ownDir) || this.#adoptions.has(dir) || (this.#failedUntil.get(dir) ?? 0) > Date.now()) continue;
      if (await this.#tryAdopt(dir)) adopted++;
    }
    return adopted;
  }

  /** Whether the lease as read lets another process take `dir`: expired (or none), and mail may be left. */
  async #orphaned(dir: string, state: LeaseState): Promise<boolean> {
    if (!leaseExpired(state, Date.now(), this.#times)) return false;
    const isRoot = dir === resolve(this.#options.root);
    if (state.record === null) return holdsMailSince(dir, 0, isRoot);
    // Released drained; or a spool written since by something that takes no lease (a single-process run).
    return state.record.messages !== 0 || holdsMailSince(dir, Date.parse(state.record.renewedAt) + FILE_TIME_SLACK_MS, isRoot);
  }

  async #tryAdopt(dir: string): Promise<boolean> {
    const state = await readLease(dir);
    if (!(await this.#orphaned(dir, state))) return false;
    let end: (why: Ending) => void = () => undefined;
    const ending = new Promise<Ending>((done) => (end = done));
    const lease = await SpoolLease.claim(dir, this.#options.owner, {
      // Claimed only if nothing changed since the look above: the same generation, still free.
      mayTake: (current, now) => current.generation === state.generation && leaseExpired(current, now, this.#times),
      fsync: this.#options.storage.fsync,
      times: this.#times,
      logger: this.#options.logger,
      onLost: () => end('lease lost'),
    });
    if (lease === null) return false;
    const done = this.#deliver(dir, lease, ending, state).finally(() => this.#adoptions.delete(dir));
    this.#adoptions.set(dir, { dir, lease, end, done });
    return true;
  }

  async #deliver(dir: string, lease: SpoolLease, ending: Promise<Ending>, previous: LeaseState): Promise<void> {
    const { logger, storage } = this.#options;
    const spool = new Spool({ dir, fsync: storage.fsync, groupCommitMs: storage.groupCommitMs, logger });
    let why: Ending = 'stopping';
    let left: number | null = null;
    try {
      await spool.open();
      const queue = this.#options.queueFor(spool);
      try {
        const messages = await queue.recover();
        logger.info({ dir, messages, previous_owner: previous.record?.owner ?? null }, 'adopted an orphaned spool directory: delivering what it holds');
        let heldNoted = false;
        for (;;) {
          const next = await Promise.race([queue.idle().then(() => 'idle' as const), ending]);
          if (next !== 'idle') {
            why = next;
            break;
          }
          left = (await spool.list()).length;
          if (left === 0) {
            why = 'drained';
            break;
          }
          // Only held messages are left: they wait for a release that this process's admin API cannot give (docs/scale-out.md).
          if (!heldNoted) logger.warn({ dir, held: left }, 'adopted spool directory: only held messages are left; kept until its owner asks for it back or this worker stops');
          heldNoted = true;
          why = await ending;
          break;
        }
      } finally {
        await queue.stop();
      }
      if (why !== 'drained') left = (await spool.list()).length;
    } catch (error) {
      this.#failedUntil.set(dir, Date.now() + ADOPT_RETRY_MS);
      logger.error({ dir, err: (error as Error).message }, 'cannot deliver from an adopted spool directory; letting it go');
      left = null;
    } finally {
      await spool.close().catch((error: unknown) => logger.error({ dir, err: (error as Error).message }, 'cannot close an adopted spool'));
    }
    if (why === 'lease lost') return;
    await lease.release(left).catch((error: unknown) => logger.error({ dir, err: (error as Error).message }, 'cannot release the lease of an adopted spool directory'));
    logger.info({ dir, why, messages_left: left }, 'adopted spool directory let go');
  }

  async #checkHandbacks(): Promise<void> {
    for (const adoption of this.#adoptions.values()) {
      const wanted = await handbackWanted(adoption.dir);
      if (wanted === null || wanted.pid === this.#options.owner.pid) continue;
      this.#options.logger.info({ dir: adoption.dir, wanted_by: wanted }, 'handing an adopted spool directory back to its owner');
      adoption.end('handback');
    }
  }

  /** Stops looking, and lets every adopted directory go (deliveries in flight finish; what is left stays for its owner). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#scanTimer);
    clearInterval(this.#handbackTimer);
    await this.#scanning;
    for (const adoption of this.#adoptions.values()) adoption.end('stopping');
    await Promise.all([...this.#adoptions.values()].map((adoption) => adoption.done));
  }
}
