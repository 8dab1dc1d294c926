import { hookValue, isHookName, type HookName } from '../abi/hooks.js';
import { hostError } from '../errors.js';
import { EMPTY_METADATA, copyBytes, copyInto, encodeFields, writeEntries, type EncodedMetadata, type MetadataFields } from './metadata-wire.js';

export type MetadataValue = string | Uint8Array;

/** Bounds on a context's metadata, enforced on every set (host or plugin). */
export interface MetadataLimits {
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly keysMax: number;
}

export const DEFAULT_METADATA_LIMITS: MetadataLimits = Object.freeze({
  keyBytesMax: 256,
  valueBytesMax: 64 * 1024 * 1024,
  keysMax: 1024,
});

/** A key set after the event's keys were encoded, with the context version it was set at. */
interface Change {
  /** null: the value is still only in the change log, `length` bytes at `at` of `logBytes` (valueOf makes it a Buffer). */
  value: MetadataValue | null;
  readonly version: number;
  /** Set by a plugin (what a later stage inherits), not by the host. */
  readonly byPlugin: boolean;
  readonly logBytes: Buffer | null;
  readonly at: number;
  readonly length: number;
}

/**
 * The log's buffer, grown to hold `length` bytes (doubling). A grown log
 * moves to a new buffer: values already in the log keep pointing into the
 * old one, which nothing writes again.
 */
function reserve(log: ChangeLog, length: number): Buffer {
  if (length <= log.bytes.length) return log.bytes;
  const bytes = Buffer.allocUnsafe(Math.max(length, log.bytes.length * 2, CHANGE_LOG_BYTES_MIN));
  if (log.length > 0) log.bytes.copy(bytes, 0, 0, log.length);
  log.bytes = bytes;
  return bytes;
}

/** A change's value: a plugin's value appended to the change log as it came is made a Buffer (a view of the log) when first read. */
function valueOf(change: Change): MetadataValue {
  if (change.value === null) {
    const log = change.logBytes!;
    change.value = Buffer.from(log.buffer, log.byteOffset + change.at, change.length);
  }
  return change.value;
}

/** The changes of a context in the wire format (`bytes` up to `length`), with the bounds a copy is checked against. */
export interface ChangeLog {
  bytes: Buffer;
  length: number;
  /** How many entries (distinct keys) are encoded. */
  encoded: number;
  keyBytesMax: number;
  valueBytesMax: number;
  largestKey: string;
}

/**
 * A backend whose own copy of a context holds changes not copied back yet
 * (a native context): collect() copies them back. See HookContext.deferChanges.
 */
export interface PendingChanges {
  collect(context: HookContext): void;
}

/** A new change log's buffer until its first entry: nothing is written to it. */
const NO_BYTES = Buffer.alloc(0);
const EMPTY_CHANGE_LOG: ChangeLog = Object.freeze({ bytes: NO_BYTES, length: 0, encoded: 0, keyBytesMax: 0, valueBytesMax: 0, largestKey: '' });
/** A change log starts at this size and doubles: a few short keys set per event fit without growing. */
const CHANGE_LOG_BYTES_MIN = 256;

function byteLength(value: MetadataValue): number {
  return typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength;
}

const utf8 = new TextDecoder();
let nextContextId = 1;

/** A finished event's plugin changes (HookContext.pluginChangeSet): read anew at each `list()`. */
export interface PluginChangeSet {
  list(): [string, MetadataValue][];
}

/**
 * The context of one hook event: the hook, the cancel flag and the metadata
 * (binary-safe byte strings by key). The host's keys arrive encoded once
 * (`base`, shared by every plugin of the event); what is set afterwards, by
 * the host or a plugin, is kept as changes, each stamped with the version it
 * made, so that a backend holding a copy is sent only what it has not seen.
 * One context runs through the whole plugin chain: what one plugin sets the
 * next one reads.
 */
export class HookContext {
  readonly hook: HookName;
  readonly hookValue: number;
  readonly limits: MetadataLimits;
  /** Set by a plugin (or by the host) to cancel the operation. */
  cancel = false;
  /** Identifies this context to backends that cache a copy of it. */
  readonly id = nextContextId++;
  /** The host's keys, encoded once. */
  readonly base: EncodedMetadata;
  #changes: Map<string, Change> | null = null;
  #version = 0;
  /** #changes encoded (null: encode them all again at the next ask). */
  #log: ChangeLog | null = null;
  /** Keys added (never set before) since #log was last encoded, in order: what the next ask appends, without walking #changes. */
  #unencoded: [string, MetadataValue][] | null = null;
  /** A backend holding changes not copied back yet: collected before anything reads or changes the context. */
  #pending: PendingChanges | null = null;

  constructor(hook: HookName, limits: MetadataLimits = DEFAULT_METADATA_LIMITS, base: EncodedMetadata = EMPTY_METADATA) {
    if (!isHookName(hook)) throw hostError('SMTP_E_HOOK_UNKNOWN', `unknown hook "${String(hook)}"`);
    this.hook = hook;
    this.hookValue = hookValue(hook);
    this.limits = limits;
    this.base = base;
  }

  /**
   * The host's context for an event: `fields` encoded once (undefined values
   * skipped), `tailKey`'s value (the message body) referenced, not copied.
   * The host's own keys are not bound-checked: they are bounded by config.
   */
  static of(hook: HookName, fields: MetadataFields, tailKey?: string, limits: MetadataLimits = DEFAULT_METADATA_LIMITS): HookContext {
    return new HookContext(hook, limits, encodeFields(fields, tailKey));
  }

  /** Bumped by every change: a copy made at an older version is stale. */
  get version(): number {
    this.settle();
    return this.#version;
  }

  /**
   * Leaves the changes `source` made in its own copy there until the context
   * is next read or changed (every method here collects them first). A chain
   * of native plugins sharing one native copy then copies their keys back
   * once, at the end, instead of once per plugin.
   */
  deferChanges(source: PendingChanges): void {
    if (this.#pending !== source) this.settle();
    this.#pending = source;
  }

  /** Whether `source`'s copy holds changes not collected yet: then it is the newest state of this context. */
  pendingFrom(source: PendingChanges): boolean {
    return this.#pending === source;
  }

  /** Collects the changes a backend still holds (deferChanges); a collection that fails throws, as the backend's call would have. */
  settle(): void {
    const pending = this.#pending;
    if (pending === null) return;
    this.#pending = null;
    pending.collect(this);
  }

  /** Sets a key as the host (checked against the limits). */
  setMetadata(key: string, value: MetadataValue): void {
    this.settle();
    this.#check(key, value);
    this.#set(key, value, false);
  }

  /** Applies a plugin's set (checked against the limits), copied back by a backend; `keyBytes`: the key's UTF-8 length when the caller knows it. */
  applyPluginChange(key: string, value: Uint8Array, keyBytes = Buffer.byteLength(key, 'utf8')): void {
    this.#check(key, value, keyBytes);
    this.#set(key, value, true);
  }

  /**
   * Applies one entry of a plugin's encoded changes as it lies in `source`
   * (its key length at `entryAt`, its value `valueBytes` bytes at
   * `valueAt`), checked against the limits. `key` is its key as text, of
   * `keyBytes` UTF-8 bytes; `exactKey`: the key's bytes in `source` are
   * exactly `key` in UTF-8 (not true of bytes that decoding repaired).
   * A key not set before is appended to the change log as the plugin
   * wrote it, and its value stays there until something reads it: the
   * next sandboxed plugin takes the log as it is, so the value is copied
   * once instead of into a Buffer of its own and then encoded again
   * (about 150 ns per change, measured with 16 sandboxed plugins in one
   * process). The source is reused by the next call: nothing points into it.
   */
  applyPluginEntry(key: string, keyBytes: number, exactKey: boolean, source: Uint8Array, entryAt: number, valueAt: number, valueBytes: number): void {
    this.#checkBytes(key, keyBytes, valueBytes);
    const changes = this.#changes;
    // Appended only to a log that is current or has nothing to encode: after a key set again (the
    // log dropped, #set) the log is rebuilt once, at the next copy in, not at each new key.
    // A repaired key is written from its text.
    if (!exactKey || (changes !== null && (changes.has(key) || (this.#log === null && changes.size > 0)))) {
      this.#set(key, copyBytes(source, valueAt, valueBytes), true);
      return;
    }
    const log = this.#currentLog();
    const entryBytes = valueAt + valueBytes - entryAt;
    const bytes = reserve(log, log.length + entryBytes);
    const at = log.length;
    copyInto(source, entryAt, entryBytes, bytes, at);
    this.#changes!.set(key, { value: null, version: ++this.#version, byPlugin: true, logBytes: bytes, at: at + (valueAt - entryAt), length: valueBytes });
    log.length = at + entryBytes;
    log.encoded++;
    if (keyBytes > log.keyBytesMax) log.keyBytesMax = keyBytes;
    if (valueBytes > log.valueBytesMax) {
      log.valueBytesMax = valueBytes;
      log.largestKey = key;
    }
  }

  /**
   * Applies a whole block of a plugin's changes, source[start, start +
   * length) in the wire format, when every one of its `count` keys is new to
   * this context and the change log is current: the block is appended to the
   * log in one copy, each value staying there as in applyPluginEntry.
   * `keys[i]` is entry i's key, exactly its bytes (ASCII or valid UTF-8, no
   * key twice), of `keyBytes[i]` bytes, its value `valueBytes[i]` bytes at
   * `valueAt[i]` of `source`. Every entry is checked against the limits
   * before any is applied. Returns false, having changed nothing, when the
   * block must go entry by entry: a key set before, a log to rebuild, or a
   * key count near keys_max (applyPluginEntry checks it exactly). One copy
   * of the block instead of one per entry: a byte loop over a 20-byte entry
   * cost about 80 ns here, about a quarter of applying it.
   */
  applyPluginBlock(source: Uint8Array, start: number, length: number, count: number, keys: readonly string[], keyBytes: readonly number[], valueAt: readonly number[], valueBytes: readonly number[]): boolean {
    const changes = this.#changes;
    const changed = changes === null ? 0 : changes.size;
    if (changed > 0 && this.#log === null) return false;
    if (this.base.count + changed + count >= this.limits.keysMax) return false;
    if (changes !== null) for (let i = 0; i < count; i++) if (changes.has(keys[i]!)) return false;
    for (let i = 0; i < count; i++) this.#checkBytes(keys[i]!, keyBytes[i]!, valueBytes[i]!);
    const log = this.#currentLog();
    const bytes = reserve(log, log.length + length);
    const at = log.length;
    copyInto(source, start, length, bytes, at);
    const map = this.#changes!;
    for (let i = 0; i < count; i++) {
      const key = keys[i]!;
      const valueLength = valueBytes[i]!;
      map.set(key, { value: null, version: ++this.#version, byPlugin: true, logBytes: bytes, at: at + (valueAt[i]! - start), length: valueLength });
      if (keyBytes[i]! > log.keyBytesMax) log.keyBytesMax = keyBytes[i]!;
      if (valueLength > log.valueBytesMax) {
        log.valueBytesMax = valueLength;
        log.largestKey = key;
      }
    }
    log.length = at + length;
    log.encoded += count;
    return true;
  }

  #set(key: string, value: MetadataValue, byPlugin: boolean): void {
    const changes = (this.#changes ??= new Map());
    const replaced = changes.delete(key); // re-inserted last: changes stay in version order
    changes.set(key, { value, version: ++this.#version, byPlugin, logBytes: null, at: 0, length: 0 });
    // A copy counts wire entries against its key limit: the log holds each key once, so a key set
    // again has it rebuilt (a context reused for many calls would otherwise grow it forever).
    if (replaced) {
      this.#log = null;
      this.#unencoded = null;
    } else if (this.#log !== null) (this.#unencoded ??= []).push([key, value]);
  }

  /**
   * Every key changed so far in the wire format, once each with its latest
   * value, in the order set. Encoded once and appended to as new keys come
   * (a key set again rebuilds it): each copy of the context (one per
   * sandboxed instance) takes these bytes as they are.
   */
  encodedChanges(): ChangeLog {
    this.settle();
    return this.#changes === null ? EMPTY_CHANGE_LOG : this.#currentLog();
  }

  /** The change log brought up to date with every change (made empty when there is none). */
  #currentLog(): ChangeLog {
    // Usually current already (every new key appended as it came): asked once or twice per plugin call.
    if (this.#log !== null && this.#unencoded === null) return this.#log;
    const changes = (this.#changes ??= new Map());
    let log = this.#log;
    let fresh: [string, MetadataValue][];
    if (log === null) {
      log = this.#log = { bytes: NO_BYTES, length: 0, encoded: 0, keyBytesMax: 0, valueBytesMax: 0, largestKey: '' };
      fresh = [];
      for (const [key, change] of changes) fresh.push([key, valueOf(change)]);
    } else {
      // Walking #changes to skip the encoded keys made a chain of n sandboxed plugins cost n^2 steps.
      fresh = this.#unencoded ?? [];
    }
    this.#unencoded = null;
    if (fresh.length > 0) {
      let length = log.length;
      for (const [key, value] of fresh) {
        const keyBytes = Buffer.byteLength(key, 'utf8');
        const valueBytes = byteLength(value);
        length += 8 + keyBytes + valueBytes;
        if (keyBytes > log.keyBytesMax) log.keyBytesMax = keyBytes;
        if (valueBytes > log.valueBytesMax) {
          log.valueBytesMax = valueBytes;
          log.largestKey = key;
        }
      }
      writeEntries(fresh, reserve(log, length), log.length);
      log.length = length;
      log.encoded = changes.size;
    }
    if (log.encoded !== changes.size) throw new Error(`change log holds ${log.encoded} keys of ${changes.size}`);
    return log;
  }

  /** Whether `key` is set, without making its value a Buffer. */
  #has(key: string): boolean {
    return this.#changes?.has(key) === true || this.base.value(key) !== undefined;
  }

  #raw(key: string): MetadataValue | undefined {
    this.settle();
    const change = this.#changes?.get(key);
    return change !== undefined ? valueOf(change) : this.base.value(key);
  }

  /** A key as set after the event was encoded (by a plugin, or the host), as text; undefined when it was not. */
  changed(key: string): string | undefined {
    this.settle();
    const change = this.#changes?.get(key);
    const value = change === undefined ? undefined : valueOf(change);
    return value === undefined || typeof value === 'string' ? value : utf8.decode(value);
  }

  /** The value as UTF-8 text (invalid bytes become U+FFFD), or undefined. */
  getMetadata(key: string): string | undefined {
    const value = this.#raw(key);
    return value === undefined || typeof value === 'string' ? value : utf8.decode(value);
  }

  /** The value as bytes, or undefined. */
  getMetadataBytes(key: string): Uint8Array | undefined {
    const value = this.#raw(key);
    return typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  }

  hasMetadata(key: string): boolean {
    return this.#raw(key) !== undefined;
  }

  /** Every key and its raw value: the event's keys (as changed), then keys added since. */
  *entries(): IterableIterator<[string, MetadataValue]> {
    this.settle();
    const fields = this.base.fields;
    for (const key in fields) {
      const value = this.#raw(key);
      if (value !== undefined) yield [key, value];
    }
    if (this.#changes === null) return;
    for (const [key, change] of this.#changes) if (fields[key] === undefined) yield [key, valueOf(change)];
  }

  /** Distinct keys: the event's and those set since that it lacks (counted when asked: only near keys_max, and for printing). */
  get size(): number {
    this.settle();
    let size = this.base.count;
    if (this.#changes !== null) for (const key of this.#changes.keys()) if (this.base.value(key) === undefined) size++;
    return size;
  }

  /** Every key as text: what `plugin call` prints. */
  toJSON(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [key] of this.entries()) out[key] = this.getMetadata(key)!;
    return out;
  }

  /** Keys set after `version` (by the host or plugins), oldest first, with their values. */
  *changesSince(version: number): IterableIterator<[string, MetadataValue]> {
    this.settle();
    if (this.#changes === null || version >= this.#version) return;
    for (const [key, change] of this.#changes) if (change.version > version) yield [key, valueOf(change)];
  }

  /**
   * The keys plugins set during this event, read when iterated (again each
   * time), holding neither the event's keys nor its body: what a message's
   * later stages carry (src/server/carried-keys.ts). For a finished event,
   * whose changes no longer change.
   */
  pluginChangeSet(): PluginChangeSet {
    this.settle();
    const changes = this.#changes;
    // An array, not a generator: a generator's object and its steps cost about 5 us per message at message_stored (CPU profile of the durable native chain).
    const list = (): [string, MetadataValue][] => {
      const entries: [string, MetadataValue][] = [];
      changes?.forEach((change, key) => {
        if (change.byPlugin) entries.push([key, valueOf(change)]);
      });
      return entries;
    };
    return { list };
  }

  /** The keys plugins set during this event, with their values. */
  pluginChanges(): IterableIterator<[string, MetadataValue]> {
    return this.pluginChangeSet().list()[Symbol.iterator]();
  }

  #check(key: string, value: MetadataValue, keyBytes = Buffer.byteLength(key, 'utf8')): void {
    this.#checkBytes(key, keyBytes, typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength);
  }

  #checkBytes(key: string, keyBytes: number, valueBytes: number): void {
    if (keyBytes === 0 || keyBytes > this.limits.keyBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `metadata key of ${keyBytes} bytes (allowed 1 to ${this.limits.keyBytesMax})`);
    }
    if (valueBytes > this.limits.valueBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `metadata "${key}" of ${valueBytes} bytes (at most ${this.limits.valueBytesMax})`);
    }
    // The event's keys plus every key set bound the count from above: the exact count (a lookup in
    // the event's keys per change) is paid only near keys_max. Kept as a counter, it cost a lookup
    // per set: about 130 ns per sandboxed plugin call in a busy server.
    if (this.base.count + (this.#changes?.size ?? 0) >= this.limits.keysMax && !this.#has(key) && this.size >= this.limits.keysMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `more than ${this.limits.keysMax} metadata keys`);
    }
  }
}
