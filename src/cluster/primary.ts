import { randomUUID } from 'node:crypto';
import cluster, { type Worker } from 'node:cluster';
import type { AppConfig } from '../config/config.js';
import type { Logger } from '../log.js';
import { EXIT_FORCED, SHUTDOWN_GRACE_MS } from '../cli/shutdown.js';
import { asToPrimary, WORKER_COUNT_ENV, WORKER_INDEX_ENV, type ToWorker, type WorkerReload } from './messages.js';

/** The first restart of a worker that died waits this long; each further death in a row doubles it, up to the max. */
export const RESTART_INITIAL_MS = 100;
export const RESTART_MAX_MS = 30_000;
/** A worker that ran this long before dying counts as having worked: its next death restarts it after RESTART_INITIAL_MS again. */
export const WORKER_STABLE_MS = 30_000;
/** A reload waits this long for each worker's answer (loading a changed plugin can take seconds). */
export const RELOAD_ANSWER_MS = 60_000;
/** Workers get SIGTERM, and this long to stop (their own bounded stop, plus a margin), before SIGKILL. */
export const WORKERS_STOP_MS = SHUTDOWN_GRACE_MS + 5_000;
/** The first start: every worker must be listening within this long, or the whole server gives up. */
export const WORKERS_START_MS = 120_000;

/** One worker index: the process now running it, and its record of deaths. */
interface Slot {
  readonly index: number;
  worker: Worker | null;
  ready: boolean;
  startedAt: number;
  /** Deaths in a row, each within WORKER_STABLE_MS of its start. */
  failures: number;
  restartTimer: NodeJS.Timeout | undefined;
}

function howItEnded(code: number | null, signal: string | null): string {
  return signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
}

/**
 * The primary of `[server] workers = N`: forks N workers (each runs its own
 * MailServer on the shared listener; node:cluster hands them connections in
 * turn), restarts a worker that dies with a back-off while it keeps dying,
 * forwards SIGHUP as a reload to every worker and stops them all on SIGTERM
 * or SIGINT. It holds no plugin, no SMTP session and no spool.
 */
export class Primary {
  readonly #config: AppConfig;
  readonly #logger: Logger;
  readonly #slots: Slot[];
  readonly #waiting = new Map<string, { answers: Map<number, WorkerReload>; expected: Set<number>; done: (results: WorkerReload[]) => void; timer: NodeJS.Timeout }>();
  #stopping = false;
  #onFirstStart: ((failure: string | null) => void) | null = null;

  constructor(config: AppConfig, logger: Logger) {
    this.#config = config;
    this.#logger = logger;
    this.#slots = Array.from({ length: config.server.workers }, (_, index) => ({ index, worker: null, ready: false, startedAt: 0, failures: 0, restartTimer: undefined }));
  }

  /** Forks every worker; true once all listen; false when one dies first or the start takes too long (the others are then stopped). */
  async start(): Promise<boolean> {
    this.#logger.info({ workers: this.#slots.length, instance: this.#config.cluster.instanceId }, 'starting workers');
    const started = new Promise<string | null>((done) => (this.#onFirstStart = done));
    for (const slot of this.#slots) this.#fork(slot);
    let timer: NodeJS.Timeout | undefined;
    const failure = await Promise.race([started, new Promise<string>((done) => (timer = setTimeout(() => done(`not every worker was listening after ${WORKERS_START_MS} ms`), WORKERS_START_MS)))]);
    clearTimeout(timer);
    this.#onFirstStart = null;
    if (failure !== null) {
      // The worker that failed printed its own coded error.
      this.#logger.error({ reason: failure }, 'the server did not start; stopping the other workers');
      await this.stop();
      return false;
    }
    this.#logger.info({ workers: this.#slots.length, worker_pids: this.#slots.map((slot) => slot.worker?.process.pid) }, 'workers ready');
    return true;
  }

  #fork(slot: Slot): void {
    slot.restartTimer = undefined;
    slot.ready = false;
    slot.startedAt = Date.now();
    const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(slot.index), [WORKER_COUNT_ENV]: String(this.#slots.length) });
    slot.worker = worker;
    worker.on('message', (message: unknown) => this.#received(slot, worker, message));
    worker.once('exit', (code: number | null, signal: string | null) => this.#exited(slot, worker, code, signal));
  }

  #received(slot: Slot, worker: Worker, value: unknown): void {
    const message = asToPrimary(value);
    if (message === null) return;
    switch (message.smtpHost) {
      case 'ready':
        slot.ready = true;
        this.#logger.info({ worker: slot.index, worker_pid: worker.process.pid, port: message.port }, 'worker listening');
        if (this.#onFirstStart !== null && this.#slots.every((each) => each.ready)) this.#onFirstStart(null);
        return;
      case 'reload-all':
        void this.reloadAll(message.why).then((results) => this.#send(worker, { smtpHost: 'reloaded-all', id: message.id, results }));
        return;
      case 'reloaded': {
        const waiting = this.#waiting.get(message.id);
        if (waiting === undefined || !waiting.expected.has(message.result.worker)) return;
        waiting.answers.set(message.result.worker, message.result);
        if (waiting.answers.size === waiting.expected.size) this.#settleReload(message.id);
        return;
      }
    }
  }

  #send(worker: Worker, message: ToWorker): void {
    if (worker.isConnected()) worker.send(message);
  }

  #exited(slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker !== worker) return;
    slot.worker = null;
    const wasReady = slot.ready;
    slot.ready = false;
    // A reload waiting for this worker's answer gets none.
    for (const [id, waiting] of this.#waiting) {
      if (waiting.expected.has(slot.index) && !waiting.answers.has(slot.index)) {
        waiting.answers.set(slot.index, { worker: slot.index, pid: worker.process.pid ?? 0, ok: false, changed: [], message: `the worker ${howItEnded(code, signal)}` });
        if (waiting.answers.size === waiting.expected.size) this.#settleReload(id);
      }
    }
    if (this.#stopping) return;
    const fields = { worker: slot.index, worker_pid: worker.process.pid, exit_code: code, signal };
    if (this.#onFirstStart !== null) {
      this.#logger.error(fields, `worker ${slot.index} (pid ${worker.process.pid}) ${howItEnded(code, signal)} before it was listening`);
      this.#onFirstStart(`worker ${slot.index} ${howItEnded(code, signal)} while starting`);
      return;
    }
    const uptimeMs = Date.now() - slot.startedAt;
    slot.failures = uptimeMs >= WORKER_STABLE_MS ? 1 : slot.failures + 1;
    const delayMs = Math.min(RESTART_MAX_MS, RESTART_INITIAL_MS * 2 ** Math.min(slot.failures - 1, 20));
    this.#logger.error(
      { ...fields, uptime_ms: uptimeMs, was_listening: wasReady, deaths_in_a_row: slot.failures, restart_in_ms: delayMs },
      `worker ${slot.index} (pid ${worker.process.pid}) ${howItEnded(code, signal)}; restarting it in ${delayMs} ms`,
    );
    slot.restartTimer = setTimeout(() => this.#fork(slot), delayMs);
  }

  /**
   * Reloads the config in every worker that is listening (each reloads its
   * own plugins, so config_changed fires in each); resolves with each
   * worker's answer. A worker that does not answer in time, or dies first,
   * answers not ok.
   */
  reloadAll(why: string): Promise<WorkerReload[]> {
    const id = randomUUID();
    const live = this.#slots.filter((slot) => slot.ready && slot.worker !== null);
    if (live.length === 0) return Promise.resolve([]);
    return new Promise((done) => {
      const timer = setTimeout(() => {
        const waiting = this.#waiting.get(id);
        if (waiting === undefined) return;
        for (const index of waiting.expected) {
          if (!waiting.answers.has(index)) waiting.answers.set(index, { worker: index, pid: this.#slots[index]?.worker?.process.pid ?? 0, ok: false, changed: [], message: `no answer within ${RELOAD_ANSWER_MS} ms` });
        }
        this.#settleReload(id);
      }, RELOAD_ANSWER_MS);
      this.#waiting.set(id, { answers: new Map(), expected: new Set(live.map((slot) => slot.index)), done, timer });
      for (const slot of live) this.#send(slot.worker!, { smtpHost: 'reload', id, why });
    });
  }

  #settleReload(id: string): void {
    const waiting = this.#waiting.get(id);
    if (waiting === undefined) return;
    this.#waiting.delete(id);
    clearTimeout(waiting.timer);
    const results = [...waiting.answers.values()].sort((a, b) => a.worker - b.worker);
    const refused = results.filter((result) => !result.ok);
    if (refused.length === 0) this.#logger.info({ workers: results.length }, 'config reloaded in every worker');
    else this.#logger.error({ refused: refused.map((r) => ({ worker: r.worker, code: r.code, err: r.message })) }, `config reload refused by ${refused.length} of ${results.length} workers`);
    waiting.done(results);
  }

  /** SIGTERM to every worker (each stops as a single server does), SIGKILL to those still running after WORKERS_STOP_MS; 0 when all exited 0. */
  async stop(): Promise<number> {
    this.#stopping = true;
    const running = this.#slots.flatMap((slot) => {
      clearTimeout(slot.restartTimer);
      return slot.worker === null ? [] : [slot.worker];
    });
    const exits = running.map((worker) => new Promise<number | null>((done) => {
      if (worker.process.exitCode !== null || worker.process.signalCode !== null) return done(worker.process.exitCode);
      worker.once('exit', (code: number | null) => done(code));
    }));
    for (const worker of running) worker.process.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const all = Promise.all(exits);
    const outcome = await Promise.race([all, new Promise<'late'>((done) => (timer = setTimeout(() => done('late'), WORKERS_STOP_MS)))]);
    clearTimeout(timer);
    if (outcome === 'late') {
      const late = running.filter((worker) => worker.process.exitCode === null && worker.process.signalCode === null);
      this.#logger.error({ worker_pids: late.map((worker) => worker.process.pid), grace_ms: WORKERS_STOP_MS }, 'workers still running after their stop grace: killing them');
      for (const worker of late) worker.process.kill('SIGKILL');
      await all;
      return EXIT_FORCED;
    }
    return outcome.every((code) => code === 0) ? 0 : EXIT_FORCED;
  }
}

/** Runs the primary until SIGTERM or SIGINT; SIGHUP reloads every worker. */
export async function runPrimary(config: AppConfig, logger: Logger): Promise<number> {
  const primary = new Primary(config, logger);
  if (!(await primary.start())) return 1;
  const reload = (): void => {
    logger.info({ why: 'SIGHUP' }, 'reloading config in every worker');
    void primary.reloadAll('SIGHUP');
  };
  process.on('SIGHUP', reload);
  const signal = await new Promise<string>((done) => {
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
  });
  // A second signal (a terminal's Ctrl-C reaches every process of the group) must not kill the primary mid-stop.
  process.on('SIGTERM', () => undefined);
  process.on('SIGINT', () => undefined);
  process.off('SIGHUP', reload);
  logger.info({ signal }, 'stopping workers');
  const code = await primary.stop();
  logger.info({ exit_code: code }, 'workers stopped');
  return code;
}
