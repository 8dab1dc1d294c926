/**
 * The lease on a spool directory: which process may open it. A spool is a
 * segment log with one writer (docs/spool.md), so the unit of ownership is
 * the directory, not the message. The lease is a small JSON file in the
 * directory, `lease.<generation>`, naming the owner and an expiry; the
 * current lease is the highest generation. Every write of a lease (a claim,
 * a renewal, the release) creates the next generation with link(2), which
 * fails when the name exists: of several processes that write generation
 * n + 1 at once, exactly one succeeds, and the others learn that they lost.
 * There is no read-modify-write of a shared file, so a claimant that read a
 * stale lease cannot overwrite a fresh one.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { link, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { hostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { errorCode, renamePath, syncDirectory, unlinkIfPresent } from './fs-raw.js';

/** An owner that stops renewing loses the lease this long after its last renewal. */
export const LEASE_TTL_MS = 15_000;
/** The owner renews this often: two renewals can fail before the lease runs out. */
export const LEASE_RENEW_MS = 5_000;
/**
 * The owner counts its lease as lost this long before it expires unless a
 * renewal succeeded: it stops writing before anyone else may start (covers
 * the time to stop and a small clock skew between machines sharing storage).
 */
export const LEASE_MARGIN_MS = 4_000;
/** A handback request (`lease.want`) is honoured while younger than this; the one waiting rewrites it. */
export const WANT_TTL_MS = 5_000;
/** Reads of the current lease retried when a renewal removes the file between listing and reading. */
const LEASE_READ_TRIES_MAX = 5;
/** A lease file is tiny; a bigger one is not ours. */
const LEASE_BYTES_MAX = 4096;

const LEASE_NAME = /^lease\.(\d{1,15})$/;
const TEMP_PREFIX = 'lease-tmp.';
export const WANT_FILE = 'lease.want';

/** Who holds (or wants) a lease. */
export interface LeaseOwner {
  /** [cluster] instance_id of the owner. */
  readonly instance: string;
  /** The owner's worker index in its instance (0 for a single process). */
  readonly worker: number;
  readonly pid: number;
  /** The pid's start time (/proc/PID/stat field 22, clock ticks since boot), so that a reused pid is not taken for the owner; null where unknown. */
  readonly pidStart: string | null;
  readonly host: string;
}

/** One lease file's content. */
export interface LeaseRecord {
  readonly version: 1;
  readonly generation: number;
  readonly owner: LeaseOwner;
  /** When this owner first claimed the directory. */
  readonly acquiredAt: string;
  readonly renewedAt: string;
  readonly expiresAt: string;
  readonly released: boolean;
  /** Live messages left at release: 0 lets others skip a drained directory; null: not counted. */
  readonly messages: number | null;
}

/** What a directory's lease files say now. */
export interface LeaseState {
  /** The highest generation present (0: none). */
  readonly generation: number;
  /** Its content; null when there is no lease file, or it cannot be read (then `unreadableSince` says when it was written). */
  readonly record: LeaseRecord | null;
  readonly unreadableSince: number | null;
}

export interface LeaseTimes {
  readonly ttlMs: number;
  readonly renewMs: number;
  readonly marginMs: number;
}

export const DEFAULT_LEASE_TIMES: LeaseTimes = Object.freeze({ ttlMs: LEASE_TTL_MS, renewMs: LEASE_RENEW_MS, marginMs: LEASE_MARGIN_MS });

export interface ClaimOptions {
  /** Decides, from the lease as read, whether this claimant may take the directory. */
  readonly mayTake: (state: LeaseState, now: number) => boolean;
  /** fsync the directory after a claim (off for tests and tmpfs, as the spool's fsync). */
  readonly fsync: boolean;
  readonly times?: LeaseTimes;
  readonly logger?: Logger;
  /** The lease was lost (someone took it, or it could not be renewed in time): stop using the directory at once. */
  readonly onLost?: (why: string) => void;
}

/** The start time of `pid` from /proc (Linux); null elsewhere or when it is gone. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the name (field 2) may hold spaces and parentheses, so count from its closing parenthesis.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** This process as a lease owner. */
export function ownerHere(instance: string, worker: number): LeaseOwner {
  return { instance, worker, pid: process.pid, pidStart: processStart(process.pid), host: hostname() };
}

/** True when `owner` ran on this host and its process is gone (or the pid now belongs to another process). */
export function ownerDeadHere(owner: LeaseOwner): boolean {
  if (owner.host !== hostname()) return false;
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    if (errorCode(error) === 'ESRCH') return true;
  }
  const start = processStart(owner.pid);
  return owner.pidStart !== null && start !== null && start !== owner.pidStart;
}

/** True once the lease no longer binds anyone: released, or past its expiry (an unreadable one: a TTL after it was written). */
export function leaseExpired(state: LeaseState, now: number, times: LeaseTimes = DEFAULT_LEASE_TIMES): boolean {
  if (state.record !== null) return state.record.released || now > Date.parse(state.record.expiresAt);
  if (state.unreadableSince !== null) return now > state.unreadableSince + times.ttlMs;
  return true;
}

function isLeaseRecord(value: unknown): value is LeaseRecord {
  const record = value as Partial<LeaseRecord> | null;
  const owner = record?.owner as Partial<LeaseOwner> | undefined;
  return (
    typeof record === 'object' && record !== null && record.version === 1 && typeof record.generation === 'number' &&
    typeof owner === 'object' && typeof owner.instance === 'string' && typeof owner.worker === 'number' && typeof owner.pid === 'number' && typeof owner.host === 'string' &&
    typeof record.expiresAt === 'string' && typeof record.renewedAt === 'string' && typeof record.acquiredAt === 'string' && typeof record.released === 'boolean'
  );
}

function generations(names: readonly string[]): number[] {
  return names.flatMap((name) => {
    const match = LEASE_NAME.exec(name);
    return match ? [Number(match[1])] : [];
  });
}

/** Reads the current lease of `dir` (no lease files, or no directory: generation 0). */
export async function readLease(dir: string): Promise<LeaseState> {
  for (let attempt = 1; ; attempt++) {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      if (errorCode(error) === 'ENOENT') return { generation: 0, record: null, unreadableSince: null };
      throw error;
    }
    const generation = Math.max(0, ...generations(names));
    if (generation === 0) return { generation: 0, record: null, unreadableSince: null };
    const path = join(dir, `lease.${generation}`);
    try {
      const text = await readFile(path, 'utf8');
      const parsed: unknown = text.length > LEASE_BYTES_MAX ? null : JSON.parse(text);
      if (isLeaseRecord(parsed) && parsed.generation === generation) return { generation, record: parsed, unreadableSince: null };
      return { generation, record: null, unreadableSince: (await stat(path)).mtimeMs };
    } catch (error) {
      // Renewed (and the older generation unlinked) between the listing and the read: list again.
      if (errorCode(error) === 'ENOENT' && attempt < LEASE_READ_TRIES_MAX) continue;
      if (error instanceof SyntaxError) return { generation, record: null, unreadableSince: (await stat(path).catch(() => ({ mtimeMs: 0 }))).mtimeMs };
      throw error;
    }
  }
}

/**
 * Writes `record` as generation `record.generation`, only if no such file
 * exists: the content goes to a temporary file first and link(2) gives it
 * the lease name, so a reader never sees a lease half written, and link
 * fails with EEXIST when another process wrote that generation first.
 */
async function createGeneration(dir: string, record: LeaseRecord): Promise<boolean> {
  const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
  await writeFile(temp, `${JSON.stringify(record)}\n`, { mode: 0o600 });
  try {
    await link(temp, join(dir, `lease.${record.generation}`));
    return true;
  } catch (error) {
    if (errorCode(error) === 'EEXIST') return false;
    throw error;
  } finally {
    await unlinkIfPresent(temp);
  }
}

/** Unlinks lease generations below `current`, and temporary files of claimants that died (older than a TTL). */
async function sweep(dir: string, current: number, times: LeaseTimes): Promise<void> {
  const names = await readdir(dir);
  for (const generation of generations(names)) if (generation < current) await unlinkIfPresent(join(dir, `lease.${generation}`));
  for (const name of names.filter((each) => each.startsWith(TEMP_PREFIX))) {
    const path = join(dir, name);
    const written = await stat(path).then((s) => s.mtimeMs, () => null);
    if (written !== null && Date.now() - written > times.ttlMs) await unlinkIfPresent(path);
  }
}

/** Asks the live holder of `dir` to hand it back (the rightful owner calls this while it waits); rewrite it to keep asking. */
export async function requestHandback(dir: string, owner: LeaseOwner, times: LeaseTimes = DEFAULT_LEASE_TIMES): Promise<void> {
  const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
  await writeFile(temp, `${JSON.stringify({ owner, expiresAt: new Date(Date.now() + Math.max(WANT_TTL_MS, times.renewMs)).toISOString() })}\n`, { mode: 0o600 });
  await renamePath(temp, join(dir, WANT_FILE));
}

/** Who asks for `dir` back now, if anyone (a request past its expiry is ignored). */
export async function handbackWanted(dir: string): Promise<LeaseOwner | null> {
  try {
    const value = JSON.parse(await readFile(join(dir, WANT_FILE), 'utf8')) as { owner?: LeaseOwner; expiresAt?: string };
    if (value.owner === undefined || typeof value.expiresAt !== 'string' || Date.now() > Date.parse(value.expiresAt)) return null;
    return value.owner;
  } catch {
    return null;
  }
}

/**
 * A lease held by this process. Renewed every `renewMs` by writing the next
 * generation; when a renewal finds that generation taken, or none succeeded
 * by `marginMs` before the expiry, the lease is lost and `onLost` runs once.
 */
export class SpoolLease {
  readonly dir: string;
  readonly owner: LeaseOwner;
  readonly #times: LeaseTimes;
  readonly #fsync: boolean;
  readonly #logger: Logger;
  readonly #onLost: (why: string) => void;
  readonly #acquiredAt: string;
  #generation: number;
  #expiresAt: number;
  #timer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> = Promise.resolve();
  #state: 'held' | 'lost' | 'released' = 'held';

  private constructor(dir: string, owner: LeaseOwner, record: LeaseRecord, options: ClaimOptions) {
    this.dir = dir;
    this.owner = owner;
    this.#times = options.times ?? DEFAULT_LEASE_TIMES;
    this.#fsync = options.fsync;
    this.#logger = options.logger ?? silentLogger();
    this.#onLost = options.onLost ?? (() => undefined);
    this.#acquiredAt = record.acquiredAt;
    this.#generation = record.generation;
    this.#expiresAt = Date.parse(record.expiresAt);
  }

  /**
   * Takes the lease of `dir` (made if missing) when `mayTake` allows it from
   * the lease as read; null when it does not, or when another claimant wrote
   * the next generation first. Then re-reads it: the lease just written
   * must be the current one.
   */
  static async claim(dir: string, owner: LeaseOwner, options: ClaimOptions): Promise<SpoolLease | null> {
    const times = options.times ?? DEFAULT_LEASE_TIMES;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const state = await readLease(dir);
    const now = Date.now();
    if (!options.mayTake(state, now)) return null;
    const at = new Date(now).toISOString();
    const record: LeaseRecord = { version: 1, generation: state.generation + 1, owner, acquiredAt: at, renewedAt: at, expiresAt: new Date(now + times.ttlMs).toISOString(), released: false, messages: null };
    if (!(await createGeneration(dir, record))) return null;
    const check = await readLease(dir);
    if (check.generation !== record.generation) {
      // Only a claimant that judged this fresh lease stale could have written past it: a clock far off, or a TTL far too short.
      throw hostError('SMTP_E_SPOOL_WRITE', `the lease of ${dir} moved on to generation ${check.generation} right after this process claimed generation ${record.generation}: are clocks or lease times wrong?`);
    }
    await sweep(dir, record.generation, times);
    if (options.fsync) await syncDirectory(dir);
    const lease = new SpoolLease(dir, owner, record, options);
    lease.#schedule();
    return lease;
  }

  get generation(): number {
    return this.#generation;
  }

  /** Held and not yet within the margin of its expiry. */
  get held(): boolean {
    return this.#state === 'held' && Date.now() < this.#expiresAt - this.#times.marginMs;
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      this.#renewing = this.#renew();
    }, this.#times.renewMs);
    this.#timer.unref();
  }

  #record(extra: { released: boolean; messages: number | null }): LeaseRecord {
    const now = Date.now();
    return {
      version: 1,
      generation: this.#generation + 1,
      owner: this.owner,
      acquiredAt: this.#acquiredAt,
      renewedAt: new Date(now).toISOString(),
      expiresAt: new Date(extra.released ? now : now + this.#times.ttlMs).toISOString(),
      ...extra,
    };
  }

  async #renew(): Promise<void> {
    if (this.#state !== 'held') return;
    // Late (the event loop stalled, or renewals failed): still ours only if nobody wrote the next generation, which the write below settles.
    const late = Date.now() >= this.#expiresAt - this.#times.marginMs;
    const record = this.#record({ released: false, messages: null });
    let written: boolean;
    try {
      written = await createGeneration(this.dir, record);
    } catch (error) {
      if (!late && Date.now() < this.#expiresAt - this.#times.marginMs) {
        this.#logger.warn({ dir: this.dir, err: (error as Error).message }, 'spool lease: renewal failed; retrying');
        this.#schedule();
        return;
      }
      this.#lose(`it could not be renewed before its expiry: ${(error as Error).message}`);
      return;
    }
    if (!written) {
      this.#lose(`another process wrote generation ${record.generation} (this process let it expire)`);
      return;
    }
    this.#generation = record.generation;
    this.#expiresAt = Date.parse(record.expiresAt);
    await sweep(this.dir, this.#generation, this.#times).catch((error: unknown) => this.#logger.warn({ dir: this.dir, err: (error as Error).message }, 'spool lease: cannot remove an old generation'));
    if (this.#state === 'held') this.#schedule();
  }

  #lose(why: string): void {
    if (this.#state !== 'held') return;
    this.#state = 'lost';
    clearTimeout(this.#timer);
    this.#logger.error({ dir: this.dir, generation: this.#generation }, `spool lease lost: ${why}; this process stops using the directory`);
    this.#onLost(why);
  }

  /** Stops renewing (the directory is closed): writes a released generation, with the live messages left when known. Idempotent. */
  async release(messages: number | null = null): Promise<void> {
    if (this.#state !== 'held') return;
    clearTimeout(this.#timer);
    await this.#renewing;
    // A renewal in flight schedules the next one when it ends.
    clearTimeout(this.#timer);
    if (this.#state !== 'held') return;
    this.#state = 'released';
    const record = this.#record({ released: true, messages });
    if (!(await createGeneration(this.dir, record))) {
      this.#logger.error({ dir: this.dir, generation: record.generation }, 'spool lease: another process wrote the next generation before the release');
      return;
    }
    this.#generation = record.generation;
    await sweep(this.dir, record.generation, this.#times).catch(() => undefined);
    if (this.#fsync) await syncDirectory(this.dir).catch(() => undefined);
  }

  /** Stops renewing without writing (a process about to exit after losing it). */
  abandon(): void {
    clearTimeout(this.#timer);
    if (this.#state === 'held') this.#state = 'released';
  }
}
