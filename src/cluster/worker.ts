import { randomUUID } from 'node:crypto';
import cluster from 'node:cluster';
import { join } from 'node:path';
import type { AppConfig } from '../config/config.js';
import type { DeliveryQueue } from '../delivery/delivery-queue.js';
import { HostError, hostError, isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import { exitNow } from '../runtime/host-runtime.js';
import { SpoolLease, handbackWanted, leaseExpired, ownerDeadHere, ownerHere, readLease, requestHandback, WANT_FILE, type LeaseOwner } from '../storage/spool-lease.js';
import { unlinkIfPresent } from '../storage/fs-raw.js';
import type { Spool } from '../storage/spool.js';
import { asToWorker, WORKER_COUNT_ENV, WORKER_INDEX_ENV, type ToPrimary, type WorkerReload } from './messages.js';
import { SpoolAdopter } from './spool-adopter.js';

/** A worker waits at most this long for its own spool directory to be handed back (an adopter hands it back within a second or two; a lease of a process that hangs runs out within LEASE_TTL_MS). */
export const OWN_SPOOL_WAIT_MS = 45_000;
/** While waiting, the lease is read again this often. */
const OWN_SPOOL_POLL_MS = 250;
/** The exit status of a worker that lost its own spool's lease (the primary restarts it, and it claims the directory again). */
export const EXIT_LEASE_LOST = 3;

/** Where worker `index` of instance `instanceId` keeps its spool: a directory of its own below [storage] spool_dir. */
export function workerSpoolDir(spoolDir: string, instanceId: string, index: number): string {
  return join(spoolDir, `${instanceId}-w${index}`);
}

/**
 * This process's part as worker `index` of `count` under a Primary
 * (src/cluster/primary.ts): it runs its own MailServer on its own spool
 * directory, held by a lease; it adopts orphaned spool directories; it
 * answers the primary's reloads and asks the primary to reload every
 * worker when its admin API is told to.
 */
export class WorkerRole {
  readonly index: number;
  readonly count: number;
  /** The process's logger, every line naming this worker. */
  readonly logger: Logger;
  readonly #waitingAll = new Map<string, (results: readonly WorkerReload[]) => void>();
  #owner: LeaseOwner | null = null;
  #lease: SpoolLease | null = null;
  #adopter: SpoolAdopter | null = null;
  #reload: ((why: string) => Promise<readonly string[]>) | null = null;

  constructor(index: number, count: number, logger: Logger) {
    this.index = index;
    this.count = count;
    this.logger = logger;
    process.on('message', this.#onMessage);
  }

  readonly #onMessage = (value: unknown): void => this.#received(value);

  /** The role of this process when it is a cluster worker; null in a single-process server and in the primary. */
  static fromEnvironment(logger: Logger): WorkerRole | null {
    if (!cluster.isWorker) return null;
    const index = Number(process.env[WORKER_INDEX_ENV]);
    const count = Number(process.env[WORKER_COUNT_ENV]);
    if (!Number.isInteger(index) || !Number.isInteger(count) || index < 0 || index >= count) throw hostError('SMTP_E_CLI_USAGE', `a cluster worker needs ${WORKER_INDEX_ENV} and ${WORKER_COUNT_ENV} from its primary`);
    return new WorkerRole(index, count, logger.child({ worker: index }));
  }

  /** The config this worker runs: the same, with its own spool directory below [storage] spool_dir (reloads go through here too, so [storage] compares equal). */
  configFor(config: AppConfig): AppConfig {
    if (config.storage.spool !== 'disk') return config;
    const spoolDir = workerSpoolDir(config.storage.spoolDir, config.cluster.instanceId, this.index);
    return Object.freeze({ ...config, storage: Object.freeze({ ...config.storage, spoolDir }) });
  }

  /**
   * Takes the lease of this worker's own spool directory before the server
   * opens it: at once when it is free, released, expired or held by a dead
   * process of this host (this worker's previous self); when a live process
   * holds it (another worker delivering it as an orphan), asks for it back
   * and waits, at most OWN_SPOOL_WAIT_MS.
   */
  async claimSpool(config: AppConfig): Promise<void> {
    if (config.storage.spool !== 'disk') return;
    const dir = this.configFor(config).storage.spoolDir;
    const owner = ownerHere(config.cluster.instanceId, this.index);
    this.#owner = owner;
    const deadline = Date.now() + OWN_SPOOL_WAIT_MS;
    let asked = false;
    for (;;) {
      const lease = await SpoolLease.claim(dir, owner, {
        mayTake: (state, now) => leaseExpired(state, now) || (state.record !== null && ownerDeadHere(state.record.owner)),
        fsync: config.storage.fsync,
        logger: this.logger,
        onLost: () => {
          // Someone else may be writing this spool now: stop at once; acknowledged mail is on disk, and the primary starts this worker again.
          this.logger.fatal({ dir, exit_code: EXIT_LEASE_LOST }, 'lost the lease of this worker\'s own spool directory; exiting');
          exitNow(EXIT_LEASE_LOST);
        },
      });
      if (lease !== null) {
        this.#lease = lease;
        if ((await handbackWanted(dir))?.pid === owner.pid) await unlinkIfPresent(join(dir, WANT_FILE));
        this.logger.info({ dir, generation: lease.generation }, 'spool directory leased');
        return;
      }
      const held = await readLease(dir);
      if (Date.now() > deadline) {
        const holder = held.record?.owner;
        throw hostError('SMTP_E_SPOOL_WRITE', `the spool directory ${dir} is held by ${holder ? `${holder.instance} worker ${holder.worker} (pid ${holder.pid} on ${holder.host})` : 'another process'}, which did not hand it back within ${OWN_SPOOL_WAIT_MS} ms: do two instances share [cluster] instance_id?`);
      }
      await requestHandback(dir, owner);
      if (!asked) this.logger.info({ dir, holder: held.record?.owner ?? null }, 'own spool directory held by another process: asked for it back');
      asked = true;
      await new Promise((resume) => setTimeout(resume, OWN_SPOOL_POLL_MS));
    }
  }

  /** The server listens: tells the primary, and starts looking for orphaned spool directories. */
  started(config: AppConfig, port: number, queueFor: (spool: Spool) => DeliveryQueue): void {
    if (config.storage.spool === 'disk' && this.#owner !== null) {
      this.#adopter = new SpoolAdopter({
        root: config.storage.spoolDir,
        ownDir: this.configFor(config).storage.spoolDir,
        owner: this.#owner,
        storage: config.storage,
        queueFor,
        logger: this.logger,
      });
      this.#adopter.start();
    }
    this.#send({ smtpHost: 'ready', worker: this.index, port });
  }

  #send(message: ToPrimary): void {
    if (process.connected) process.send!(message);
  }

  /** How this worker reloads (as SIGHUP does); the primary's reload requests run it. */
  onReload(reload: (why: string) => Promise<readonly string[]>): void {
    this.#reload = reload;
  }

  #received(value: unknown): void {
    const message = asToWorker(value);
    if (message === null) return;
    if (message.smtpHost === 'reloaded-all') {
      this.#waitingAll.get(message.id)?.(message.results);
      this.#waitingAll.delete(message.id);
      return;
    }
    const answer = (result: Omit<WorkerReload, 'worker' | 'pid'>): void => this.#send({ smtpHost: 'reloaded', id: message.id, result: { worker: this.index, pid: process.pid, ...result } });
    if (this.#reload === null) {
      answer({ ok: false, changed: [], code: 'SMTP_E_CONFIG', message: 'the worker is not running yet' });
      return;
    }
    this.#reload(message.why).then(
      (changed) => answer({ ok: true, changed }),
      (error: unknown) => answer({ ok: false, changed: [], code: isHostError(error) ? error.code : 'SMTP_E_CONFIG', message: (error as Error).message }),
    );
  }

  /**
   * Reloads the config in every worker, through the primary (the admin
   * API's reload): resolves with this worker's changed plugins once all
   * succeeded, or rejects with the first refusal's coded error, naming the
   * worker.
   */
  reloadEverywhere(why: string): Promise<readonly string[]> {
    const id = randomUUID();
    return new Promise<readonly WorkerReload[]>((done, fail) => {
      if (!process.connected) return fail(hostError('SMTP_E_CONFIG', 'the primary is gone: cannot reload the other workers'));
      this.#waitingAll.set(id, done);
      this.#send({ smtpHost: 'reload-all', id, why });
    }).then((results) => {
      const refused = results.filter((result) => !result.ok);
      if (refused.length > 0) {
        const [first] = refused;
        throw new HostError(first!.code ?? 'SMTP_E_CONFIG', `worker ${first!.worker}: ${first!.message ?? 'reload refused'}${refused.length > 1 ? ` (also refused by workers ${refused.slice(1).map((r) => r.worker).join(', ')})` : ''}`);
      }
      return results.find((result) => result.worker === this.index)?.changed ?? [];
    });
  }

  /** Before the server stops: lets adopted directories go (their deliveries may call into the server's plugins). */
  async stopAdopting(): Promise<void> {
    await this.#adopter?.stop();
  }

  /** After the server stopped (its spool closed), or failed to start: releases this worker's own lease. */
  async released(): Promise<void> {
    await this.#lease?.release(null);
  }

  /** The last step: leaves the IPC channel, which would otherwise keep the process alive. */
  detach(): void {
    process.off('message', this.#onMessage);
    if (process.connected) process.disconnect();
  }
}
