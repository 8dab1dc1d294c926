import type { Readable } from 'node:stream';
import { domainToASCII } from 'node:url';
import type Nodemailer from 'nodemailer';
import { HostError } from '../errors.js';
import { optionalPackage } from '../optional-package.js';
import type { SpooledMessage } from '../storage/spool.js';

export interface RelayOptions {
  readonly host: string;
  readonly port: number;
  /** The name sent in EHLO; nodemailer's default (the OS hostname) when absent. */
  readonly name?: string;
  /** Bound on connecting, on the greeting and on each wait for the smarthost's reply. */
  readonly timeoutMs?: number;
}

export interface Relay {
  /**
   * Sends the message to `recipients` in one SMTP transaction. Rejects with
   * a RelayError unless every recipient was accepted; the error says which
   * ones were (they must not be sent again) and whether retrying can help.
   * `body` is the message's bytes, or a stream of them (a large message is
   * streamed from its file, never loaded whole).
   */
  send(message: SpooledMessage, recipients: readonly string[], body: Buffer | NodeJS.ReadableStream): Promise<void>;
  close(): void;
}

/** One recipient the smarthost refused at RCPT TO. */
export interface RelayRejection {
  readonly recipient: string;
  readonly permanent: boolean;
  /** The smarthost's reply line, or the local reason. */
  readonly response: string;
}

/**
 * A relay failure. `permanent` when the smarthost answered 5xx (sending the
 * same message again would be refused again); temporary for 4xx, a refused
 * or dropped connection, and timeouts.
 */
export class RelayError extends HostError {
  readonly permanent: boolean;
  /** Recipients the smarthost did take in this transaction, despite the error. */
  readonly accepted: readonly string[];
  /** Per recipient refusals at RCPT TO, when that is where it failed. */
  readonly rejections: readonly RelayRejection[];

  constructor(message: string, details: { permanent: boolean; accepted?: readonly string[]; rejections?: readonly RelayRejection[] }, cause?: unknown) {
    super('SMTP_E_DELIVERY_RELAY', message, { cause });
    this.name = 'RelayError';
    this.permanent = details.permanent;
    this.accepted = details.accepted ?? [];
    this.rejections = details.rejections ?? [];
  }
}

const DEFAULT_TIMEOUT_MS = 60_000;

/** The fields nodemailer puts on the errors it hands back. */
interface SmtpFailure {
  readonly message?: string;
  readonly code?: string;
  readonly responseCode?: number;
  readonly response?: string;
  readonly permanent?: boolean;
  readonly recipient?: string;
  readonly rejectedErrors?: readonly SmtpFailure[];
}

/** 5xx is final (RFC 5321), except 503 "bad sequence", which is about the session, not the message. */
function isPermanent(failure: SmtpFailure): boolean {
  const code = failure.responseCode;
  if (code === undefined) {
    // No reply at all: the connection failed (temporary), or nodemailer
    // itself refused the envelope as malformed, which no retry will change.
    return failure.code === 'EENVELOPE';
  }
  return typeof failure.permanent === 'boolean' ? failure.permanent : code >= 500 && code < 600 && code !== 503;
}

function rejectionOf(failure: SmtpFailure, fallbackRecipient: string): RelayRejection {
  return { recipient: failure.recipient ?? fallbackRecipient, permanent: isPermanent(failure), response: failure.response ?? failure.message ?? 'refused' };
}

/**
 * How nodemailer reports an address back: it lowercases the domain and
 * writes an internationalized one in punycode, so compare in that form.
 */
function addressKey(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  const domain = address.slice(at + 1);
  return `${address.slice(0, at)}@${(domainToASCII(domain) || domain).toLowerCase()}`;
}

/**
 * A relay to one smarthost through nodemailer's SMTP transport, one
 * connection per send (no pool: the delivery queue bounds concurrency). The
 * bytes go out as spooled; the transport adds nothing to them.
 */
export function createRelay(options: RelayOptions): Relay {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  // Loaded here, not at import: a server that relays nothing never loads nodemailer's transports.
  const nodemailer = optionalPackage<typeof Nodemailer>('nodemailer');
  const transport = nodemailer.createTransport({
    host: options.host,
    port: options.port,
    secure: false,
    ignoreTLS: true,
    pool: false,
    ...(options.name === undefined ? {} : { name: options.name }),
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
    // Nothing here needs files or URLs read on a message's behalf.
    disableFileAccess: true,
    disableUrlAccess: true,
    logger: false,
  });

  const where = `${options.host}:${options.port}`;

  async function send(message: SpooledMessage, recipients: readonly string[], body: Buffer | NodeJS.ReadableStream): Promise<void> {
    if (recipients.length === 0) return;
    let info: { accepted?: unknown[]; rejected?: unknown[]; rejectedErrors?: SmtpFailure[] };
    try {
      info = await transport.sendMail({
        envelope: { from: message.envelope.from, to: [...recipients] },
        raw: body as Buffer | Readable,
      });
    } catch (cause) {
      const failure = cause as SmtpFailure;
      const reasons = (failure.rejectedErrors ?? []).map((r) => rejectionOf(r, ''));
      const rejections = reasons.length === 0 ? [] : recipients.map((r) => ({ ...(reasons.find((x) => addressKey(x.recipient) === addressKey(r)) ?? rejectionOf(failure, r)), recipient: r }));
      const permanent = rejections.length > 0 ? rejections.every((r) => r.permanent) : isPermanent(failure);
      throw new RelayError(`relay to ${where} failed for message ${message.id}: ${failure.message ?? String(cause)}`, { permanent, rejections }, cause);
    }
    // Only what the smarthost accepted counts as delivered; a recipient that
    // cannot be matched to that list is retried rather than assumed sent.
    const accepted = new Set((info.accepted ?? []).map((r) => addressKey(String(r))));
    const refused = recipients.filter((r) => !accepted.has(addressKey(r)));
    if (refused.length === 0) return;
    const reasons = (info.rejectedErrors ?? []).map((r) => rejectionOf(r, ''));
    const rejections = refused.map(
      (r) => reasons.find((x) => addressKey(x.recipient) === addressKey(r)) ?? { recipient: r, permanent: false, response: 'not accepted by the smarthost' },
    );
    throw new RelayError(`relay to ${where} refused ${rejections.length} of ${recipients.length} recipients of message ${message.id}`, {
      permanent: rejections.every((r) => r.permanent),
      accepted: recipients.filter((r) => accepted.has(addressKey(r))),
      rejections: rejections.map((r, i) => ({ ...r, recipient: refused[i]! })),
    });
  }

  return { send, close: () => transport.close() };
}
