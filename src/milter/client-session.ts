/**
 * The MTA side of one milter conversation (protocol version 6): this server
 * calling a milter such as rspamd, opendkim or clamav-milter for one SMTP
 * session. It negotiates (the milter says which events it does not want
 * and which it will not answer, so those cost nothing), sends each event
 * with the macros the milter asked for, and reads the answer within the
 * command timeout. At end of message it collects every modification the
 * milter asks for; applying them to the message is src/milter/edits.ts.
 *
 * A milter that cannot be reached, closes, stalls or breaks the protocol
 * fails the call with a coded error (SMTP_E_MILTER_UNAVAILABLE,
 * SMTP_E_MILTER_TIMEOUT, SMTP_E_MILTER_PROTOCOL) and the connection is
 * closed: the caller applies the plugin's on_error policy, tempfail by default.
 */
import { connect, type Socket } from 'node:net';
import { hostError, type HostError } from '../errors.js';
import { type MilterAddress, formatMilterAddress } from './address.js';
import { decodeReply, encodeCommand, FrameDecoder, type ConnectInfo, type MilterCommand, type MilterReply } from './codec.js';
import {
  MILTER_CHUNK_BYTES,
  MILTER_PROTOCOL_VERSION,
  SMFIC_ABORT,
  SMFIC_BODY,
  SMFIC_BODYEOB,
  SMFIC_CONNECT,
  SMFIC_DATA,
  SMFIC_EOH,
  SMFIC_HEADER,
  SMFIC_HELO,
  SMFIC_MACRO,
  SMFIC_MAIL,
  SMFIC_OPTNEG,
  SMFIC_QUIT,
  SMFIC_RCPT,
  SMFIF_ALL,
  SMFIM_CONNECT,
  SMFIM_DATA,
  SMFIM_ENVFROM,
  SMFIM_ENVRCPT,
  SMFIM_EOH,
  SMFIM_EOM,
  SMFIM_HELO,
  SMFIP_ALL,
  SMFIP_HDR_LEADSPC,
  SMFIP_NOBODY,
  SMFIP_NOCONNECT,
  SMFIP_NODATA,
  SMFIP_NOEOH,
  SMFIP_NOHDRS,
  SMFIP_NOHELO,
  SMFIP_NOMAIL,
  SMFIP_NORCPT,
  SMFIP_NR_CONN,
  SMFIP_NR_DATA,
  SMFIP_NR_EOH,
  SMFIP_NR_HDR,
  SMFIP_NR_HELO,
  SMFIP_NR_BODY,
  SMFIP_NR_MAIL,
  SMFIP_NR_RCPT,
  SMFIP_SKIP,
  SMFIR_ACCEPT,
  SMFIR_CONTINUE,
  SMFIR_DISCARD,
  SMFIR_PROGRESS,
  SMFIR_REJECT,
  SMFIR_REPLYCODE,
  SMFIR_SKIP,
  SMFIR_TEMPFAIL,
  describeCode,
  type MacroStage,
} from './protocol.js';

/** Postfix's defaults (milter_connect_timeout 30 s, milter_command_timeout 30 s) are for remote filters; these are for one on this machine. */
export const MILTER_CONNECT_TIMEOUT_MS_DEFAULT = 5_000;
export const MILTER_COMMAND_TIMEOUT_MS_DEFAULT = 30_000;
/** The most bytes of frames a milter may send in answer to one event (its modifications included). */
export const MILTER_REPLY_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;

export interface MilterClientOptions {
  readonly address: MilterAddress;
  readonly connectTimeoutMs?: number;
  /** How long each answer may take; a milter's SMFIR_PROGRESS restarts it. */
  readonly commandTimeoutMs?: number;
  readonly replyBytesMax?: number;
  /** The SMFIF_* actions this server lets the milter use (all by default). */
  readonly actions?: number;
}

/** A milter's answer to one event. `reply`: its own SMTP reply, when it gave one (SMFIR_REPLYCODE). */
export type MilterVerdict =
  | { readonly kind: 'continue' | 'accept' | 'discard' | 'skip' }
  | { readonly kind: 'reject' | 'tempfail'; readonly reply: string | null };

export interface MilterEndOfMessage {
  readonly verdict: MilterVerdict;
  /** Every modification, in the order the milter sent them (none when it rejected, tempfailed or discarded). */
  readonly modifications: readonly MilterReply[];
}

/** The macros of one stage, by name as milters know them: `j`, `{client_addr}`, `{auth_authen}`, `i`... */
export type MilterMacros = Readonly<Record<string, string>>;

const CONTINUE: MilterVerdict = Object.freeze({ kind: 'continue' });

/** The #next() waiting for a reply: woken when one arrives, or failed. */
interface Waiter {
  readonly wake: () => void;
  readonly reject: (error: Error) => void;
}

export class MilterClientSession {
  readonly #socket: Socket;
  readonly #where: string;
  readonly #commandTimeoutMs: number;
  readonly #replyBytesMax: number;
  readonly #decoder = new FrameDecoder();
  readonly #replies: MilterReply[] = [];
  #waiter: Waiter | null = null;
  #failure: Error | null = null;
  /** What the milter asked for at negotiation: SMFIP_* flags, SMFIF_* actions, macro names per stage. */
  #protocol = 0;
  #actions = 0;
  readonly #macroNames = new Map<MacroStage, readonly string[]>();
  #replyBytes = 0;
  /** Frames not written yet (#write, #flush). */
  #unsent: Buffer[] = [];

  private constructor(socket: Socket, where: string, commandTimeoutMs: number, replyBytesMax: number) {
    this.#socket = socket;
    this.#where = where;
    this.#commandTimeoutMs = commandTimeoutMs;
    this.#replyBytesMax = replyBytesMax;
    socket.on('data', (chunk: Buffer) => this.#received(chunk));
    socket.on('error', (error) => this.#fail(hostError('SMTP_E_MILTER_UNAVAILABLE', `milter ${where}: ${error.message}`, error)));
    socket.on('close', () => this.#fail(hostError('SMTP_E_MILTER_UNAVAILABLE', `milter ${where} closed the connection`)));
  }

  /** Connects and negotiates; the session is ready for connect(). */
  static async open(options: MilterClientOptions): Promise<MilterClientSession> {
    const where = formatMilterAddress(options.address);
    const connectTimeoutMs = options.connectTimeoutMs ?? MILTER_CONNECT_TIMEOUT_MS_DEFAULT;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const target = options.address;
      const socket = target.kind === 'unix' ? connect(target.path) : connect(target.port, target.host);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(hostError('SMTP_E_MILTER_TIMEOUT', `milter ${where}: no connection within ${connectTimeoutMs} ms`));
      }, connectTimeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(socket);
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(hostError('SMTP_E_MILTER_UNAVAILABLE', `milter ${where}: ${error.message}`, error));
      });
    });
    // Each event is a small write awaited by a reply: Nagle's delay would add ~40 ms to each.
    socket.setNoDelay(true);
    const session = new MilterClientSession(socket, where, options.commandTimeoutMs ?? MILTER_COMMAND_TIMEOUT_MS_DEFAULT, options.replyBytesMax ?? MILTER_REPLY_BYTES_MAX_DEFAULT);
    try {
      await session.#negotiate(options.actions ?? SMFIF_ALL);
    } catch (error) {
      session.close();
      throw error;
    }
    return session;
  }

  /** The SMFIF_* actions the milter said it may use. */
  get actions(): number {
    return this.#actions;
  }

  /** The SMFIP_* flags the milter asked for. */
  get protocol(): number {
    return this.#protocol;
  }

  connect(info: ConnectInfo, macros: MilterMacros = {}): Promise<MilterVerdict> {
    return this.#event(SMFIP_NOCONNECT, SMFIP_NR_CONN, SMFIM_CONNECT, macros, { command: SMFIC_CONNECT, ...info });
  }

  helo(name: string, macros: MilterMacros = {}): Promise<MilterVerdict> {
    return this.#event(SMFIP_NOHELO, SMFIP_NR_HELO, SMFIM_HELO, macros, { command: SMFIC_HELO, helo: Buffer.from(name) });
  }

  /** `sender` without angle brackets ("" for the null sender). */
  mail(sender: string, esmtpArgs: readonly string[] = [], macros: MilterMacros = {}): Promise<MilterVerdict> {
    return this.#event(SMFIP_NOMAIL, SMFIP_NR_MAIL, SMFIM_ENVFROM, macros, { command: SMFIC_MAIL, address: Buffer.from(`<${sender}>`), esmtpArgs: esmtpArgs.map((arg) => Buffer.from(arg)) });
  }

  rcpt(recipient: string, esmtpArgs: readonly string[] = [], macros: MilterMacros = {}): Promise<MilterVerdict> {
    return this.#event(SMFIP_NORCPT, SMFIP_NR_RCPT, SMFIM_ENVRCPT, macros, { command: SMFIC_RCPT, address: Buffer.from(`<${recipient}>`), esmtpArgs: esmtpArgs.map((arg) => Buffer.from(arg)) });
  }

  data(macros: MilterMacros = {}): Promise<MilterVerdict> {
    return this.#event(SMFIP_NODATA, SMFIP_NR_DATA, SMFIM_DATA, macros, { command: SMFIC_DATA });
  }

  /**
   * Sends the message: its headers one by one, end of headers, the body in
   * chunks, end of message; returns the verdict and the modifications. The
   * message is as received (CRLF line ends). An early verdict other than
   * continue ends the exchange there, with no modifications.
   */
  async message(raw: Buffer, macros: { readonly eoh?: MilterMacros; readonly eom?: MilterMacros } = {}): Promise<MilterEndOfMessage> {
    const { headers, body } = splitMessage(raw);
    if ((this.#protocol & SMFIP_NOHDRS) === 0) {
      const leadingSpace = (this.#protocol & SMFIP_HDR_LEADSPC) !== 0;
      for (const header of headers) {
        // Without HDR_LEADSPC the milter gets the value as Sendmail gives it: the one space after the colon dropped.
        const value = leadingSpace || header.value[0] !== 0x20 ? header.value : header.value.subarray(1);
        const verdict = await this.#send({ command: SMFIC_HEADER, name: header.name, value: unfoldLineEnds(value) }, (this.#protocol & SMFIP_NR_HDR) !== 0);
        if (verdict.kind !== 'continue') return { verdict, modifications: [] };
      }
    }
    const eoh = await this.#event(SMFIP_NOEOH, SMFIP_NR_EOH, SMFIM_EOH, macros.eoh ?? {}, { command: SMFIC_EOH });
    if (eoh.kind !== 'continue') return { verdict: eoh, modifications: [] };
    if ((this.#protocol & SMFIP_NOBODY) === 0) {
      for (let offset = 0; offset < body.length; offset += MILTER_CHUNK_BYTES) {
        const verdict = await this.#send({ command: SMFIC_BODY, chunk: body.subarray(offset, offset + MILTER_CHUNK_BYTES) }, (this.#protocol & SMFIP_NR_BODY) !== 0);
        if (verdict.kind === 'skip') break;
        if (verdict.kind !== 'continue') return { verdict, modifications: [] };
      }
    }
    this.#sendMacros(SMFIM_EOM, SMFIC_BODYEOB, macros.eom ?? {});
    this.#write({ command: SMFIC_BODYEOB, chunk: Buffer.alloc(0) });
    const modifications: MilterReply[] = [];
    for (;;) {
      const reply = await this.#next();
      const verdict = verdictOf(reply);
      if (verdict === null) {
        modifications.push(reply);
        continue;
      }
      const kept = verdict.kind === 'continue' || verdict.kind === 'accept' ? modifications : [];
      return { verdict, modifications: kept };
    }
  }

  /** Ends this message's exchange (the client sent RSET, or the message was refused elsewhere); the session stays for the next. */
  abort(): void {
    if (this.#failure !== null) return;
    this.#write({ command: SMFIC_ABORT });
    this.#flush();
  }

  /** Says goodbye and closes. */
  close(): void {
    if (this.#failure === null && !this.#socket.destroyed) {
      try {
        this.#flush();
        this.#socket.end(encodeCommand({ command: SMFIC_QUIT }));
      } catch {
        // Closing anyway.
      }
    }
    this.#failure ??= hostError('SMTP_E_MILTER_UNAVAILABLE', `milter ${this.#where}: the session was closed`);
    this.#socket.destroySoon();
  }

  async #negotiate(actions: number): Promise<void> {
    this.#write({ command: SMFIC_OPTNEG, version: MILTER_PROTOCOL_VERSION, actions, protocol: SMFIP_ALL });
    const reply = await this.#next();
    if (reply.command !== SMFIC_OPTNEG) throw this.#protocolError(`expected its negotiation, got ${describeCode(reply.command)}`);
    if (reply.version < 2) throw this.#protocolError(`speaks protocol version ${reply.version}; version 6 is expected (2 at least)`);
    if ((reply.actions & ~actions) !== 0) throw this.#protocolError(`asks for actions 0x${reply.actions.toString(16)} beyond those allowed (0x${actions.toString(16)})`);
    if ((reply.protocol & ~SMFIP_ALL) !== 0) throw this.#protocolError(`asks for protocol flags 0x${reply.protocol.toString(16)} this server does not offer`);
    this.#actions = reply.actions;
    this.#protocol = reply.protocol;
    for (const list of reply.macroLists) {
      this.#macroNames.set(list.stage, list.names.toString('latin1').split(/\s+/).filter((name) => name.length > 0));
    }
  }

  async #event(skipFlag: number, noReplyFlag: number, stage: MacroStage, macros: MilterMacros, command: MilterCommand): Promise<MilterVerdict> {
    if ((this.#protocol & skipFlag) !== 0) return CONTINUE;
    this.#sendMacros(stage, command.command, macros);
    return this.#send(command, (this.#protocol & noReplyFlag) !== 0);
  }

  async #send(command: MilterCommand, noReply: boolean): Promise<MilterVerdict> {
    this.#write(command);
    if (noReply) return CONTINUE;
    const reply = await this.#next();
    const verdict = verdictOf(reply);
    if (verdict === null) throw this.#protocolError(`sent ${describeCode(reply.command)} before end of message, where only a verdict may come`);
    if (verdict.kind === 'skip' && (command.command !== SMFIC_BODY || (this.#protocol & SMFIP_SKIP) === 0)) {
      throw this.#protocolError('sent skip outside the body or without negotiating SMFIP_SKIP');
    }
    return verdict;
  }

  /** The macros the milter asked for at this stage (all given, when it named none), before the event. */
  #sendMacros(stage: MacroStage, before: number, macros: MilterMacros): void {
    const wanted = this.#macroNames.get(stage);
    const names = wanted ?? Object.keys(macros);
    const pairs: [Buffer, Buffer][] = [];
    for (const name of names) {
      const value = macros[name] ?? macros[name.replace(/^\{(.*)\}$/, '$1')] ?? macros[`{${name}}`];
      if (value !== undefined) pairs.push([Buffer.from(name), Buffer.from(value)]);
    }
    if (pairs.length > 0) this.#write({ command: SMFIC_MACRO, stage: before, macros: pairs });
  }

  /** Queues a frame; frames go out together when an answer is awaited (or the message or session ends), so a step's macros, its command and the steps the milter does not answer share one write. */
  #write(command: MilterCommand): void {
    if (this.#failure !== null) throw this.#failure;
    this.#unsent.push(encodeCommand(command));
  }

  #flush(): void {
    if (this.#unsent.length === 0 || this.#failure !== null) return;
    this.#socket.write(this.#unsent.length === 1 ? this.#unsent[0]! : Buffer.concat(this.#unsent));
    this.#unsent = [];
  }

  /** The milter's next reply (SMFIR_PROGRESS restarts the timeout and is not returned). */
  #next(): Promise<MilterReply> {
    this.#flush();
    this.#replyBytes = 0;
    return new Promise<MilterReply>((resolve, reject) => {
      const arm = (): NodeJS.Timeout => setTimeout(() => {
        this.#fail(hostError('SMTP_E_MILTER_TIMEOUT', `milter ${this.#where}: no answer within ${this.#commandTimeoutMs} ms`));
      }, this.#commandTimeoutMs);
      let timer = arm();
      const take = (): boolean => {
        for (;;) {
          const reply = this.#replies.shift();
          if (reply === undefined) return false;
          if (reply.command === SMFIR_PROGRESS) {
            clearTimeout(timer);
            timer = arm();
            continue;
          }
          clearTimeout(timer);
          this.#waiter = null;
          resolve(reply);
          return true;
        }
      };
      if (this.#failure !== null) {
        clearTimeout(timer);
        reject(this.#failure);
        return;
      }
      if (take()) return;
      this.#waiter = {
        wake: () => void take(),
        reject: (error) => {
          clearTimeout(timer);
          this.#waiter = null;
          reject(error);
        },
      };
    });
  }

  #received(chunk: Buffer): void {
    if (this.#failure !== null) return;
    this.#replyBytes += chunk.length;
    if (this.#replyBytes > this.#replyBytesMax) {
      this.#fail(this.#protocolError(`sent more than ${this.#replyBytesMax} bytes in answer to one event`));
      return;
    }
    try {
      for (const frame of this.#decoder.push(chunk)) this.#replies.push(decodeReply(frame));
    } catch (error) {
      this.#fail(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    if (this.#replies.length > 0) this.#waiter?.wake();
  }

  #fail(error: Error): void {
    if (this.#failure !== null) return;
    this.#failure = error;
    this.#socket.destroy();
    this.#waiter?.reject(error);
  }

  #protocolError(what: string): HostError {
    return hostError('SMTP_E_MILTER_PROTOCOL', `milter ${this.#where} ${what}`);
  }
}

/** The verdict a reply is, or null for a modification. */
function verdictOf(reply: MilterReply): MilterVerdict | null {
  switch (reply.command) {
    case SMFIR_CONTINUE:
      return CONTINUE;
    case SMFIR_ACCEPT:
      return { kind: 'accept' };
    case SMFIR_DISCARD:
      return { kind: 'discard' };
    case SMFIR_SKIP:
      return { kind: 'skip' };
    case SMFIR_REJECT:
      return { kind: 'reject', reply: null };
    case SMFIR_TEMPFAIL:
      return { kind: 'tempfail', reply: null };
    case SMFIR_REPLYCODE: {
      const text = reply.reply.toString('utf8');
      return { kind: text.startsWith('4') ? 'tempfail' : 'reject', reply: text };
    }
    default:
      return null;
  }
}

export interface MessageHeader {
  readonly name: Buffer;
  /** Everything after the colon, folded lines included (CRLF kept). */
  readonly value: Buffer;
}

/** Splits a raw message (CRLF line ends) into its header fields and its body. */
export function splitMessage(raw: Buffer): { headers: MessageHeader[]; body: Buffer } {
  let end = raw.indexOf('\r\n\r\n');
  let bodyStart: number;
  if (raw.subarray(0, 2).equals(Buffer.from('\r\n'))) {
    end = 0;
    bodyStart = 2;
  } else if (end < 0) {
    end = raw.length;
    bodyStart = raw.length;
  } else {
    bodyStart = end + 4;
  }
  const headers: MessageHeader[] = [];
  const section = raw.subarray(0, end);
  let start = 0;
  while (start < section.length) {
    let lineEnd = section.indexOf('\r\n', start);
    // A field runs on over lines that start with space or tab.
    while (lineEnd >= 0 && (section[lineEnd + 2] === 0x20 || section[lineEnd + 2] === 0x09)) lineEnd = section.indexOf('\r\n', lineEnd + 2);
    const fieldEnd = lineEnd < 0 ? section.length : lineEnd;
    const field = section.subarray(start, fieldEnd);
    const colon = field.indexOf(':');
    if (colon > 0) headers.push({ name: field.subarray(0, colon), value: field.subarray(colon + 1) });
    start = fieldEnd + 2;
  }
  return { headers, body: raw.subarray(bodyStart) };
}

/** A folded value's CRLFs as the bare LFs Sendmail and Postfix send to milters. */
function unfoldLineEnds(value: Buffer): Buffer {
  return value.includes('\r\n') ? Buffer.from(value.toString('latin1').replace(/\r\n/g, '\n'), 'latin1') : value;
}
