import type { Logger } from '../log.js';
import { runningPoolCalls } from '../native/pool-calls.js';
import { exitNow } from '../runtime/host-runtime.js';
import { CLOSE_TIMEOUT_MS } from '../server/mail-server.js';

/**
 * How long SIGTERM or SIGINT waits for the server to stop before the
 * process exits anyway: longer than CLOSE_TIMEOUT_MS, so that sessions get
 * their time to finish first, and well inside systemd's default stop
 * timeout (90 s), so that the server's own log says why rather than a
 * SIGKILL.
 */
export const SHUTDOWN_GRACE_MS = 3 * CLOSE_TIMEOUT_MS;

/** The exit status of a shutdown that had to leave something running. */
export const EXIT_FORCED = 1;

/** What the stop is waiting for, named in the log line when the grace runs out. */
export interface Stoppable {
  readonly stopStage: string | null;
}

/**
 * Runs `stop` and returns 0 when it finished and nothing is left behind.
 * When it has not finished within `graceMs`, or it finished but an
 * in-process native hook is still running on a pool thread (which Node's
 * own exit would wait for forever: it joins the pool), logs what was still
 * running and ends the process at once with EXIT_FORCED. Acknowledged mail
 * is already on disk (the spool syncs before the 250); a message in a
 * session still open was never acknowledged and its client retries it.
 */
export async function stopWithin(server: Stoppable, stop: () => Promise<void>, logger: Logger, graceMs: number = SHUTDOWN_GRACE_MS): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    stop().then(
      () => 'stopped' as const,
      (error: unknown) => {
        logger.error({ err: String(error) }, 'stopping failed');
        return 'failed' as const;
      },
    ),
    new Promise<'grace over'>((done) => (timer = setTimeout(() => done('grace over'), graceMs))),
  ]);
  clearTimeout(timer);
  const calls = runningPoolCalls();
  if (outcome !== 'grace over' && calls.length === 0) return outcome === 'stopped' ? 0 : EXIT_FORCED;
  const named = calls.map((call) => `plugin "${call.plugin}" in ${call.hook} for ${call.running_ms} ms${call.late ? ' (past its deadline)' : ''}`).join(', ');
  const why = outcome === 'grace over' ? `the server did not stop within ${graceMs} ms (it was ${server.stopStage ?? 'not yet stopping'})` : 'the server stopped, but native hook calls still hold threads';
  logger.error({ grace_ms: graceMs, stop_stage: server.stopStage, native_calls: calls, exit_code: EXIT_FORCED }, `${why}; still running: ${named || 'no native hook call'}; exiting without waiting for them`);
  exitNow(EXIT_FORCED);
}
