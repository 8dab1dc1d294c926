import type { SpooledMessage } from '../storage/spool.js';

/**
 * What an operator sees of the delivery queue and how they pick entries
 * (the admin API and `smtp-server queue`): the entry, the selector and what
 * an operation answers.
 */

/** ready: waiting for a delivery slot; delivering: an attempt is running; deferred: waiting for its retry; held: not attempted until released. */
export type QueueEntryState = 'ready' | 'delivering' | 'deferred' | 'held';

/** One queued message as an operator sees it (list()). */
export interface QueueEntry {
  readonly id: string;
  /** ISO 8601, from the spooled message. */
  readonly receivedAt: string;
  /** Now minus receivedAt. */
  readonly ageSeconds: number;
  readonly sender: string;
  /** Every envelope recipient. */
  readonly recipients: readonly string[];
  /** Recipients neither delivered nor refused for good yet. */
  readonly pending: readonly string[];
  readonly size: number;
  /** An entry held during an attempt shows `delivering` until the attempt ends, then `held`. */
  readonly state: QueueEntryState;
  /** Attempts made in this process. */
  readonly attempts: number;
  /** Why the last temporary failure happened (as logged with "delivery deferred"); null if none did. */
  readonly lastError: string | null;
  /** ISO 8601: when a deferred entry is retried; null in any other state. */
  readonly nextAttemptAt: string | null;
}

/**
 * Which entries an operation applies to. Every criterion given must match;
 * at least one is required: an empty selector matches nothing (callers
 * refuse it), `all: true` matches everything.
 */
export interface QueueSelector {
  readonly ids?: readonly string[];
  readonly all?: boolean;
  /** Case-insensitive: an exact address, or "@domain" / "domain" for any address at that domain (not its subdomains). */
  readonly sender?: string;
  /** As `sender`, against each envelope recipient. */
  readonly recipient?: string;
}

/** `ids`: the entries the operation changed. `busy`: entries it left alone because an attempt was running (delete only). */
export interface QueueOperationResult {
  readonly ids: readonly string[];
  readonly busy: readonly string[];
}

/** Counts by state; taken without I/O, for a metrics scrape. */
export interface QueueSummary {
  readonly depth: number;
  readonly oldestReceivedAt: string | null;
  readonly ready: number;
  readonly delivering: number;
  readonly deferred: number;
  readonly held: number;
}

/** The test a selector makes of a message. */
export function selectorMatcher(selector: QueueSelector): (message: SpooledMessage) => boolean {
  const { ids, all, sender, recipient } = selector;
  if (ids === undefined && all !== true && sender === undefined && recipient === undefined) return () => false;
  const wanted = ids === undefined ? undefined : new Set(ids);
  const senderMatches = sender === undefined ? undefined : addressMatcher(sender);
  const recipientMatches = recipient === undefined ? undefined : addressMatcher(recipient);
  return (message) =>
    (wanted === undefined || wanted.has(message.id)) &&
    (senderMatches === undefined || senderMatches(message.envelope.from)) &&
    (recipientMatches === undefined || message.envelope.to.some(recipientMatches));
}

/** `pattern` as a test: an exact address, or "@domain" / "domain" for any address at that domain; case-insensitive. An empty pattern matches nothing. */
function addressMatcher(pattern: string): (address: string) => boolean {
  const wanted = pattern.trim().toLowerCase();
  if (wanted === '' || wanted === '@') return () => false;
  if (wanted.startsWith('@') || !wanted.includes('@')) {
    const domain = wanted.startsWith('@') ? wanted.slice(1) : wanted;
    return (address) => {
      const at = address.lastIndexOf('@');
      return at >= 0 && address.slice(at + 1).toLowerCase() === domain;
    };
  }
  return (address) => address.toLowerCase() === wanted;
}
