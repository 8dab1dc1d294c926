import { hostError, type ErrorCode } from '../errors.js';
import type { ChangeLog, HookContext, MetadataValue } from './hook-context.js';

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

/**
 * Encodings up to this size are written into encodeScratch and copied out at
 * their exact length. encodeFields sizes its buffer for the worst case (three
 * bytes per UTF-16 unit), about three times what short ASCII keys take: an
 * allocation of that size used up Node's 8 KiB Buffer pool three times as
 * fast, and a new pool (a zero-filled ArrayBuffer) cost about 5 us here.
 * Measured by hand on a message_filtered event: Buffer.allocUnsafe(700)
 * 345-415 ns, of 400 bytes 131-148 ns.
 */
export const ENCODE_SCRATCH_BYTES = 16 * 1024;
const encodeScratch = Buffer.allocUnsafe(ENCODE_SCRATCH_BYTES);

/** UTF-8 needs at most three bytes per UTF-16 unit. */
const UTF8_BYTES_PER_UNIT_MAX = 3;

/** Below this many UTF-16 units, a string is written byte by byte in JS: cheaper than a call into Buffer#write. */
const INLINE_WRITE_UNITS_MAX = 64;

/**
 * Writes `text` as UTF-8 at `at`; returns the bytes written. The keys and
 * most values the host sends are short ASCII: they are copied in JS, which
 * costs a fraction of Buffer#write's call into C++ per string.
 */
function writeText(buf: Buffer, text: string, at: number): number {
  const units = text.length;
  if (units <= INLINE_WRITE_UNITS_MAX) {
    let i = 0;
    for (; i < units; i++) {
      const unit = text.charCodeAt(i);
      if (unit >= 0x80) break;
      buf[at + i] = unit;
    }
    if (i === units) return units;
  }
  return buf.write(text, at, 'utf8');
}

function bytesOf(value: MetadataValue): Uint8Array {
  return typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
}

/** The longest key and value of an encoding, in bytes, and the key of the longest value: what a sandbox's bounds are checked against. */
interface Maxima {
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly largestKey: string;
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
  /** The longest key and value (null: not measured yet; only a bounded copy asks, see withoutTail). */
  #maxima: Maxima | null;
  /** The keys as given (null: decode them from the bytes when asked). */
  #fields: MetadataFields | null;
  /** An encoding these bytes start with, whose keys are not in #fields yet (null once merged). */
  #prefix: EncodedMetadata | null;
  /** The bytes the tail's key and length take at the end of `head`. */
  readonly #tailEntryBytes: number;
  /** The tail's key (null: no tail, or not known). */
  readonly #tailKey: string | null;
  /** The encoding this one is a tail-less view of (withoutTail): its keys, but the tail's, are this one's (null once taken). */
  #withTail: EncodedMetadata | null = null;

  constructor(head: Buffer, tail: Buffer | null, count: number, maxima: Maxima | null, fields: MetadataFields | null, prefix: EncodedMetadata | null = null, tailEntryBytes = 0, tailKey: string | null = null) {
    this.head = head;
    this.tail = tail;
    this.count = count;
    this.#maxima = maxima;
    this.#fields = fields;
    this.#prefix = prefix;
    this.#tailEntryBytes = tailEntryBytes;
    this.#tailKey = tailKey;
  }

  get keyBytesMax(): number {
    return (this.#maxima ??= measure(this.head)).keyBytesMax;
  }

  get valueBytesMax(): number {
    return (this.#maxima ??= measure(this.head)).valueBytesMax;
  }

  /** The key of the longest value. */
  get largestKey(): string {
    return (this.#maxima ??= measure(this.head)).largestKey;
  }

  get byteLength(): number {
    return this.head.length + (this.tail === null ? 0 : this.tail.length);
  }

  /** The keys as the host gave them (merged with a prefix's, or decoded from the bytes, once, when asked). */
  get fields(): MetadataFields {
    if (this.#fields === null && this.#withTail !== null) {
      // The keys of the encoding with the body, without it: copied from its fields, which the
      // filter stages have read already, instead of decoding every key and value again
      // (about 4 us per message_stored event, when carried keys were set on it).
      const fields: Record<string, MetadataValue | undefined> = {};
      const source = this.#withTail.fields;
      const skip = this.#withTail.#tailKey;
      for (const key in source) if (key !== skip && source[key] !== undefined) fields[key] = source[key];
      this.#fields = fields;
      this.#withTail = null;
    } else if (this.#fields === null) this.#fields = decodeFields(this.head, this.tail);
    else if (this.#prefix !== null) {
      // Built key by key from empty: spreading the prefix and then adding keys cost V8 about 7 us
      // per event (a shape transition per key on a pre-sized literal), this about 0.25 us.
      const merged: Record<string, MetadataValue | undefined> = {};
      const prefixFields = this.#prefix.fields;
      for (const key in prefixFields) merged[key] = prefixFields[key];
      for (const key in this.#fields) if (this.#fields[key] !== undefined) merged[key] = this.#fields[key]!;
      this.#fields = merged;
      // Merged once: every later read is the same object (each plugin call reads it).
      this.#prefix = null;
    }
    return this.#fields;
  }

  /**
   * One key's value, as `fields[key]` gives it, without building the merged
   * fields when they are not built yet (a prefix's keys, or a view's source).
   */
  value(key: string): MetadataValue | undefined {
    if (this.#fields === null && this.#withTail !== null) return key === this.#withTail.#tailKey ? undefined : this.#withTail.value(key);
    if (this.#fields === null) return this.fields[key];
    const own = this.#fields[key];
    if (own !== undefined || this.#prefix === null) return own;
    return this.#prefix.value(key);
  }

  /** Copies the whole encoding (head, then tail; without the tail when `withTail` is false) into `target` at `offset`; returns the bytes written. */
  copyTo(target: Uint8Array, offset: number, withTail = true): number {
    target.set(this.head, offset);
    if (this.tail === null || !withTail) return this.head.length;
    target.set(this.tail, offset + this.head.length);
    return this.byteLength;
  }

  /** The same keys without the tail's (the message's keys without its body): a view, nothing is re-encoded. */
  withoutTail(): EncodedMetadata {
    if (this.tail === null) return this;
    const head = this.head.subarray(0, this.head.length - this.#tailEntryBytes);
    // Measured when a bounded copy first asks: a chain of native plugins never does (walking the keys cost about 0.7 us per message).
    const view = new EncodedMetadata(head, null, this.count - 1, null, null);
    // With the tail's key known and the fields at hand (not to be decoded), the view's fields come from them.
    if (this.#tailKey !== null && this.#fields !== null) view.#withTail = this;
    return view;
  }
}

/** The maxima of an encoding, read from its lengths. */
function measure(head: Buffer): Maxima {
  let at = 0;
  let keyBytesMax = 0;
  let valueBytesMax = -1;
  let largestAt = -1;
  let largestLen = 0;
  while (at < head.length) {
    const keyLen = head.readUInt32LE(at);
    const valueLen = head.readUInt32LE(at + 4 + keyLen);
    if (keyLen > keyBytesMax) keyBytesMax = keyLen;
    if (valueLen > valueBytesMax) {
      valueBytesMax = valueLen;
      largestAt = at + 4;
      largestLen = keyLen;
    }
    at += 8 + keyLen + valueLen;
  }
  return { keyBytesMax, valueBytesMax: Math.max(0, valueBytesMax), largestKey: largestAt < 0 ? '' : head.toString('utf8', largestAt, largestAt + largestLen) };
}

export const EMPTY_METADATA = new EncodedMetadata(Buffer.alloc(0), null, 0, { keyBytesMax: 0, valueBytesMax: 0, largestKey: '' }, Object.freeze({}));

function writeU32(buf: Buffer, value: number, at: number): void {
  buf[at] = value & 0xff;
  buf[at + 1] = (value >>> 8) & 0xff;
  buf[at + 2] = (value >>> 16) & 0xff;
  buf[at + 3] = value >>> 24;
}

/**
 * Encodes `fields` (undefined values skipped), after `prefix` when given (an
 * encoding made once and shared: a session's keys, a message's keys; it
 * must have no tail, and `fields` must not repeat its keys). With `tailKey`,
 * that key's value goes last and, when it is bytes, is referenced as the
 * tail instead of copied. This runs for every hook event a plugin handles:
 * one pass sizes the buffer and one fills it, writing short ASCII text and
 * the lengths byte by byte.
 */
export function encodeFields(fields: MetadataFields, tailKey?: string, prefix?: EncodedMetadata): EncodedMetadata {
  let estimate = prefix === undefined ? 0 : prefix.head.length;
  for (const key in fields) {
    const value = fields[key];
    if (value === undefined || key === tailKey) continue;
    estimate += 8 + UTF8_BYTES_PER_UNIT_MAX * key.length + (typeof value === 'string' ? UTF8_BYTES_PER_UNIT_MAX * value.length : value.byteLength);
  }
  const tailValue = tailKey === undefined ? undefined : fields[tailKey];
  const tail = tailValue === undefined ? null : typeof tailValue === 'string' ? Buffer.from(tailValue, 'utf8') : Buffer.isBuffer(tailValue) ? tailValue : Buffer.from(tailValue.buffer, tailValue.byteOffset, tailValue.byteLength);
  if (tail !== null) estimate += 8 + UTF8_BYTES_PER_UNIT_MAX * tailKey!.length;
  const buf = estimate <= ENCODE_SCRATCH_BYTES ? encodeScratch : Buffer.allocUnsafe(estimate);
  let at = 0;
  let count = 0;
  let keyBytesMax = 0;
  let valueBytesMax = -1;
  let largestKey = '';
  if (prefix !== undefined) {
    buf.set(prefix.head, 0);
    at = prefix.head.length;
    count = prefix.count;
    keyBytesMax = prefix.keyBytesMax;
    if (prefix.count > 0) {
      valueBytesMax = prefix.valueBytesMax;
      largestKey = prefix.largestKey;
    }
  }
  for (const key in fields) {
    const value = fields[key];
    if (value === undefined || key === tailKey) continue;
    const keyLen = writeText(buf, key, at + 4);
    writeU32(buf, keyLen, at);
    at += 4 + keyLen;
    let valueLen: number;
    if (typeof value === 'string') {
      valueLen = writeText(buf, value, at + 4);
    } else {
      valueLen = value.byteLength;
      buf.set(value, at + 4);
    }
    writeU32(buf, valueLen, at);
    at += 4 + valueLen;
    count++;
    if (keyLen > keyBytesMax) keyBytesMax = keyLen;
    if (valueLen > valueBytesMax) {
      valueBytesMax = valueLen;
      largestKey = key;
    }
  }
  let tailEntryBytes = 0;
  if (tail !== null) {
    const keyLen = writeText(buf, tailKey!, at + 4);
    writeU32(buf, keyLen, at);
    writeU32(buf, tail.length, at + 4 + keyLen);
    tailEntryBytes = 8 + keyLen;
    at += tailEntryBytes;
    count++;
    if (keyLen > keyBytesMax) keyBytesMax = keyLen;
    if (tail.length > valueBytesMax) {
      valueBytesMax = tail.length;
      largestKey = tailKey!;
    }
  }
  const maxima = { keyBytesMax, valueBytesMax: Math.max(0, valueBytesMax), largestKey };
  let head: Buffer;
  if (buf === encodeScratch) {
    head = Buffer.allocUnsafe(at);
    copyInto(buf, 0, at, head, 0);
  } else head = buf.subarray(0, at);
  return new EncodedMetadata(head, tail, count, maxima, fields, prefix ?? null, tailEntryBytes, tail === null ? null : tailKey!);
}

/** Takes wire bytes as they came (from another thread) as an event's encoding; the fields are decoded only if asked for. */
export function wireMetadata(bytes: Uint8Array): EncodedMetadata {
  const head = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let count = 0;
  let keyBytesMax = 0;
  let valueBytesMax = 0;
  let largestAt = -1;
  let largestLen = 0;
  for (let at = 0; at < head.length; ) {
    at = nextEntry(head, at, head.length, ++count, undefined, 'SMTP_E_METADATA_LIMIT', 'host');
    keyBytesMax = Math.max(keyBytesMax, entryKeyLen);
    if (entryValueLen >= valueBytesMax) {
      valueBytesMax = entryValueLen;
      largestAt = entryKeyAt;
      largestLen = entryKeyLen;
    }
  }
  const largestKey = largestAt < 0 ? '' : head.toString('utf8', largestAt, largestAt + largestLen);
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

/** A little-endian u32 from any byte array (a guest's memory is a plain Uint8Array, not a Buffer). */
function readU32(view: Uint8Array, at: number): number {
  return (view[at]! | (view[at + 1]! << 8) | (view[at + 2]! << 16) | (view[at + 3]! << 24)) >>> 0;
}

/** view[start, end) decoded. */
function text(view: Uint8Array, start: number, end: number, encoding: 'utf8' | 'latin1'): string {
  const bytes = Buffer.isBuffer(view) ? view : Buffer.from(view.buffer, view.byteOffset, view.byteLength);
  return bytes.toString(encoding, start, end);
}

/** Not a closure per walk: the walk runs for every plugin call that changed something. */
function malformedChanges(code: ErrorCode, who: string, problem: string): never {
  throw hostError(code, `${who}: changed metadata ${problem}`);
}

/**
 * The entry nextEntry read last: its key's place and length, its value's.
 * Module state, not an object or a callback per entry: a walk allocates
 * nothing, and each caller keeps its own loop.
 */
let entryKeyAt = 0;
let entryKeyLen = 0;
let entryValueAt = 0;
let entryValueLen = 0;

/**
 * Reads the entry of view[at, end) that starts at `at` (the caller makes
 * sure `end` is within `view`) into entryKeyAt, entryKeyLen, entryValueAt
 * and entryValueLen, and returns where the next one starts. Every length
 * is checked against what is present and, with `bounds`, against the
 * bounds first (`index`: the entry's number, from 1, checked against
 * keysMax): the bytes may come from a plugin's memory. Violations throw
 * `code`.
 */
function nextEntry(view: Uint8Array, at: number, end: number, index: number, bounds: WireBounds | undefined, code: ErrorCode, who: string): number {
  if (bounds !== undefined && index > bounds.keysMax) malformedChanges(code, who, `holds more than ${bounds.keysMax} keys`);
  if (end - at < 4) malformedChanges(code, who, 'is truncated');
  const keyLen = readU32(view, at);
  if (bounds !== undefined && keyLen > bounds.keyBytesMax) malformedChanges(code, who, `has a ${keyLen}-byte key (at most ${bounds.keyBytesMax})`);
  if (end - at - 4 < keyLen + 4) malformedChanges(code, who, 'is truncated');
  const keyAt = at + 4;
  const lengthAt = keyAt + keyLen;
  const valueLen = readU32(view, lengthAt);
  if (bounds !== undefined && valueLen > bounds.valueBytesMax) malformedChanges(code, who, `"${text(view, keyAt, lengthAt, 'utf8')}" has ${valueLen} bytes (at most ${bounds.valueBytesMax})`);
  if (end - lengthAt - 4 < valueLen) malformedChanges(code, who, 'is truncated');
  entryKeyAt = keyAt;
  entryKeyLen = keyLen;
  entryValueAt = lengthAt + 4;
  entryValueLen = valueLen;
  return entryValueAt + valueLen;
}

/** Distinct keys remembered by keyText; past this many the memory starts over (plugins set a handful of fixed keys). */
export const KEY_TEXT_CACHE_ENTRIES_MAX = 1024;
/** Keys longer than this are decoded each time (never cached). */
const KEY_TEXT_CACHE_BYTES_MAX = 64;
const keyTexts = new Map<number, string>();

/** The UTF-8 length of the key keyText returned last: its bytes, unless decoding changed them (U+FFFD for invalid bytes). */
let keyTextBytes = 0;
/** Whether the key keyText returned last is exactly its bytes (ASCII); false when not known to be. */
let keyTextExact = false;
/** A hash of the key keyText returned last, when keyTextExact (equal keys, equal hashes). */
let keyTextHash = 0;

/** view[start, end) decoded as UTF-8, with keyTextBytes set to what the text takes. */
function utf8Key(view: Uint8Array, start: number, end: number): string {
  const decoded = text(view, start, end, 'utf8');
  keyTextBytes = Buffer.byteLength(decoded, 'utf8');
  keyTextExact = false;
  return decoded;
}

/**
 * The key at view[start, end) as text. The keys plugins set repeat event
 * after event, so short ASCII keys are remembered by a hash of their bytes
 * (checked byte by byte on a hit): a hit costs no decoding and gives the
 * same string each time, which V8 then finds faster as a property or map key.
 * Sets keyTextBytes.
 */
function keyText(view: Uint8Array, start: number, end: number): string {
  const length = end - start;
  if (length > KEY_TEXT_CACHE_BYTES_MAX) return utf8Key(view, start, end);
  let hash = length;
  for (let i = start; i < end; i++) {
    const byte = view[i]!;
    if (byte >= 0x80) return utf8Key(view, start, end);
    hash = (Math.imul(hash, 31) + byte) | 0;
  }
  keyTextBytes = length;
  keyTextExact = true;
  keyTextHash = hash;
  const known = keyTexts.get(hash);
  if (known !== undefined && known.length === length) {
    let same = true;
    for (let i = 0; i < length; i++) {
      if (known.charCodeAt(i) !== view[start + i]) {
        same = false;
        break;
      }
    }
    if (same) return known;
  }
  const decoded = text(view, start, end, 'latin1');
  if (keyTexts.size >= KEY_TEXT_CACHE_ENTRIES_MAX) keyTexts.clear();
  keyTexts.set(hash, decoded);
  return decoded;
}

/** Up to this many bytes a value is copied byte by byte in JS: cheaper than a call into TypedArray#set. */
const INLINE_COPY_BYTES_MAX = 32;

/**
 * source[start, start + length) copied into a Buffer of its own (Buffers,
 * like every value the host hands out: callers print them with String()).
 * Measured here: about 45 ns for a short value, where slicing a Buffer (its
 * subclass constructor) took 100 and more.
 */
export function copyBytes(source: Uint8Array, start: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  copyInto(source, start, length, out, 0);
  return out;
}

/** source[start, start + length) copied into `target` at `at` (which must have room). */
export function copyInto(source: Uint8Array, start: number, length: number, target: Uint8Array, at: number): void {
  if (length <= INLINE_COPY_BYTES_MAX) {
    for (let i = 0; i < length; i++) target[at + i] = source[start + i]!;
  } else {
    // A plain Uint8Array view: Buffer#subarray goes through Buffer's subclass constructor, at about twice the cost.
    target.set(new Uint8Array(source.buffer, source.byteOffset + start, length), at);
  }
}

/**
 * Up to this many entries, a block of changes is checked for a key given
 * twice (pair by pair, by the keys' hashes first), and may be taken into
 * the change log whole (HookContext.applyPluginBlock); a larger block goes
 * entry by entry.
 */
export const CHANGE_BLOCK_ENTRIES_MAX = 32;

/** The entries of one block applyChanges may take whole, reused from call to call (module state: no allocation per call). */
const blockKeys: string[] = [];
const blockHashes: number[] = [];
const blockKeyBytes: number[] = [];
const blockValueAt: number[] = [];
const blockValueLen: number[] = [];

/**
 * Applies a plugin's encoded changes, view[start, start + length), to
 * `context`. Every length is checked against the bytes present and, with
 * `bounds`, against the bounds, before anything is applied: a plugin's
 * memory is not trusted to be well formed. Violations throw `code`. The
 * source is reused by the next call (a scratch buffer, the guest's memory):
 * what is kept is copied out of it. Usually every key is new to the event
 * and the block goes into the context's change log as it lies, in one copy
 * (HookContext.applyPluginBlock); a key set again, a key repaired by
 * decoding, a key given twice or a block of more than
 * CHANGE_BLOCK_ENTRIES_MAX entries goes entry by entry
 * (HookContext.applyPluginEntry).
 */
export function applyChanges(view: Uint8Array, start: number, length: number, context: HookContext, bounds: WireBounds | undefined, code: ErrorCode, who: string): void {
  if (length === 0) return;
  if (start < 0 || length < 0 || start + length > view.byteLength) throw hostError(code, `${who}: changed metadata claims ${length} bytes at ${start} of ${view.byteLength}`);
  const end = start + length;
  let count = 0;
  let whole = true;
  for (let at = start; at < end; count++) {
    at = nextEntry(view, at, end, count + 1, bounds, code, who);
    if (!whole) continue;
    if (count === CHANGE_BLOCK_ENTRIES_MAX) {
      whole = false;
      continue;
    }
    const key = keyText(view, entryKeyAt, entryKeyAt + entryKeyLen);
    if (!keyTextExact) whole = false;
    // A key given twice has the same hash: only those are compared as text.
    for (let i = 0; i < count && whole; i++) if (blockHashes[i] === keyTextHash && blockKeys[i] === key) whole = false;
    blockHashes[count] = keyTextHash;
    blockKeys[count] = key;
    blockKeyBytes[count] = keyTextBytes;
    blockValueAt[count] = entryValueAt;
    blockValueLen[count] = entryValueLen;
  }
  if (whole && context.applyPluginBlock(view, start, length, count, blockKeys, blockKeyBytes, blockValueAt, blockValueLen)) return;
  for (let at = start, index = 1; at < end; index++) {
    at = nextEntry(view, at, end, index, bounds, code, who);
    // Bounded by what the key decoded to: bytes that are not valid UTF-8 become U+FFFD, three bytes each.
    const key = keyText(view, entryKeyAt, entryKeyAt + entryKeyLen);
    context.applyPluginEntry(key, keyTextBytes, keyTextExact, view, entryKeyAt - 4, entryValueAt, entryValueLen);
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
    const keyLen = writeText(target, key, at + 4);
    writeU32(target, keyLen, at);
    at += 4 + keyLen;
    const bytes = bytesOf(value);
    writeU32(target, bytes.byteLength, at);
    target.set(bytes, at + 4);
    at += 4 + bytes.byteLength;
  }
  return at - offset;
}

/**
 * Encodes `entries` (a plugin's changes, or changes a copy has not seen) into
 * a fresh buffer; `transferable` gives it an ArrayBuffer of its own (not a
 * slice of Node's pool), to be moved to another thread.
 */
export function encodeEntries(entries: Iterable<readonly [string, MetadataValue]>, transferable = false): Buffer {
  const list = [...entries];
  const bytes = encodedLength(list);
  const out = transferable ? Buffer.allocUnsafeSlow(bytes) : Buffer.allocUnsafe(bytes);
  writeEntries(list, out, 0);
  return out;
}

/**
 * What a copy of `context` must receive, as one contiguous wire text: the
 * event's encoding followed by every change made since, both already
 * encoded (later entries replace earlier ones on load). Checked against
 * `bounds` first. `copyWire` writes it.
 */
export function wireSize(context: HookContext, bounds: WireBounds | undefined, who: string): { changes: ChangeLog; bytes: number } {
  const { base } = context;
  if (bounds) {
    if (base.count > bounds.keysMax) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: ${base.count} metadata keys, at most ${bounds.keysMax} may be copied in`);
    if (base.keyBytesMax > bounds.keyBytesMax || base.valueBytesMax > bounds.valueBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `${who}: metadata "${base.largestKey}" (${base.valueBytesMax} bytes) is over the bound copied in (${bounds.valueBytesMax} bytes, keys ${bounds.keyBytesMax})`);
    }
  }
  const changes = context.encodedChanges();
  if (bounds && changes.length > 0) {
    // Entries on the wire: a change of one of the event's keys is a second entry for it.
    const keys = base.count + changes.encoded;
    if (keys > bounds.keysMax) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: ${keys} metadata keys, at most ${bounds.keysMax} may be copied in`);
    if (changes.keyBytesMax > bounds.keyBytesMax || changes.valueBytesMax > bounds.valueBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `${who}: metadata "${changes.largestKey}" (${changes.valueBytesMax} bytes) is over the bound copied in (${bounds.valueBytesMax} bytes, keys ${bounds.keyBytesMax})`);
    }
  }
  return { changes, bytes: base.byteLength + changes.length };
}

/**
 * Writes what wireSize measured into `target` at `offset`: the event's bytes,
 * then the change log. Without `withTail`, the event's tail (its body) is
 * left out, the change log following its length (a lazy load, which copies
 * the tail in only when read).
 */
export function copyWire(context: HookContext, changes: ChangeLog, target: Uint8Array, offset = 0, withTail = true): void {
  const written = context.base.copyTo(target, offset, withTail);
  // A plain Uint8Array view: Buffer#subarray goes through Buffer's subclass constructor, at about twice the cost.
  const log = changes.bytes;
  if (changes.length > 0) target.set(new Uint8Array(log.buffer, log.byteOffset, changes.length), offset + written);
}
