/**
 * The spool's on-disk record layout (docs/spool.md has it byte by byte).
 * Every record is a 16-byte header and a payload; all integers are little
 * endian; strings are a u16 byte count and UTF-8 bytes.
 *
 *   0  u32 magic "SPR1"
 *   4  u8  type       (RecordType)
 *   5  u8  flags      (0; reserved)
 *   6  u16 reserved   (0)
 *   8  u32 payload bytes
 *  12  u32 CRC-32     (zlib.crc32 over bytes 4..11, then the payload)
 *  16  payload
 *
 * The CRC covers the type and the length too, so a torn or overwritten
 * header is caught, not only a torn payload.
 */
import { crc32 } from 'node:zlib';

/** The bytes "SPR1" read as a little-endian u32. */
export const RECORD_MAGIC = 0x31525053;
export const HEADER_BYTES = 16;
export const FORMAT_VERSION = 1;

export const RecordType = {
  /** First record of every segment: the format version and the segment's own number. */
  SEGMENT: 1,
  /** A message: envelope, extra, delivery progress and the body inline or in large/<id>.eml. */
  STORE: 2,
  /** Recipients delivered since the STORE (or the last DELIVERED), so a restart does not deliver twice. */
  DELIVERED: 3,
  /** Tombstone: the message is gone (delivered, bounced, removed). */
  DONE: 4,
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

export const BodyKind = { INLINE: 0, FILE: 1 } as const;

/** A string field's bound: its length prefix is a u16. */
export const STRING_BYTES_MAX = 0xffff;
/** A u16 count prefix (recipients, delivered, extra pairs). */
export const COUNT_MAX = 0xffff;
/** Envelope, extra and progress of one message, encoded; far above any real envelope, and a bound for recovery to trust. */
export const METADATA_BYTES_MAX = 4 * 2 ** 20;
/** The largest inlineBytesMax the spool accepts. */
export const INLINE_BYTES_LIMIT = 16 * 2 ** 20;
/** A length field beyond this is corruption, not a record. */
export const PAYLOAD_BYTES_MAX = INLINE_BYTES_LIMIT + METADATA_BYTES_MAX;
/** SEGMENT payload: u16 version, u16 reserved, u32 reserved, u64 sequence, f64 created (ms since the epoch). */
const SEGMENT_PAYLOAD_BYTES = 24;

export class RecordFormatError extends Error {}

export interface StoreFields {
  readonly id: string;
  readonly receivedAt: string;
  readonly from: string;
  readonly to: readonly string[];
  readonly delivered: readonly string[];
  readonly extra: Readonly<Record<string, string>>;
  /** Bytes of the message. */
  readonly size: number;
  readonly bodyKind: (typeof BodyKind)[keyof typeof BodyKind];
}

/** One record, as iovecs ready for writev: the header and metadata in the first buffer, an inline body's chunks after it. */
export interface EncodedRecord {
  readonly buffers: Buffer[];
  readonly bytes: number;
}

/** Worst-case UTF-8 bytes of `s` with its prefix: a UTF-16 code unit never takes more than 3 bytes. */
function stringBound(s: string): number {
  return 2 + 3 * s.length;
}

function putString(buffer: Buffer, offset: number, value: string, what: string): number {
  const written = buffer.write(value, offset + 2, 'utf8');
  if (written > STRING_BYTES_MAX) throw new RecordFormatError(`${what} is ${written} bytes; at most ${STRING_BYTES_MAX} fit a spool record`);
  buffer.writeUInt16LE(written, offset);
  return offset + 2 + written;
}

function putCount(buffer: Buffer, offset: number, count: number, what: string): number {
  if (count > COUNT_MAX) throw new RecordFormatError(`${count} ${what}; at most ${COUNT_MAX} fit a spool record`);
  buffer.writeUInt16LE(count, offset);
  return offset + 2;
}

/** Fills in the header of `first` (whose payload starts at HEADER_BYTES) and the CRC over it and `rest`. */
function seal(first: Buffer, type: RecordType, rest: readonly Buffer[], restBytes: number): void {
  const payloadBytes = first.length - HEADER_BYTES + restBytes;
  first.writeUInt32LE(RECORD_MAGIC, 0);
  first[4] = type;
  first[5] = 0;
  first.writeUInt16LE(0, 6);
  first.writeUInt32LE(payloadBytes, 8);
  let crc = crc32(first.subarray(4, 12));
  crc = crc32(first.subarray(HEADER_BYTES), crc);
  for (const chunk of rest) crc = crc32(chunk, crc);
  first.writeUInt32LE(crc >>> 0, 12);
}

export function encodeStore(fields: StoreFields, body: readonly Buffer[]): EncodedRecord {
  const extra = Object.entries(fields.extra);
  let bound = HEADER_BYTES + stringBound(fields.id) + stringBound(fields.receivedAt) + 8 + 2 + 2 + stringBound(fields.from) + 2 + 2;
  for (const r of fields.to) bound += stringBound(r);
  for (const r of fields.delivered) bound += stringBound(r);
  for (const [k, v] of extra) bound += stringBound(k) + stringBound(v);
  if (bound - HEADER_BYTES > METADATA_BYTES_MAX * 3) throw new RecordFormatError(`the envelope and extra fields of ${fields.id} exceed ${METADATA_BYTES_MAX} bytes`);
  const buffer = Buffer.allocUnsafe(bound);
  let o = HEADER_BYTES;
  o = putString(buffer, o, fields.id, 'the id');
  o = putString(buffer, o, fields.receivedAt, 'receivedAt');
  buffer.writeDoubleLE(fields.size, o);
  o += 8;
  buffer[o] = fields.bodyKind;
  buffer[o + 1] = 0;
  o += 2;
  o = putString(buffer, o, fields.from, 'the sender');
  o = putCount(buffer, o, fields.to.length, 'recipients');
  for (const r of fields.to) o = putString(buffer, o, r, 'a recipient');
  o = putCount(buffer, o, fields.delivered.length, 'delivered recipients');
  for (const r of fields.delivered) o = putString(buffer, o, r, 'a delivered recipient');
  o = putCount(buffer, o, extra.length, 'extra fields');
  for (const [k, v] of extra) {
    o = putString(buffer, o, k, 'an extra key');
    o = putString(buffer, o, v, `extra field ${k}`);
  }
  if (o - HEADER_BYTES > METADATA_BYTES_MAX) throw new RecordFormatError(`the envelope and extra fields of ${fields.id} take ${o - HEADER_BYTES} bytes; at most ${METADATA_BYTES_MAX}`);
  const first = buffer.subarray(0, o);
  const inlineBytes = fields.bodyKind === BodyKind.INLINE ? fields.size : 0;
  seal(first, RecordType.STORE, body, inlineBytes);
  return { buffers: [first, ...body], bytes: first.length + inlineBytes };
}

export function encodeDelivered(id: string, recipients: readonly string[]): EncodedRecord {
  let bound = HEADER_BYTES + stringBound(id) + 2;
  for (const r of recipients) bound += stringBound(r);
  const buffer = Buffer.allocUnsafe(bound);
  let o = putString(buffer, HEADER_BYTES, id, 'the id');
  o = putCount(buffer, o, recipients.length, 'delivered recipients');
  for (const r of recipients) o = putString(buffer, o, r, 'a delivered recipient');
  const first = buffer.subarray(0, o);
  seal(first, RecordType.DELIVERED, [], 0);
  return { buffers: [first], bytes: first.length };
}

export function encodeDone(id: string): EncodedRecord {
  const buffer = Buffer.allocUnsafe(HEADER_BYTES + stringBound(id));
  const first = buffer.subarray(0, putString(buffer, HEADER_BYTES, id, 'the id'));
  seal(first, RecordType.DONE, [], 0);
  return { buffers: [first], bytes: first.length };
}

export function encodeSegment(sequence: number, createdMs: number): EncodedRecord {
  const first = Buffer.alloc(HEADER_BYTES + SEGMENT_PAYLOAD_BYTES);
  first.writeUInt16LE(FORMAT_VERSION, HEADER_BYTES);
  first.writeBigUInt64LE(BigInt(sequence), HEADER_BYTES + 8);
  first.writeDoubleLE(createdMs, HEADER_BYTES + 16);
  seal(first, RecordType.SEGMENT, [], 0);
  return { buffers: [first], bytes: first.length };
}

/** A header that passed its checks: where the payload is and what it holds. */
export interface RecordHeader {
  readonly type: number;
  readonly payloadBytes: number;
  readonly crc: number;
}

/**
 * Reads the header at `offset` of `buffer`; null when the bytes there are
 * not a header (no magic, a reserved byte set, a length no record has).
 */
export function readHeader(buffer: Buffer, offset: number): RecordHeader | null {
  if (buffer.readUInt32LE(offset) !== RECORD_MAGIC) return null;
  if (buffer[offset + 5] !== 0 || buffer.readUInt16LE(offset + 6) !== 0) return null;
  const payloadBytes = buffer.readUInt32LE(offset + 8);
  if (payloadBytes > PAYLOAD_BYTES_MAX) return null;
  return { type: buffer[offset + 4]!, payloadBytes, crc: buffer.readUInt32LE(offset + 12) };
}

/** Whether the record at `offset` (header and whole payload in `buffer`) has the CRC its header claims. */
export function crcMatches(buffer: Buffer, offset: number, header: RecordHeader): boolean {
  let crc = crc32(buffer.subarray(offset + 4, offset + 12));
  crc = crc32(buffer.subarray(offset + HEADER_BYTES, offset + HEADER_BYTES + header.payloadBytes), crc);
  return crc >>> 0 === header.crc;
}

/** A cursor over one payload; every read is bounds-checked, since a payload that passed its CRC may still come from a newer format. */
class PayloadReader {
  #offset: number;
  readonly #end: number;
  readonly #buffer: Buffer;

  constructor(buffer: Buffer, start: number, end: number) {
    this.#buffer = buffer;
    this.#offset = start;
    this.#end = end;
  }

  get offset(): number {
    return this.#offset;
  }

  #need(bytes: number): void {
    if (this.#offset + bytes > this.#end) throw new RecordFormatError(`payload ends ${this.#offset + bytes - this.#end} bytes early`);
  }

  u8(): number {
    this.#need(1);
    return this.#buffer[this.#offset++]!;
  }

  u16(): number {
    this.#need(2);
    const value = this.#buffer.readUInt16LE(this.#offset);
    this.#offset += 2;
    return value;
  }

  f64(): number {
    this.#need(8);
    const value = this.#buffer.readDoubleLE(this.#offset);
    this.#offset += 8;
    return value;
  }

  u64(): number {
    this.#need(8);
    const value = this.#buffer.readBigUInt64LE(this.#offset);
    this.#offset += 8;
    return Number(value);
  }

  string(): string {
    const bytes = this.u16();
    this.#need(bytes);
    const value = this.#buffer.toString('utf8', this.#offset, this.#offset + bytes);
    this.#offset += bytes;
    return value;
  }

  strings(): string[] {
    const count = this.u16();
    const list: string[] = [];
    for (let i = 0; i < count; i++) list.push(this.string());
    return list;
  }

  skip(bytes: number): void {
    this.#need(bytes);
    this.#offset += bytes;
  }

  remaining(): number {
    return this.#end - this.#offset;
  }
}

export interface DecodedStore extends StoreFields {
  /** For an inline body: where it starts in the buffer given to decodeStore. */
  readonly bodyOffset: number;
}

/** The STORE payload in `buffer` from `start` to `end`. */
export function decodeStore(buffer: Buffer, start: number, end: number): DecodedStore {
  const r = new PayloadReader(buffer, start, end);
  const id = r.string();
  const receivedAt = r.string();
  const size = r.f64();
  const bodyKind = r.u8();
  r.u8();
  const from = r.string();
  const to = r.strings();
  const delivered = r.strings();
  const pairs = r.u16();
  const extra: Record<string, string> = {};
  for (let i = 0; i < pairs; i++) {
    const key = r.string();
    extra[key] = r.string();
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new RecordFormatError(`message ${id}: size ${size} is not a byte count`);
  if (bodyKind === BodyKind.INLINE) {
    if (r.remaining() !== size) throw new RecordFormatError(`message ${id}: ${r.remaining()} inline body bytes, its size says ${size}`);
  } else if (bodyKind !== BodyKind.FILE) {
    throw new RecordFormatError(`message ${id}: unknown body kind ${bodyKind}`);
  }
  return { id, receivedAt, size, bodyKind: bodyKind as StoreFields['bodyKind'], from, to, delivered, extra, bodyOffset: r.offset };
}

export function decodeDelivered(buffer: Buffer, start: number, end: number): { id: string; recipients: string[] } {
  const r = new PayloadReader(buffer, start, end);
  return { id: r.string(), recipients: r.strings() };
}

export function decodeDone(buffer: Buffer, start: number, end: number): string {
  return new PayloadReader(buffer, start, end).string();
}

export function decodeSegment(buffer: Buffer, start: number, end: number): { version: number; sequence: number; createdMs: number } {
  const r = new PayloadReader(buffer, start, end);
  const version = r.u16();
  r.skip(6);
  return { version, sequence: r.u64(), createdMs: r.f64() };
}
