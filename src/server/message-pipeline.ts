import type { Readable } from 'node:stream';
import type { SMTPServerSession } from 'smtp-server';
import type { ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { DeliveryQueue } from '../delivery/delivery-queue.js';
import type { MetadataValue } from '../plugin/hook-context.js';
import { encodeFields, type EncodedMetadata } from '../plugin/metadata-wire.js';
import { quarantineFolder, type Spool, type SpooledMessage } from '../storage/spool.js';
import { BODY_HOOKS, BODY_KEY } from './hook-table.js';
import { HookRunner, QUARANTINE_KEY, QUARANTINE_PATH_KEY } from './hook-runner.js';
import { checkHeaders } from './message-headers.js';
import { REPLIES, acceptedText, malformedHeaders, replyError, type Refusal } from './reply-policy.js';
import { domainOf, sessionEvent } from './session-fields.js';

/** The code logged (a warning: the message is still kept) when a quarantine_path is refused. */
export const QUARANTINE_PATH_REFUSED: ErrorCode = 'SMTP_E_QUARANTINE_PATH';

export interface MessagePipelineOptions {
  readonly hostname: string;
  readonly quarantineDir: string;
  readonly hooks: HookRunner;
  readonly logger: Logger;
  /** null: nothing is kept (spool = "none"); the message is accepted after the filters. */
  readonly spool: Spool | null;
  readonly queue: DeliveryQueue | null;
}

/** Where a message stands between its stages. */
interface InFlight {
  readonly session: SMTPServerSession;
  readonly raw: Buffer;
  readonly messageId: string;
  /** The message's keys and body, encoded once (when a plugin wants them): every stage's context starts from these bytes. */
  encoded: EncodedMetadata | null;
  /** Keys plugins set at earlier stages: carried to the later ones (the filter verdicts reach message_stored). */
  readonly carried: Map<string, MetadataValue>;
  quarantined: boolean;
  quarantinePath: string | undefined;
}

/**
 * One message from the end of DATA to its 250: read, header checks, the
 * three filter stages (keys a plugin sets at one are carried to the next and
 * to message_stored), quarantine, durable store, message_stored, and the
 * hand-over to delivery. Refusals are thrown as smtp-server reply errors.
 */
export class MessagePipeline {
  readonly #options: MessagePipelineOptions;

  constructor(options: MessagePipelineOptions) {
    this.#options = options;
  }

  /** Takes the message of `session` from `stream`; resolves with the 250 text. */
  async receive(stream: Readable & { sizeExceeded?: boolean }, session: SMTPServerSession): Promise<string> {
    const raw = await read(stream);
    // smtp-server answers 552 itself for a message over the size limit.
    if (raw === null) throw replyError(REPLIES.messageTooBig);
    const headers = checkHeaders(raw);
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const messageId = headers.messageId ?? `<${Date.now().toString(36)}.${session.id}@${this.#options.hostname}>`;
    const message: InFlight = { session, raw, messageId, encoded: null, carried: new Map(), quarantined: false, quarantinePath: undefined };
    const encoded = (): EncodedMetadata =>
      (message.encoded ??= sessionEvent(
        session,
        {
          sender,
          sender_domain: domainOf(sender),
          recipients: recipients.join(','),
          recipient: recipients[0],
          recipient_count: String(recipients.length),
          message_id: messageId,
          subject: headers.subject ?? undefined,
          header_from: headers.from ?? undefined,
          size: String(raw.length),
          [BODY_KEY]: raw,
        },
        BODY_KEY,
      ));
    const { hooks } = this.#options;
    for (const hook of BODY_HOOKS) {
      if (hook === 'message_validated' && headers.problem !== null) this.#refuseHeaders(session, headers.problem);
      if (!hooks.wants(hook)) continue;
      const result = hooks.run(hook, encoded, message.carried);
      const { context, refusal } = result instanceof Promise ? await result : result;
      if (context !== null) {
        for (const [key, value] of context.pluginChanges()) if (key !== BODY_KEY) message.carried.set(key, value);
        if (!message.quarantined && context.changed(QUARANTINE_KEY) === 'true') {
          message.quarantined = true;
          message.quarantinePath = context.changed(QUARANTINE_PATH_KEY);
        }
      }
      // A cancel that asks for quarantine means "not to the mailbox", not "refuse".
      if (refusal && !(message.quarantined && refusal.reason !== 'error')) this.#refuse(hook, refusal, session);
      if (message.quarantined) break;
    }
    return this.#keep(message, { from: sender, to: recipients }, encoded);
  }

  /** Stores the message (or drops it, without a spool), fires message_stored, and queues it for delivery. */
  async #keep(message: InFlight, envelope: { from: string; to: readonly string[] }, encoded: () => EncodedMetadata): Promise<string> {
    const { spool, queue, hooks } = this.#options;
    if (spool === null) return acceptedText(null);
    const stored = await spool.store(envelope, message.raw, { message_id: message.messageId });
    let path = stored.path;
    if (message.quarantined) {
      try {
        path = await this.#quarantine(spool, stored, message.quarantinePath, { message_id: message.messageId, session_id: message.session.id });
      } catch (error) {
        // Left in the spool, a quarantined message would be delivered at the next start.
        await spool.remove(stored.id);
        throw error;
      }
      this.#options.logger.info({ spool_id: stored.id, message_id: message.messageId }, 'message quarantined');
    }
    if (hooks.wants('message_stored')) {
      const storedEvent = (): EncodedMetadata => encodeFields({ spool_id: stored.id, message_path: path, quarantined: String(message.quarantined) }, undefined, encoded().withoutTail());
      const stage = hooks.run('message_stored', storedEvent, message.carried);
      if (stage instanceof Promise) await stage;
    }
    if (!message.quarantined) queue!.enqueue(stored);
    return acceptedText(stored.id);
  }

  /**
   * Moves a stored message into quarantine: into the folder a plugin named
   * (quarantine_path) when it lies inside quarantine_dir, else into
   * quarantine_dir itself, with a warning. A folder that cannot be written
   * falls back the same way, so the plugin's choice never loses the message.
   */
  async #quarantine(spool: Spool, stored: SpooledMessage, requested: string | undefined, reason: Record<string, string>): Promise<string> {
    const base = this.#options.quarantineDir;
    if (requested === undefined) return spool.quarantine(stored, base, reason);
    const warn = (why: string): void => {
      this.#options.logger.warn({ code: QUARANTINE_PATH_REFUSED, spool_id: stored.id, quarantine_path: requested, quarantine_dir: base, why }, 'quarantine_path refused: the message is kept in quarantine_dir');
    };
    const withPath = { ...reason, quarantine_path: requested };
    const folder = await quarantineFolder(base, requested);
    if (folder.refused !== null) {
      warn(folder.refused);
    } else {
      try {
        return await spool.quarantine(stored, folder.dir, withPath);
      } catch (error) {
        warn(`cannot write there: ${(error as Error).message}`);
      }
    }
    return spool.quarantine(stored, base, withPath);
  }

  #refuseHeaders(session: SMTPServerSession, problem: string): never {
    this.#options.logger.info({ session: session.id, problem }, 'message refused by header checks');
    throw replyError(malformedHeaders(problem));
  }

  #refuse(hook: string, refusal: Refusal, session: SMTPServerSession): never {
    this.#options.logger.info({ hook, plugin: refusal.plugin, reason: refusal.reason, code: refusal.code, session: session.id }, 'refused');
    throw replyError(refusal);
  }
}

/** Reads DATA into memory within the size limit; null when over it; rejects when the client went away mid-message. */
async function read(stream: Readable & { sizeExceeded?: boolean }): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  stream.on('data', (chunk: Buffer) => {
    if (stream.sizeExceeded) return;
    chunks.push(chunk);
    size += chunk.length;
  });
  await new Promise<void>((done, fail) => {
    stream.once('end', done);
    stream.once('error', fail);
  });
  return stream.sizeExceeded ? null : Buffer.concat(chunks, size);
}
