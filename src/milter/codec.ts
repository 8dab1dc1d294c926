import { encodeFrame, type MilterFrame } from './frame.js';
import {
  COMMAND_NAMES, MILTER_ARGS_MAX, MILTER_CHUNK_BYTES, MILTER_FRAME_BYTES_MAX, MILTER_MACRO_PAIRS_MAX, MILTER_MACRO_STAGES, MILTER_OPTNEG_BYTES,
  REPLY_NAMES, SMFIA_INET, SMFIA_INET6, SMFIA_UNIX, SMFIA_UNKNOWN,
  SMFIC_ABORT, SMFIC_BODY, SMFIC_BODYEOB, SMFIC_CONNECT, SMFIC_DATA, SMFIC_EOH, SMFIC_HEADER, SMFIC_HELO, SMFIC_MACRO, SMFIC_MAIL,
  SMFIC_OPTNEG, SMFIC_QUIT, SMFIC_QUIT_NC, SMFIC_RCPT, SMFIC_UNKNOWN,
  SMFIR_ACCEPT, SMFIR_ADDHEADER, SMFIR_ADDRCPT, SMFIR_ADDRCPT_PAR, SMFIR_CHGFROM, SMFIR_CHGHEADER, SMFIR_CONN_FAIL, SMFIR_CONTINUE,
  SMFIR_DELRCPT, SMFIR_DISCARD, SMFIR_INSHEADER, SMFIR_PROGRESS, SMFIR_QUARANTINE, SMFIR_REJECT, SMFIR_REPLBODY, SMFIR_REPLYCODE,
  SMFIR_SETSYMLIST, SMFIR_SHUTDOWN, SMFIR_SKIP, SMFIR_TEMPFAIL,
  describeCode, isMacroStage, milterProtocolError, type MacroStage,
} from './protocol.js';

export { encodeFrame, FrameDecoder, type MilterFrame } from './frame.js';

/**
 * The data of every milter message, both ways: typed values to frames
 * (encodeCommand, encodeReply) and frames to typed values (decodeCommand,
 * decodeReply).
 *
 * Every protocol string (hostname, address, header name and value, macro,
 * reason, reply text) is a Buffer of the bytes between its start and its
 * NUL, never a JS string. Header values and envelope addresses may hold
 * 8-bit bytes (raw UTF-8 under SMTPUTF8, or Latin-1 from a careless
 * client) that must reach the milter and come back byte for byte, e.g.
 * for a DKIM signature over them; a string would force a charset choice
 * here, and a wrong one loses bytes silently. Whoever knows what a field
 * holds decodes it.
 *
 * Decoding checks every length and terminator, and refuses bytes left over
 * after the last field, with a coded error naming the message, the field
 * and the offset; it never reads outside the frame. Decoded Buffers are
 * views into the frame's data (which the frame decoder hands over and
 * never reuses), so decoding copies nothing.
 */

/** A macro name and its value, as SMFIC_MACRO carries them. */
export type MacroPair = readonly [name: Buffer, value: Buffer];

/** The macros a milter wants at one stage: names separated by spaces, as on the wire (e.g. "j {client_addr}"). */
export interface MacroList {
  readonly stage: MacroStage;
  readonly names: Buffer;
}

/** Where the SMTP client connected from. Unknown carries neither port nor address on the wire. */
export type ConnectInfo =
  | { readonly hostname: Buffer; readonly family: typeof SMFIA_UNKNOWN }
  | { readonly hostname: Buffer; readonly family: typeof SMFIA_INET | typeof SMFIA_INET6 | typeof SMFIA_UNIX; readonly port: number; readonly address: Buffer };

/** What the MTA sends the milter. */
export type MilterCommand =
  /** MTA's offer: the protocol version, the actions it allows (SMFIF_*), the protocol flags it can honour (SMFIP_*). */
  | { readonly command: typeof SMFIC_OPTNEG; readonly version: number; readonly actions: number; readonly protocol: number }
  /** `stage` is the SMFIC_* code of the command these macros precede. */
  | { readonly command: typeof SMFIC_MACRO; readonly stage: number; readonly macros: readonly MacroPair[] }
  | ({ readonly command: typeof SMFIC_CONNECT } & ConnectInfo)
  | { readonly command: typeof SMFIC_HELO; readonly helo: Buffer }
  /** `address` keeps its angle brackets ("<a@b>", "<>"). */
  | { readonly command: typeof SMFIC_MAIL | typeof SMFIC_RCPT; readonly address: Buffer; readonly esmtpArgs: readonly Buffer[] }
  | { readonly command: typeof SMFIC_HEADER; readonly name: Buffer; readonly value: Buffer }
  | { readonly command: typeof SMFIC_BODY; readonly chunk: Buffer }
  /** libmilter treats data on SMFIC_BODYEOB as a last body chunk; sendmail and Postfix send none. */
  | { readonly command: typeof SMFIC_BODYEOB; readonly chunk: Buffer }
  | { readonly command: typeof SMFIC_UNKNOWN; readonly line: Buffer }
  | { readonly command: typeof SMFIC_ABORT | typeof SMFIC_EOH | typeof SMFIC_DATA | typeof SMFIC_QUIT | typeof SMFIC_QUIT_NC };

/** What the milter sends the MTA. */
export type MilterReply =
  /** The milter's answer: version, the actions it will use, the protocol flags it wants, and the macros it wants per stage. */
  | { readonly command: typeof SMFIC_OPTNEG; readonly version: number; readonly actions: number; readonly protocol: number; readonly macroLists: readonly MacroList[] }
  | { readonly command: typeof SMFIR_ACCEPT | typeof SMFIR_CONTINUE | typeof SMFIR_DISCARD | typeof SMFIR_REJECT | typeof SMFIR_TEMPFAIL | typeof SMFIR_SKIP | typeof SMFIR_PROGRESS | typeof SMFIR_SHUTDOWN | typeof SMFIR_CONN_FAIL }
  | { readonly command: typeof SMFIR_ADDRCPT | typeof SMFIR_DELRCPT; readonly recipient: Buffer }
  /** `esmtpArgs` null: none on the wire; an empty Buffer: an empty string on the wire. */
  | { readonly command: typeof SMFIR_ADDRCPT_PAR; readonly recipient: Buffer; readonly esmtpArgs: Buffer | null }
  | { readonly command: typeof SMFIR_CHGFROM; readonly sender: Buffer; readonly esmtpArgs: Buffer | null }
  | { readonly command: typeof SMFIR_ADDHEADER; readonly name: Buffer; readonly value: Buffer }
  /** INSHEADER: insert at `index` (0 = top). CHGHEADER: the index-th header of that name (1-based; sendmail reads 0 as 1); an empty value deletes it. */
  | { readonly command: typeof SMFIR_INSHEADER | typeof SMFIR_CHGHEADER; readonly index: number; readonly name: Buffer; readonly value: Buffer }
  | { readonly command: typeof SMFIR_REPLBODY; readonly chunk: Buffer }
  | { readonly command: typeof SMFIR_QUARANTINE; readonly reason: Buffer }
  /** The whole reply, "xyz x.y.z text" or multi-line "xyz-...\r\nxyz ...", without the NUL; '%' is doubled for sendmail. */
  | { readonly command: typeof SMFIR_REPLYCODE; readonly reply: Buffer }
  | { readonly command: typeof SMFIR_SETSYMLIST; readonly macroLists: readonly MacroList[] };

const NUL = Buffer.from([0]);
const UINT32_MAX = 0xffff_ffff;
const UINT16_MAX = 0xffff;
/** An SMTP reply starts "4xy" or "5xy" then ' ' or '-' (libmilter's smfi_setreply refuses other classes; Postfix checks the same). */
const REPLY_PREFIX = /^[45][0-9][0-9][ -]/;
/** Bytes of that prefix. */
const REPLY_PREFIX_BYTES = 4;

function nameOf(command: number): string {
  return COMMAND_NAMES.get(command) ?? REPLY_NAMES.get(command) ?? describeCode(command);
}

// ---------------------------------------------------------------------------
// Writing.

/** Collects a message's data as parts; encodeFrame copies them into one buffer. */
class PayloadWriter {
  readonly parts: Uint8Array[] = [];
  readonly #what: string;

  constructor(command: number) {
    this.#what = nameOf(command);
  }

  uint32(value: number, field: string): this {
    if (!Number.isInteger(value) || value < 0 || value > UINT32_MAX) throw this.#error(`${field} must be a uint32, not ${String(value)}`);
    const bytes = Buffer.allocUnsafe(4);
    bytes.writeUInt32BE(value, 0);
    this.parts.push(bytes);
    return this;
  }

  uint16(value: number, field: string): this {
    if (!Number.isInteger(value) || value < 0 || value > UINT16_MAX) throw this.#error(`${field} must be a uint16, not ${String(value)}`);
    const bytes = Buffer.allocUnsafe(2);
    bytes.writeUInt16BE(value, 0);
    this.parts.push(bytes);
    return this;
  }

  byte(value: number, field: string): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xff) throw this.#error(`${field} must be a byte, not ${String(value)}`);
    this.parts.push(Buffer.from([value]));
    return this;
  }

  /** A NUL-terminated string: a NUL inside would end it early on the other side, so it is refused. */
  cstring(value: Uint8Array, field: string): this {
    if (!(value instanceof Uint8Array)) throw this.#error(`${field} must be a Buffer`);
    const nul = value.indexOf(0);
    if (nul !== -1) throw this.#error(`${field} holds a NUL at byte ${nul}, which would cut it short`);
    this.parts.push(value, NUL);
    return this;
  }

  raw(value: Uint8Array, field: string, bytesMax: number): this {
    if (!(value instanceof Uint8Array)) throw this.#error(`${field} must be a Buffer`);
    if (value.length > bytesMax) throw this.#error(`${field} of ${value.length} bytes is over the ${bytesMax}-byte bound`);
    this.parts.push(value);
    return this;
  }

  count(count: number, countMax: number, what: string): this {
    if (count > countMax) throw this.#error(`${count} ${what}, at most ${countMax}`);
    return this;
  }

  #error(message: string): Error {
    return milterProtocolError(`cannot encode ${this.#what}: ${message}`);
  }
}

function writeMacroLists(writer: PayloadWriter, lists: readonly MacroList[]): void {
  writer.count(lists.length, MILTER_MACRO_STAGES, 'macro lists');
  for (const list of lists) {
    if (!isMacroStage(list.stage)) throw milterProtocolError(`cannot encode a macro list for stage ${String(list.stage)}: stages are 0 to ${MILTER_MACRO_STAGES - 1}`);
    writer.uint32(list.stage, 'macro stage').cstring(list.names, 'macro names');
  }
}

/** A command, MTA -> milter, as one frame. `frameBytesMax`: the bound the milter accepts (frameBytesMaxFor, once negotiated). */
export function encodeCommand(message: MilterCommand, frameBytesMax: number = MILTER_FRAME_BYTES_MAX): Buffer {
  const writer = new PayloadWriter(message.command);
  switch (message.command) {
    case SMFIC_OPTNEG:
      writer.uint32(message.version, 'version').uint32(message.actions, 'actions').uint32(message.protocol, 'protocol');
      break;
    case SMFIC_MACRO:
      if (!COMMAND_NAMES.has(message.stage)) throw milterProtocolError(`cannot encode SMFIC_MACRO: stage ${describeCode(message.stage)} is no SMFIC_* command`);
      writer.byte(message.stage, 'stage').count(message.macros.length, MILTER_MACRO_PAIRS_MAX, 'macro pairs');
      for (const [name, value] of message.macros) writer.cstring(name, 'macro name').cstring(value, 'macro value');
      break;
    case SMFIC_CONNECT:
      writer.cstring(message.hostname, 'hostname').byte(message.family, 'family');
      if (message.family === SMFIA_UNKNOWN) break;
      if (message.family !== SMFIA_INET && message.family !== SMFIA_INET6 && message.family !== SMFIA_UNIX) {
        throw milterProtocolError(`cannot encode SMFIC_CONNECT: family ${describeCode(message.family)} is none of '4', '6', 'L', 'U'`);
      }
      writer.uint16(message.port, 'port').cstring(message.address, 'address');
      break;
    case SMFIC_HELO:
      writer.cstring(message.helo, 'helo');
      break;
    case SMFIC_MAIL:
    case SMFIC_RCPT:
      writer.count(1 + message.esmtpArgs.length, MILTER_ARGS_MAX, 'arguments').cstring(message.address, 'address');
      for (const arg of message.esmtpArgs) writer.cstring(arg, 'ESMTP argument');
      break;
    case SMFIC_HEADER:
      writer.cstring(message.name, 'name').cstring(message.value, 'value');
      break;
    case SMFIC_BODY:
    case SMFIC_BODYEOB:
      writer.raw(message.chunk, 'body chunk', MILTER_CHUNK_BYTES);
      break;
    case SMFIC_UNKNOWN:
      writer.cstring(message.line, 'command line');
      break;
    case SMFIC_ABORT:
    case SMFIC_EOH:
    case SMFIC_DATA:
    case SMFIC_QUIT:
    case SMFIC_QUIT_NC:
      break;
    default:
      throw milterProtocolError(`cannot encode ${describeCode((message as { command: number }).command)}: no MTA command has that code`);
  }
  return encodeFrame(message.command, writer.parts, frameBytesMax);
}

/** A reply, milter -> MTA, as one frame. `frameBytesMax`: the bound the MTA accepts (frameBytesMaxFor, once negotiated). */
export function encodeReply(message: MilterReply, frameBytesMax: number = MILTER_FRAME_BYTES_MAX): Buffer {
  const writer = new PayloadWriter(message.command);
  switch (message.command) {
    case SMFIC_OPTNEG:
      writer.uint32(message.version, 'version').uint32(message.actions, 'actions').uint32(message.protocol, 'protocol');
      writeMacroLists(writer, message.macroLists);
      break;
    case SMFIR_SETSYMLIST:
      writeMacroLists(writer, message.macroLists);
      break;
    case SMFIR_ACCEPT:
    case SMFIR_CONTINUE:
    case SMFIR_DISCARD:
    case SMFIR_REJECT:
    case SMFIR_TEMPFAIL:
    case SMFIR_SKIP:
    case SMFIR_PROGRESS:
    case SMFIR_SHUTDOWN:
    case SMFIR_CONN_FAIL:
      break;
    case SMFIR_ADDRCPT:
    case SMFIR_DELRCPT:
      writer.cstring(message.recipient, 'recipient');
      break;
    case SMFIR_ADDRCPT_PAR:
      writer.cstring(message.recipient, 'recipient');
      if (message.esmtpArgs !== null) writer.cstring(message.esmtpArgs, 'ESMTP arguments');
      break;
    case SMFIR_CHGFROM:
      writer.cstring(message.sender, 'sender');
      if (message.esmtpArgs !== null) writer.cstring(message.esmtpArgs, 'ESMTP arguments');
      break;
    case SMFIR_ADDHEADER:
      writer.cstring(message.name, 'name').cstring(message.value, 'value');
      break;
    case SMFIR_INSHEADER:
    case SMFIR_CHGHEADER:
      writer.uint32(message.index, 'index').cstring(message.name, 'name').cstring(message.value, 'value');
      break;
    case SMFIR_REPLBODY:
      // Bounded by the frame: a replacement body may come in pieces of any size up to it.
      writer.raw(message.chunk, 'body piece', MILTER_FRAME_BYTES_MAX - 1);
      break;
    case SMFIR_QUARANTINE:
      writer.cstring(message.reason, 'reason');
      break;
    case SMFIR_REPLYCODE:
      checkReply(message.reply, 'cannot encode SMFIR_REPLYCODE');
      writer.cstring(message.reply, 'reply');
      break;
    default:
      throw milterProtocolError(`cannot encode ${describeCode((message as { command: number }).command)}: no milter reply has that code`);
  }
  return encodeFrame(message.command, writer.parts, frameBytesMax);
}

function checkReply(reply: Buffer, context: string): void {
  if (!(reply instanceof Uint8Array) || !REPLY_PREFIX.test(Buffer.from(reply.buffer, reply.byteOffset, Math.min(reply.length, REPLY_PREFIX_BYTES)).toString('latin1'))) {
    throw milterProtocolError(`${context}: the reply must start with a 4xx or 5xx code and ' ' or '-'`);
  }
}

// ---------------------------------------------------------------------------
// Reading.

/** Reads one message's data front to back; every read is checked against what is left. */
class PayloadReader {
  readonly #data: Buffer;
  readonly #what: string;
  #at = 0;

  constructor(frame: MilterFrame) {
    this.#data = frame.data;
    this.#what = nameOf(frame.command);
  }

  get remaining(): number {
    return this.#data.length - this.#at;
  }

  uint32(field: string): number {
    this.#need(4, field);
    const value = this.#data.readUInt32BE(this.#at);
    this.#at += 4;
    return value;
  }

  uint16(field: string): number {
    this.#need(2, field);
    const value = this.#data.readUInt16BE(this.#at);
    this.#at += 2;
    return value;
  }

  byte(field: string): number {
    this.#need(1, field);
    return this.#data[this.#at++]!;
  }

  /** The bytes up to the next NUL, which is consumed. */
  cstring(field: string): Buffer {
    const nul = this.#data.indexOf(0, this.#at);
    if (nul === -1) throw this.fail(this.remaining === 0 ? `${field} is missing` : `${field} has no NUL terminator`);
    const value = this.#data.subarray(this.#at, nul);
    this.#at = nul + 1;
    return value;
  }

  /** Everything left. */
  rest(field: string, bytesMax: number): Buffer {
    if (this.remaining > bytesMax) throw this.fail(`${field} of ${this.remaining} bytes is over the ${bytesMax}-byte bound`);
    const value = this.#data.subarray(this.#at);
    this.#at = this.#data.length;
    return value;
  }

  /** The message must end here: leftover bytes mean the two sides disagree on its layout. */
  end(): void {
    if (this.remaining > 0) throw this.fail(`${this.remaining} bytes left over after the last field`);
  }

  fail(message: string): Error {
    return milterProtocolError(`malformed ${this.#what} (${this.#data.length} data bytes): ${message} at byte ${this.#at}`);
  }

  #need(bytes: number, field: string): void {
    if (this.remaining < bytes) throw this.fail(`${field} needs ${bytes} bytes, ${this.remaining} left`);
  }
}

function readMacroLists(reader: PayloadReader): MacroList[] {
  const lists: MacroList[] = [];
  while (reader.remaining > 0) {
    if (lists.length === MILTER_MACRO_STAGES) throw reader.fail(`more than ${MILTER_MACRO_STAGES} macro lists`);
    const stage = reader.uint32('macro stage');
    // Sendmail refuses a stage it does not know (milter_getsymlist); so do we, rather than guess.
    if (!isMacroStage(stage)) throw reader.fail(`macro stage ${stage} is not 0 to ${MILTER_MACRO_STAGES - 1}`);
    lists.push({ stage, names: reader.cstring('macro names') });
  }
  return lists;
}

/** The frame's NUL-terminated strings up to its end, at most `countMax` of them. */
function readStrings(reader: PayloadReader, field: string, countMax: number): Buffer[] {
  const strings: Buffer[] = [];
  while (reader.remaining > 0) {
    if (strings.length === countMax) throw reader.fail(`more than ${countMax} ${field}s`);
    strings.push(reader.cstring(field));
  }
  return strings;
}

/** A command frame (MTA -> milter) as a typed value; throws the milter protocol error on anything malformed. */
export function decodeCommand(frame: MilterFrame): MilterCommand {
  const reader = new PayloadReader(frame);
  let message: MilterCommand;
  switch (frame.command) {
    case SMFIC_OPTNEG: {
      // Sendmail and Postfix send exactly the three fields; more would be a layout we do not know.
      if (frame.data.length !== MILTER_OPTNEG_BYTES) throw reader.fail(`the MTA's offer must be exactly ${MILTER_OPTNEG_BYTES} bytes`);
      message = { command: SMFIC_OPTNEG, version: reader.uint32('version'), actions: reader.uint32('actions'), protocol: reader.uint32('protocol') };
      break;
    }
    case SMFIC_MACRO: {
      const stage = reader.byte('stage');
      if (!COMMAND_NAMES.has(stage)) throw reader.fail(`stage ${describeCode(stage)} is no SMFIC_* command`);
      const strings = readStrings(reader, 'macro string', 2 * MILTER_MACRO_PAIRS_MAX);
      if (strings.length % 2 !== 0) throw reader.fail(`macro ${String(strings.at(-1)?.toString('latin1'))} has no value`);
      const macros: MacroPair[] = [];
      for (let i = 0; i < strings.length; i += 2) macros.push([strings[i]!, strings[i + 1]!]);
      message = { command: SMFIC_MACRO, stage, macros };
      break;
    }
    case SMFIC_CONNECT: {
      const hostname = reader.cstring('hostname');
      const family = reader.byte('family');
      if (family === SMFIA_UNKNOWN) {
        message = { command: SMFIC_CONNECT, hostname, family };
      } else if (family === SMFIA_INET || family === SMFIA_INET6 || family === SMFIA_UNIX) {
        message = { command: SMFIC_CONNECT, hostname, family, port: reader.uint16('port'), address: reader.cstring('address') };
      } else {
        throw reader.fail(`family ${describeCode(family)} is none of '4', '6', 'L', 'U'`);
      }
      break;
    }
    case SMFIC_HELO:
      message = { command: SMFIC_HELO, helo: reader.cstring('helo') };
      break;
    case SMFIC_MAIL:
    case SMFIC_RCPT: {
      const address = reader.cstring('address');
      message = { command: frame.command, address, esmtpArgs: readStrings(reader, 'ESMTP argument', MILTER_ARGS_MAX - 1) };
      break;
    }
    case SMFIC_HEADER:
      message = { command: SMFIC_HEADER, name: reader.cstring('name'), value: reader.cstring('value') };
      break;
    case SMFIC_BODY:
    case SMFIC_BODYEOB:
      message = { command: frame.command, chunk: reader.rest('body chunk', MILTER_CHUNK_BYTES) };
      break;
    case SMFIC_UNKNOWN:
      message = { command: SMFIC_UNKNOWN, line: reader.cstring('command line') };
      break;
    case SMFIC_ABORT:
    case SMFIC_EOH:
    case SMFIC_DATA:
    case SMFIC_QUIT:
    case SMFIC_QUIT_NC:
      message = { command: frame.command };
      break;
    default:
      throw milterProtocolError(`${describeCode(frame.command)} is no MTA command (a reply sent the wrong way, or a stream out of step)`);
  }
  reader.end();
  return message;
}

/** A reply frame (milter -> MTA) as a typed value; throws the milter protocol error on anything malformed. */
export function decodeReply(frame: MilterFrame): MilterReply {
  const reader = new PayloadReader(frame);
  let message: MilterReply;
  switch (frame.command) {
    case SMFIC_OPTNEG: {
      const version = reader.uint32('version');
      const actions = reader.uint32('actions');
      const protocol = reader.uint32('protocol');
      message = { command: SMFIC_OPTNEG, version, actions, protocol, macroLists: readMacroLists(reader) };
      break;
    }
    case SMFIR_SETSYMLIST:
      message = { command: SMFIR_SETSYMLIST, macroLists: readMacroLists(reader) };
      break;
    case SMFIR_ACCEPT:
    case SMFIR_CONTINUE:
    case SMFIR_DISCARD:
    case SMFIR_REJECT:
    case SMFIR_TEMPFAIL:
    case SMFIR_SKIP:
    case SMFIR_PROGRESS:
    case SMFIR_SHUTDOWN:
    case SMFIR_CONN_FAIL:
      message = { command: frame.command };
      break;
    case SMFIR_ADDRCPT:
    case SMFIR_DELRCPT:
      message = { command: frame.command, recipient: reader.cstring('recipient') };
      break;
    case SMFIR_ADDRCPT_PAR: {
      const recipient = reader.cstring('recipient');
      message = { command: SMFIR_ADDRCPT_PAR, recipient, esmtpArgs: reader.remaining > 0 ? reader.cstring('ESMTP arguments') : null };
      break;
    }
    case SMFIR_CHGFROM: {
      const sender = reader.cstring('sender');
      message = { command: SMFIR_CHGFROM, sender, esmtpArgs: reader.remaining > 0 ? reader.cstring('ESMTP arguments') : null };
      break;
    }
    case SMFIR_ADDHEADER:
      message = { command: SMFIR_ADDHEADER, name: reader.cstring('name'), value: reader.cstring('value') };
      break;
    case SMFIR_INSHEADER:
    case SMFIR_CHGHEADER: {
      const index = reader.uint32('index');
      message = { command: frame.command, index, name: reader.cstring('name'), value: reader.cstring('value') };
      break;
    }
    case SMFIR_REPLBODY:
      message = { command: SMFIR_REPLBODY, chunk: reader.rest('body piece', MILTER_FRAME_BYTES_MAX - 1) };
      break;
    case SMFIR_QUARANTINE:
      message = { command: SMFIR_QUARANTINE, reason: reader.cstring('reason') };
      break;
    case SMFIR_REPLYCODE: {
      const reply = reader.cstring('reply');
      if (!REPLY_PREFIX.test(reply.subarray(0, REPLY_PREFIX_BYTES).toString('latin1'))) throw reader.fail(`the reply must start with a 4xx or 5xx code and ' ' or '-'`);
      message = { command: SMFIR_REPLYCODE, reply };
      break;
    }
    default:
      throw milterProtocolError(`${describeCode(frame.command)} is no milter reply (a command sent the wrong way, or a stream out of step)`);
  }
  reader.end();
  return message;
}
