import { hostError, type ErrorCode } from '../errors.js';
import type { HookContext, MetadataValue } from './hook-context.js';

/**
 * The wire format in which metadata crosses into and out of a plugin's
 * store (abi/zig/metadata_host.zig loadEncoded / applyEncoded /
 * takeChanges): repeated [u32 key_len][key][u32 value_len][value], little
 * endian.
 */

/** Bounds checked on each side of the boundary. */
export interface WireBounds {
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly keysMax: number;
}

export type MetadataFields = Readonly<Record<string, MetadataValue | undefined>>;

let scratch = Buffer.allocUnsafe(64 * 1024);

/** A reusable buffer of at least `bytes` (valid until the next call). */
export function scratchBuffer(bytes: number): Buffer {
  if (scratch.length < bytes) scratch = Buffer.allocUnsafe(Math.max(bytes, scratch.length * 2));
  return scratch;
}

/** UTF-8 needs at most three bytes per UTF-16 unit. */
const UTF8_BYTES_PER_UNIT_MAX = 3;

function bytesOf(value: MetadataValue): Uint8Array {
  return typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
}

/**
 * The keys the host gives one hook event, encoded once: every plugin of the
 * event reads these same bytes (a native plugin in place, a sandboxed one as
 * a copy in its memory), whatever its backend. `head` holds every key in the
 * wire format; when `tail` is set, `head` ends with the length of the last
 * value and `tail` is that value (the message body, referenced where it
 * lies, never copied behind the keys).
 */
export class EncodedMetadata {
  readonly head: Buffer;
  readonly tail: Buffer | null;
  /** Keys encoded. */
  readonly count: number;
  /** The longest key and value, in bytes, and the key of the longest value: what a sandbox's bounds are checked against. */
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly largestKey: string;
  #fields: MetadataFields | null;

  constructor(head: Buffer, tail: Buffer | null, count: number, maxima: { keyBytesMax: number; valueBytesMax: number; largestKey: string }, fields: MetadataFields | null) {
    this.head = head;
    this.tail = tail;
    this.count = count;
    this.keyBytesMax = maxima.keyBytesMax;
    this.valueBytesMax = maxima.valueBytesMax;
    this.largestKey = maxima.largestKey;
    this.#fields = fields;
  }

  get byteLength(): number {
    return this.head.length + (this.tail === null ? 0 : this.tail.length);
  }

  /** The keys as the host gave them (decoded from the bytes, once, when the event came over a wire). */
  get fields(): MetadataFields {
    this.#fields ??= decodeFields(this.head, this.tail);
    return this.#fields;
  }

  /** Copies the whole encoding (head, then tail) into `target` at `offset`; returns the bytes written. */
  copyTo(target: Uint8Array, offset: number): number {
    target.set(this.head, offset);
    if (this.tail !== null) target.set(this.tail, offset + this.head.length);
    return this.byteLength;
  }
}

export const EMPTY_METADATA = new EncodedMetadata(Buffer.alloc(0), null, 0, { keyBytesMax: 0, valueBytesMax: 0, largestKey: '' }, Object.freeze({}));

/**
 * Encodes `fields` (undefined values skipped) in one pass. With `tailKey`,
 * that key's value goes last and, when it is bytes, is referenced as the
 * tail instead of copied.
 */
export function encodeFields(fields: MetadataFields, tailKey?: string): EncodedMetadata {
  let estimate = 0;
  for (const key in fields) {
    const value = fields[key];
    if (value === undefined || key === tailKey) continue;
    estimate += 8 + UTF8_BYTES_PER_UNIT_MAX * key.length + (typeof value === 'string' ? UTF8_BYTES_PER_UNIT_MAX * value.length : value.byteLength);
  }
  const tailValue = tailKey === undefined ? undefined : fields[tailKey];
  const tail = tailValue === undefined ? null : typeof tailValue === 'string' ? Buffer.from(tailValue, 'utf8') : Buffer.isBuffer(tailValue) ? tailValue : Buffer.from(tailValue.buffer, tailValue.byteOffset, tailValue.byteLength);
  if (tail !== null) estimate += 8 + UTF8_BYTES_PER_UNIT_MAX * tailKey!.length;
  const buf = Buffer.allocUnsafe(estimate);
  let at = 0;
  let count = 0;
  let keyBytesMax = 0;
  let valueBytesMax = 0;
  let largestKey = '';
  const writeKey = (key: string): void => {
    const keyLen = buf.write(key, at + 4, 'utf8');
    buf.writeUInt32LE(keyLen, at);
    at += 4 + keyLen;
    if (keyLen > keyBytesMax) keyBytesMax = keyLen;
    count++;
  };
  const noteValue = (key: string, valueLen: number): void => {
    if (valueLen > valueBytesMax || largestKey === '') {
      valueBytesMax = valueLen;
      largestKey = key;
    }
  };
  for (const key in fields) {
    const value = fields[key];
    if (value === undefined || key === tailKey) continue;
    writeKey(key);
    let valueLen: number;
    if (typeof value === 'string') {
      valueLen = value.length === 0 ? 0 : buf.write(value, at + 4, 'utf8');
    } else {
      valueLen = value.byteLength;
      buf.set(value, at + 4);
    }
    buf.writeUInt32LE(valueLen, at);
    at += 4 + valueLen;
    noteValue(key, valueLen);
  }
  if (tail !== null) {
    writeKey(tailKey!);
    buf.writeUInt32LE(tail.length, at);
    at += 4;
    noteValue(tailKey!, tail.length);
  }
  return new EncodedMetadata(buf.subarray(0, at), tail, count, { keyBytesMax, valueBytesMax, largestKey }, fields);
}

/** Takes wire bytes as they came (from another thread) as an event's encoding; the fields are decoded only if asked for. */
export function wireMetadata(bytes: Uint8Array): EncodedMetadata {
  const head = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let count = 0;
  let keyBytesMax = 0;
  let valueBytesMax = 0;
  let largestKey = '';
  for (const [key, keyLen, valueLen] of walk(head, head.length, undefined, 'SMTP_E_METADATA_LIMIT', 'host')) {
    count++;
    keyBytesMax = Math.max(keyBytesMax, keyLen);
    if (valueLen >= valueBytesMax) {
      valueBytesMax = valueLen;
      largestKey = key;
    }
  }
  return new EncodedMetadata(head, null, count, { keyBytesMax, valueBytesMax, largestKey }, null);
}

function decodeFields(head: Buffer, tail: Buffer | null): MetadataFields {
  const fields: Record<string, MetadataValue> = {};
  let at = 0;
  while (at < head.length) {
    const keyLen = head.readUInt32LE(at);
    const key = head.toString('utf8', at + 4, at + 4 + keyLen);
    at += 4 + keyLen;
    const valueLen = head.readUInt32LE(at);
    at += 4;
    if (at === head.length && tail !== null) {
      fields[key] = tail;
      break;
    }
    fields[key] = head.subarray(at, at + valueLen);
    at += valueLen;
  }
  return Object.freeze(fields);
}

/** Yields [key, keyLen, valueLen, valueStart] of each entry, checking every length against what is present and the bounds. */
function* walk(view: Buffer, length: number, bounds: WireBounds | undefined, code: ErrorCode, who: string): Generator<[string, number, number, number]> {
  const fail = (problem: string): never => {
    throw hostError(code, `${who}: changed metadata ${problem}`);
  };
  if (length > view.length) fail(`claims ${length} bytes of ${view.length}`);
  let at = 0;
  let count = 0;
  while (at < length) {
    if (bounds && ++count > bounds.keysMax) fail(`holds more than ${bounds.keysMax} keys`);
    if (length - at < 4) fail('is truncated');
    const keyLen = view.readUInt32LE(at);
    if (bounds && keyLen > bounds.keyBytesMax) fail(`has a ${keyLen}-byte key (at most ${bounds.keyBytesMax})`);
    if (length - at - 4 < keyLen + 4) fail('is truncated');
    const key = view.toString('utf8', at + 4, at + 4 + keyLen);
    at += 4 + keyLen;
    const valueLen = view.readUInt32LE(at);
    if (bounds && valueLen > bounds.valueBytesMax) fail(`"${key}" has ${valueLen} bytes (at most ${bounds.valueBytesMax})`);
    if (length - at - 4 < valueLen) fail('is truncated');
    yield [key, keyLen, valueLen, at + 4];
    at += 4 + valueLen;
  }
}

/**
 * Applies a plugin's encoded changes to `context`. Every length is checked
 * against the bytes present and, with `bounds`, against the bounds: a
 * plugin's memory is not trusted to be well formed. Violations throw `code`.
 */
export function applyChanges(bytes: Uint8Array, length: number, context: HookContext, bounds: WireBounds | undefined, code: ErrorCode, who: string): void {
  const view = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const [key, , valueLen, start] of walk(view, length, bounds, code, who)) {
    // A copy (pooled for small values): the source is reused by the next call.
    const value = Buffer.allocUnsafe(valueLen);
    view.copy(value, 0, start, start + valueLen);
    context.applyPluginChange(key, value);
  }
}

/** Bytes `entries` take in the wire format. */
function encodedLength(entries: readonly (readonly [string, MetadataValue])[]): number {
  let bytes = 0;
  for (const [key, value] of entries) bytes += 8 + Buffer.byteLength(key, 'utf8') + (typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength);
  return bytes;
}

/** Encodes `entries` into `target` at `offset`; returns the bytes written. */
export function writeEntries(entries: readonly (readonly [string, MetadataValue])[], target: Buffer, offset: number): number {
  let at = offset;
  for (const [key, value] of entries) {
    const keyLen = target.write(key, at + 4, 'utf8');
    target.writeUInt32LE(keyLen, at);
    at += 4 + keyLen;
    const bytes = bytesOf(value);
    target.writeUInt32LE(bytes.byteLength, at);
    target.set(bytes, at + 4);
    at += 4 + bytes.byteLength;
  }
  return at - offset;
}

/** Encodes `entries` (a plugin's changes, or changes a copy has not seen) into a fresh buffer. */
export function encodeEntries(entries: Iterable<readonly [string, MetadataValue]>): Buffer {
  const list = [...entries];
  const out = Buffer.allocUnsafe(encodedLength(list));
  writeEntries(list, out, 0);
  return out;
}

/**
 * What a copy of `context` must receive, as one contiguous wire text: the
 * event's encoding followed by every change made since (later entries
 * replace earlier ones on load). Checked against `bounds` first.
 */
export function wireSize(context: HookContext, bounds: WireBounds | undefined, who: string): { changes: readonly (readonly [string, MetadataValue])[]; bytes: number } {
  const { base } = context;
  if (bounds) {
    if (base.count > bounds.keysMax) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: ${base.count} metadata keys, at most ${bounds.keysMax} may be copied in`);
    if (base.keyBytesMax > bounds.keyBytesMax || base.valueBytesMax > bounds.valueBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `${who}: metadata "${base.largestKey}" (${base.valueBytesMax} bytes) is over the bound copied in (${bounds.valueBytesMax} bytes, keys ${bounds.keyBytesMax})`);
    }
  }
  const changes = [...context.changesSince(0)];
  const changeBytes = encodedLength(changes);
  if (bounds && changes.length > 0) {
    if (base.count + changes.length > bounds.keysMax) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: ${base.count + changes.length} metadata keys, at most ${bounds.keysMax} may be copied in`);
    for (const [key, value] of changes) {
      const valueLen = typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength;
      if (Buffer.byteLength(key, 'utf8') > bounds.keyBytesMax || valueLen > bounds.valueBytesMax) {
        throw hostError('SMTP_E_METADATA_LIMIT', `${who}: metadata "${key}" (${valueLen} bytes) is over the bound copied in (${bounds.valueBytesMax} bytes, keys ${bounds.keyBytesMax})`);
      }
    }
  }
  return { changes, bytes: base.byteLength + changeBytes };
}
