import type { Logger } from '../log.js';

/** How often one refusal is logged again while a plugin keeps asking for it. */
export const DENIED_LOG_INTERVAL_MS = 60_000;

/**
 * Logs a refusal for want of a grant: the first of each `what` at once; a
 * plugin that keeps asking is logged again at most once a minute, with the
 * number of refusals since, so a misconfigured plugin cannot flood the log.
 */
function throttledWarning(logger: Logger, now: () => number): (what: string, fields: Record<string, unknown>, message: string) => void {
  const seen = new Map<string, { loggedAt: number; since: number }>();
  return (what, fields, message) => {
    const entry = seen.get(what);
    const at = now();
    if (entry !== undefined && at - entry.loggedAt < DENIED_LOG_INTERVAL_MS) {
      entry.since++;
      return;
    }
    logger.warn({ ...fields, ...(entry ? { refused_since_last_log: entry.since + 1 } : {}) }, message);
    seen.set(what, { loggedAt: at, since: 0 });
  };
}

/** The host's log of connections a plugin was refused for want of a grant (SMTP_E_NET_DENIED), per address. */
export function deniedConnectLogger(logger: Logger, message: string, now: () => number = Date.now): (address: string) => void {
  const warn = throttledWarning(logger, now);
  return (address) => warn(address, { code: 'SMTP_E_NET_DENIED', address }, message);
}

/** The host's log of counter calls a plugin was refused for want of allow_counters (SMTP_E_COUNTER_DENIED). */
export function deniedCountersLogger(logger: Logger, message: string, now: () => number = Date.now): () => void {
  const warn = throttledWarning(logger, now);
  return () => warn('counters', { code: 'SMTP_E_COUNTER_DENIED' }, message);
}

/** What a plugin was refused for want of a grant, as the backends report it to the plugin's log. */
export interface DenialLog {
  /** A connection to `address` (allow_connect). */
  connect(address: string): void;
  /** A counter call (allow_counters). */
  counters(): void;
}

/** Both logs of one plugin; `who` starts the messages ("plugin", "sandboxed plugin"). */
export function denialLog(logger: Logger, who = 'plugin'): DenialLog {
  return {
    connect: deniedConnectLogger(logger, `${who} asked for a connection it was not granted (allow_connect)`),
    counters: deniedCountersLogger(logger, `${who} called counter_incr without the allow_counters grant`),
  };
}
