import { DEFAULTS } from '../config/config.js';

/**
 * Bounds on what one slow or greedy client can hold: Postfix's per-request
 * deadline (smtpd_timeout with smtpd_per_request_deadline), its DATA rate
 * (smtpd_min_data_rate) and its per-client connection count (anvil,
 * smtpd_client_connection_count_limit), plus a cap on DATA as a whole.
 * An idle timeout is not enough: a client trickling one byte every few
 * seconds resets it forever. These are deadlines that only progress moves.
 */

/** The [server] limits this module enforces (ServerConfig has the same fields). */
export interface ClientLimits {
  readonly commandTimeoutMs: number;
  readonly dataTimeoutMs: number;
  readonly minDataRateBytesPerS: number;
  readonly maxClientsPerIp: number;
  /** Client networks (CIDR) the per-IP cap does not apply to. */
  readonly maxClientsPerIpExceptions: readonly string[];
}

export const DEFAULT_CLIENT_LIMITS: ClientLimits = Object.freeze({
  commandTimeoutMs: DEFAULTS.server.command_timeout_ms,
  dataTimeoutMs: DEFAULTS.server.data_timeout_ms,
  minDataRateBytesPerS: DEFAULTS.server.min_data_rate_bytes_per_s,
  maxClientsPerIp: Math.min(DEFAULTS.server.max_clients_per_ip, DEFAULTS.server.max_clients),
  maxClientsPerIpExceptions: Object.freeze([...DEFAULTS.policy.relay_networks]),
});

/** Why a connection was cut. */
export type DeadlineReason = 'command_timeout' | 'data_timeout' | 'data_too_slow';

/**
 * Connections per client IP. A slot is taken when a connection is accepted
 * and given back, once, when it ends for whatever reason.
 */
export class ClientSlots {
  readonly #max: number;
  readonly #counts = new Map<string, number>();

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxClientsPerIp must be a positive integer, got ${max}`);
    this.#max = max;
  }

  /** Takes a slot for `ip`: the function that gives it back (idempotent), or null when `ip` holds them all. */
  acquire(ip: string): (() => void) | null {
    const held = this.#counts.get(ip) ?? 0;
    if (held >= this.#max) return null;
    this.#counts.set(ip, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#counts.get(ip) ?? 1) - 1;
      if (left <= 0) this.#counts.delete(ip);
      else this.#counts.set(ip, left);
    };
  }

  /** Connections `ip` holds now. */
  held(ip: string): number {
    return this.#counts.get(ip) ?? 0;
  }

  /** Client IPs holding at least one slot (the map never outgrows the open connections). */
  get clients(): number {
    return this.#counts.size;
  }
}

type Phase = 'idle' | 'command' | 'data' | 'closed';

/**
 * One connection's deadlines. The connection says when it waits on the
 * client (`awaitCommand`, `awaitData`), when the client delivered
 * (`commandReceived`, `dataReceived`, `dataEnded`) and when it closed
 * (`dispose`); while the server itself works (a hook, the spool) no deadline
 * runs. One timer at most, reset lazily: progress moves the deadline, and the
 * timer, when it fires early, re-arms for the new one, so a busy connection
 * costs no timer churn per command or per chunk.
 */
export class ConnectionDeadline {
  readonly #limits: ClientLimits;
  readonly #onExpire: (reason: DeadlineReason) => void;
  readonly #now: () => number;
  #phase: Phase = 'idle';
  /** The command deadline, or in DATA the rolling one that bytes push forward. */
  #due = 0;
  /** In DATA: the end of data_timeout_ms. */
  #dataEnd = 0;
  #timer: NodeJS.Timeout | null = null;
  #timerAt = Infinity;

  constructor(limits: ClientLimits, onExpire: (reason: DeadlineReason) => void, now: () => number = () => performance.now()) {
    this.#limits = limits;
    this.#onExpire = onExpire;
    this.#now = now;
  }

  /** The server is ready for the next command line: it must be complete within command_timeout_ms. */
  awaitCommand(): void {
    if (this.#phase === 'closed') return;
    this.#phase = 'command';
    this.#due = this.#now() + this.#limits.commandTimeoutMs;
    this.#schedule();
  }

  /** A complete line arrived; the server works on it. */
  commandReceived(): void {
    if (this.#phase !== 'closed') this.#phase = 'idle';
  }

  /** 354 was sent: the first bytes are due within command_timeout_ms, the whole message within data_timeout_ms. */
  awaitData(): void {
    if (this.#phase === 'closed') return;
    const now = this.#now();
    this.#phase = 'data';
    this.#due = now + this.#limits.commandTimeoutMs;
    this.#dataEnd = now + this.#limits.dataTimeoutMs;
    this.#schedule();
  }

  /**
   * `bytes` of message arrived: Postfix's smtpd_min_data_rate rule, each byte
   * buys 1/rate s, but the deadline never lies more than command_timeout_ms
   * ahead. A rate of 0 makes it a plain per-read deadline.
   */
  dataReceived(bytes: number): void {
    if (this.#phase !== 'data') return;
    const now = this.#now();
    const rate = this.#limits.minDataRateBytesPerS;
    const credit = rate > 0 ? (bytes * 1000) / rate : Infinity;
    this.#due = Math.min(now + this.#limits.commandTimeoutMs, this.#due + credit);
  }

  /** The final dot arrived; the server decides on the message. */
  dataEnded(): void {
    if (this.#phase === 'data') this.#phase = 'idle';
  }

  /** The connection is closing: no deadline runs again. */
  dispose(): void {
    this.#phase = 'closed';
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#timerAt = Infinity;
  }

  /** What the connection waits for now (for tests and logs). */
  get phase(): Phase {
    return this.#phase;
  }

  #deadline(): number {
    return this.#phase === 'data' ? Math.min(this.#due, this.#dataEnd) : this.#due;
  }

  #schedule(): void {
    const at = this.#deadline();
    // A timer due sooner re-arms itself for this deadline when it fires.
    if (this.#timer !== null && this.#timerAt <= at) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#fire(), Math.max(0, Math.ceil(at - this.#now())));
    // The socket keeps the process alive, never this timer on its own.
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = null;
    this.#timerAt = Infinity;
    if (this.#phase === 'idle' || this.#phase === 'closed') return;
    const now = this.#now();
    if (now < this.#deadline()) return this.#schedule();
    const reason: DeadlineReason = this.#phase === 'command' ? 'command_timeout' : now >= this.#dataEnd ? 'data_timeout' : 'data_too_slow';
    this.dispose();
    this.#onExpire(reason);
  }
}
