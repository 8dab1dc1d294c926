import type { SMTPServerSession } from 'smtp-server';
import { isHostError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { DeliveryQueue } from '../delivery/delivery-queue.js';
import { encodeFields, type EncodedMetadata } from '../plugin/metadata-wire.js';
import type { MetadataValue } from '../plugin/hook-context.js';
import type { HookName } from '../abi/hooks.js';
import { quarantineFolder, type IncomingMessage, type Spool, type SpooledMessage } from '../storage/spool.js';
import { lateCallRunning } from '../native/pool-calls.js';
import { receiveData, type DataStream, type ReceivedData } from './data-receiver.js';
import { MemoryBudget } from './memory-budget.js';
import { BODY_HOOKS, BODY_KEY } from './hook-table.js';
import { CarriedKeys } from './carried-keys.js';
import { HookRunner, QUARANTINE_KEY, QUARANTINE_PATH_KEY, type HookResult } from './hook-runner.js';
import { checkHeaders } from './message-headers.js';
import { takeMessageEdits, type MessageEdits } from './message-edits.js';
import type { ServerMetrics } from '../ops/metrics.js';
import { REPLIES, acceptedText, malformedHeaders, replyError, type Refusal } from './reply-policy.js';
import { domainOf, sessionEvent } from './session-fields.js';

/**
 * Bytes of message bodies held in memory at once for the hooks that carry
 * message_body (message_received, _validated, _filtered): a large message is
 * read back from its spool file only within this budget, which counts the
 * host's buffer and each copy a sandboxed or isolated plugin takes of it.
 */
export const BODY_HOOKS_MEMORY_BYTES_MAX = 64 * 2 ** 20;

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
  /** Counts accepted and refused messages (the admin listener's metrics); none when absent. */
  readonly metrics?: ServerMetrics | null;
}

/** A message's keys (hook-table.ts ENVELOPE_KEYS), and a place for its body from the first body stage on. */
type MessageFields = Record<string, MetadataValue | undefined> & { [BODY_KEY]: Buffer | undefined };

/** Where a message stands between its stages. */
interface InFlight {
  readonly session: SMTPServerSession;
  readonly data: ReceivedData;
  /** Where the spool is taking it (null without a spool); replaced when a plugin rewrote the message. */
  incoming: IncomingMessage | null;
  readonly messageId: string;
  /** The message's keys and body, encoded once (when a plugin wants them): every stage's context starts from these bytes. */
  encoded: EncodedMetadata | null;
  /** Keys plugins set at earlier stages: carried to the later ones (the filter verdicts reach message_stored). */
  readonly carried: CarriedKeys;
  quarantined: boolean;
  quarantinePath: string | undefined;
  /** What host-side plugins (milters) changed: the message, its envelope, or discard. */
  edits: MessageEdits | null;
}

/**
 * message_stored events a message's 250 does not wait for, at most: past
 * this many unsettled (a slow blocking plugin), each 250 waits for its own.
 */
export const MESSAGE_STORED_PENDING_MAX = 256;

/**
 * One message from the end of DATA to its 250: read, header checks, the
 * three filter stages (keys a plugin sets at one are carried to the next and
 * to message_stored), quarantine, durable store, message_stored, and the
 * hand-over to delivery. Refusals are thrown as smtp-server reply errors.
 */
export class MessagePipeline {
  readonly #options: MessagePipelineOptions;
  readonly #bodyBudget = new MemoryBudget(BODY_HOOKS_MEMORY_BYTES_MAX);
  /** message_stored events answered with a promise and not settled yet. */
  #storedPending = 0;

  constructor(options: MessagePipelineOptions) {
    this.#options = options;
  }

  /**
   * Takes the message of `session` from `stream`; resolves with the 250 text.
   * Past the stream's end, a message whose stages all answer at once (no
   * spool to wait for, plugins in this thread) settles in the same turn: the
   * stages return values, not promises, unless something waits.
   */
  receive(stream: DataStream, session: SMTPServerSession): Promise<string> {
    const incoming = this.#options.spool === null ? null : this.#options.spool.receive();
    const dropped = (error: unknown): Promise<never> => this.#dropped(incoming, error);
    return receiveData(stream, incoming).then((data) => {
      let accepted: string | Promise<string>;
      try {
        // smtp-server answers 552 itself for a message over the size limit.
        if (data === null) {
          this.#options.metrics?.refused('data', REPLIES.messageTooBig, undefined);
          throw replyError(REPLIES.messageTooBig);
        }
        accepted = this.#process(session, data, incoming);
      } catch (error) {
        return dropped(error);
      }
      if (accepted instanceof Promise) return accepted.then((text) => this.#accepted(text), dropped);
      return this.#accepted(accepted);
    }, dropped);
  }

  #accepted(text: string): string {
    this.#options.metrics?.messagesAccepted.inc();
    return text;
  }

  /** Refused, over the limit, the client gone or the disk failing: nothing of it stays in the spool. */
  async #dropped(incoming: IncomingMessage | null, error: unknown): Promise<never> {
    await incoming?.discard();
    throw error;
  }

  #process(session: SMTPServerSession, data: ReceivedData, incoming: IncomingMessage | null): string | Promise<string> {
    const headers = checkHeaders(data.head);
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const messageId = headers.messageId ?? `<${Date.now().toString(36)}.${session.id}@${this.#options.hostname}>`;
    const message: InFlight = { session, data, incoming, messageId, encoded: null, carried: new CarriedKeys(), quarantined: false, quarantinePath: undefined, edits: null };
    const fields: MessageFields = {
      sender,
      sender_domain: domainOf(sender),
      recipients: recipients.join(','),
      recipient: recipients[0],
      recipient_count: String(recipients.length),
      message_id: messageId,
      subject: headers.subject ?? undefined,
      header_from: headers.from ?? undefined,
      size: String(data.size),
      // Set when a body stage runs (#encoder); skipped by the encoding until then.
      message_body: undefined,
    };
    const { hooks } = this.#options;
    // Only stages a plugin handles read the body; with log_hook_calls the others are still logged, without it.
    const stages = hooks.handledAmong(BODY_HOOKS);
    if (stages.length < BODY_HOOKS.length) for (const hook of BODY_HOOKS) if (!stages.includes(hook) && hooks.wants(hook)) hooks.run(hook, () => ({}));
    if (headers.problem !== null && (stages.length === 0 || stages[0] !== 'message_received')) this.#refuseHeaders(session, headers.problem);
    const envelope = { from: sender, to: recipients };
    const withoutBody = (): EncodedMetadata => message.encoded ?? sessionEvent(session, fields);
    if (stages.length === 0) return this.#keep(message, envelope, withoutBody);
    const filtered = this.#filter(message, fields, stages, headers.problem);
    if (filtered instanceof Promise) return filtered.then(() => this.#keep(message, envelope, withoutBody));
    return this.#keep(message, envelope, withoutBody);
  }

  /**
   * Runs the hooks that carry message_body, in order; header problems are
   * refused at message_validated, after message_received saw the message.
   * The body is in memory for these stages only, within the body budget. A
   * body already in memory (inline in the spool, or received without one)
   * costs nothing more here, and the stages run at once unless a plugin's
   * answer is a promise.
   */
  #filter(message: InFlight, fields: MessageFields, stages: readonly HookName[], headerProblem: string | null): void | Promise<void> {
    const inMemory = message.data.body ?? message.incoming!.body();
    if (inMemory === null) return this.#filterFromFile(message, fields, stages, headerProblem);
    let pending: void | Promise<void>;
    try {
      pending = this.#stagesFrom(message, this.#encoder(message, fields, inMemory), stages, 0, headerProblem);
    } catch (error) {
      this.#filtered(message);
      throw error;
    }
    if (pending instanceof Promise) return pending.finally(() => this.#filtered(message));
    this.#filtered(message);
  }

  /**
   * A body read back from its spool file takes budget, once for the host's
   * buffer and once per plugin that copies it into memory of its own (a
   * sandbox keeps that copy resident: it counts too).
   */
  async #filterFromFile(message: InFlight, fields: MessageFields, stages: readonly HookName[], headerProblem: string | null): Promise<void> {
    const budget = this.#bodyBudget;
    const { size } = message.data;
    const release = await budget.acquire(size * (1 + this.#options.hooks.bodyCopies(stages)));
    let loaded: Buffer | null = null;
    try {
      loaded = budget.buffer(size);
      const body = await message.incoming!.readBodyInto(loaded);
      await this.#stagesFrom(message, this.#encoder(message, fields, body), stages, 0, headerProblem);
    } finally {
      this.#filtered(message);
      // A native call past its deadline may still be reading this body on its thread: then the buffer is left to the GC, which frees it only once that call returned.
      if (loaded !== null && !lateCallRunning()) budget.recycle(loaded);
      release();
    }
  }

  /**
   * The body stages' event: the message's keys and body, encoded once, at the
   * first stage that runs. The body goes into the keys' own object: a copy
   * with it added (Object.assign) cost about 0.4 us per message in one
   * process, and gave an object of another shape to encode.
   */
  #encoder(message: InFlight, fields: MessageFields, body: Buffer): () => EncodedMetadata {
    return () => {
      if (message.encoded !== null) return message.encoded;
      fields[BODY_KEY] = body;
      try {
        return (message.encoded = sessionEvent(message.session, fields, BODY_KEY));
      } catch (error) {
        // Not encoded: message_stored's keys (withoutBody) must not carry the body.
        fields[BODY_KEY] = undefined;
        throw error;
      }
    };
  }

  /** Runs stages[from...] in order; returns a promise only from the first stage whose plugins answer with one. */
  #stagesFrom(message: InFlight, encoded: () => EncodedMetadata, stages: readonly HookName[], from: number, headerProblem: string | null): void | Promise<void> {
    const { hooks } = this.#options;
    for (let index = from; index < stages.length; index++) {
      const hook = stages[index]!;
      if (hook !== 'message_received' && headerProblem !== null) this.#refuseHeaders(message.session, headerProblem);
      const result = hooks.run(hook, encoded, message.carried);
      if (result instanceof Promise) {
        return result.then((settled) => {
          if (!this.#stageDone(message, hook, settled)) return this.#stagesFrom(message, encoded, stages, index + 1, headerProblem);
        });
      }
      if (this.#stageDone(message, hook, result)) return;
    }
    if (headerProblem !== null) this.#refuseHeaders(message.session, headerProblem);
  }

  /** Takes in one stage's outcome; true when the message is quarantined (no further stage runs). Throws a refusal. */
  #stageDone(message: InFlight, hook: HookName, { context, refusal }: HookResult): boolean {
    if (context !== null) {
      const edits = takeMessageEdits(context);
      if (edits !== undefined) message.edits = { ...message.edits, ...edits };
      message.carried.add(context);
      if (!message.quarantined && context.changed(QUARANTINE_KEY) === 'true') {
        message.quarantined = true;
        message.quarantinePath = context.changed(QUARANTINE_PATH_KEY);
      }
    }
    // A cancel that asks for quarantine means "not to the mailbox", not "refuse".
    if (refusal && !(message.quarantined && refusal.reason !== 'error')) this.#refuse(hook, refusal, message.session);
    return message.quarantined;
  }

  /**
   * message_stored has no message_body: keep the keys, drop the view of the body. Plugins were
   * given the bytes for their calls only (docs/abi.md), so the buffer may serve the next message.
   */
  #filtered(message: InFlight): void {
    message.encoded = message.encoded?.withoutTail() ?? null;
  }

  /** Stores the message (or drops it, without a spool: then at once), fires message_stored, and queues it for delivery. */
  #keep(message: InFlight, envelope: { from: string; to: readonly string[] }, withoutBody: () => EncodedMetadata): string | Promise<string> {
    const edits = message.edits;
    const to = edits?.recipients ?? envelope.to;
    if (edits?.discard === true || to.length === 0) {
      // Accepted and dropped, as a milter's discard (or a milter that removed every recipient) asks: nothing is kept.
      this.#options.logger.info({ session: message.session.id, message_id: message.messageId, why: edits?.discard === true ? 'discard' : 'no recipients left' }, 'message discarded by a plugin');
      return message.incoming === null ? acceptedText(null) : message.incoming.discard().then(() => acceptedText(null));
    }
    const { spool } = this.#options;
    if (spool === null || message.incoming === null) return acceptedText(null);
    return this.#store(spool, message.incoming, message, to, envelope, withoutBody);
  }

  async #store(spool: Spool, received: IncomingMessage, message: InFlight, to: readonly string[], envelope: { from: string; to: readonly string[] }, withoutBody: () => EncodedMetadata): Promise<string> {
    const { queue, hooks } = this.#options;
    const edits = message.edits;
    let incoming = received;
    if (edits?.raw !== undefined) incoming = message.incoming = await this.#replaced(spool, received, edits.raw);
    const stored = await incoming.commit({ from: edits?.sender ?? envelope.from, to }, { message_id: message.messageId });
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
    // The message is stored: from here on the client gets 250 whatever fails, or it would send it again and it would be delivered twice.
    const failed = (error: unknown): void => {
      this.#options.logger.error({ spool_id: stored.id, code: isHostError(error) ? error.code : undefined, err: String(error) }, 'message_stored failed after the message was stored; it is accepted');
    };
    try {
      if (hooks.wants('message_stored')) {
        const storedEvent = (): EncodedMetadata => encodeFields({ spool_id: stored.id, message_path: path, quarantined: String(message.quarantined) }, undefined, withoutBody());
        const stage = hooks.run('message_stored', storedEvent, message.carried);
        if (stage instanceof Promise) {
          // A notification cannot change the reply: the 250 does not wait for it (a blocking plugin's
          // calls run one at a time, and holding every client behind them shrank the fsync batches),
          // unless MESSAGE_STORED_PENDING_MAX are already waiting: then the clients slow to its pace.
          this.#storedPending++;
          const settled = stage.catch(failed).finally(() => this.#storedPending--);
          if (this.#storedPending > MESSAGE_STORED_PENDING_MAX) await settled;
        }
      }
    } catch (error) {
      failed(error);
    }
    try {
      // A small message's bytes go along, so delivery need not read them back; a large one is read from its file.
      if (!message.quarantined) queue!.enqueue(stored, incoming.body());
    } catch (error) {
      this.#options.logger.error({ spool_id: stored.id, err: String(error) }, 'queueing a stored message failed; it stays in the spool and is delivered after the next start');
    }
    return acceptedText(stored.id);
  }

  /** The message as a plugin rewrote it, received anew into the spool; what was received is dropped. */
  async #replaced(spool: Spool, received: IncomingMessage, raw: Buffer): Promise<IncomingMessage> {
    const replacement = spool.receive();
    try {
      await replacement.write(raw);
    } catch (error) {
      await replacement.discard();
      throw error;
    }
    await received.discard();
    return replacement;
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
    const reply = malformedHeaders(problem);
    this.#options.metrics?.refused('headers', reply, undefined);
    throw replyError(reply);
  }

  #refuse(hook: string, refusal: Refusal, session: SMTPServerSession): never {
    this.#options.logger.info({ hook, plugin: refusal.plugin, reason: refusal.reason, code: refusal.code, session: session.id }, 'refused');
    this.#options.metrics?.refused(hook, refusal, refusal.plugin);
    throw replyError(refusal);
  }
}
