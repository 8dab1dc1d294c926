import type { Logger } from '../log.js';

/** How often one refused address is logged again while a plugin keeps asking for it. */
export const DENIED_LOG_INTERVAL_MS = 60_000;

/**
 * The host's log of connections a plugin was refused for want of a grant
 * (SMTP_E_NET_DENIED). The first refusal of each address is logged at once;
 * a plugin that keeps asking is logged again at most once a minute, with the
 * number of refusals since, so a misconfigured plugin cannot flood the log.
 */
export function deniedConnectLogger(logger: Logger, message: string, now: () => number = Date.now): (address: string) => void {
  const seen = new Map<string, { loggedAt: number; since: number }>();
  return (address) => {
    const entry = seen.get(address);
    const at = now();
    if (entry !== undefined && at - entry.loggedAt < DENIED_LOG_INTERVAL_MS) {
      entry.since++;
      return;
    }
    logger.warn({ code: 'SMTP_E_NET_DENIED', address, ...(entry ? { refused_since_last_log: entry.since + 1 } : {}) }, message);
    seen.set(address, { loggedAt: at, since: 0 });
  };
}
