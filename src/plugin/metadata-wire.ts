import { hostError, type ErrorCode } from '../errors.js';
import type { HookContext } from './hook-context.js';

/**
 * The wire format in which metadata crosses into and out of a plugin's
 * store (abi/zig/metadata_host.zig loadEncoded / takeChanges): repeated
 * [u32 key_len][key][u32 value_len][value], little endian.
 */

/** Bounds checked on each side of the boundary. */
export interface WireBounds {
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly keysMax: number;
}

let scratch = Buffer.allocUnsafe(64 * 1024);

/** A reusable buffer of at least `bytes` (valid until the next call). */
export function scratchBuffer(bytes: number): Buffer {
  if (scratch.length < bytes) scratch = Buffer.allocUnsafe(Math.max(bytes, scratch.length * 2));
  return scratch;
}

/**
 * Encodes every key of `context` into the scratch buffer; returns the bytes
 * used. With `bounds`, a key or value over a bound is SMTP_E_METADATA_LIMIT.
 */
export function encodeMetadata(context: HookContext, bounds?: WireBounds, who = 'plugin'): { buf: Buffer; length: number } {
  if (bounds && context.size > bounds.keysMax) {
    throw hostError('SMTP_E_METADATA_LIMIT', `${who}: ${context.size} metadata keys, at most ${bounds.keysMax} may be copied in`);
  }
  let bytes = 0;
  for (const [key, value] of context.entries()) {
    const keyLen = Buffer.byteLength(key, 'utf8');
    const valueLen = typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength;
    if (bounds && (keyLen > bounds.keyBytesMax || valueLen > bounds.valueBytesMax)) {
      throw hostError('SMTP_E_METADATA_LIMIT', `${who}: metadata "${key}" (${valueLen} bytes) is over the bound copied in (${bounds.valueBytesMax} bytes, keys ${bounds.keyBytesMax})`);
    }
    bytes += 8 + keyLen + valueLen;
  }
  const buf = scratchBuffer(bytes);
  let at = 0;
  for (const [key, value] of context.entries()) {
    const keyLen = buf.write(key, at + 4, 'utf8');
    buf.writeUInt32LE(keyLen, at);
    at += 4 + keyLen;
    if (typeof value === 'string') {
      const valueLen = buf.write(value, at + 4, 'utf8');
      buf.writeUInt32LE(valueLen, at);
      at += 4 + valueLen;
    } else {
      buf.writeUInt32LE(value.byteLength, at);
      buf.set(value, at + 4);
      at += 4 + value.byteLength;
    }
  }
  return { buf, length: at };
}

/**
 * Applies encoded changes to `context`. Every length is checked against the
 * bytes present and, with `bounds`, against the bounds: a plugin's memory is
 * not trusted to be well formed. Violations throw `code`.
 */
export function applyChanges(bytes: Uint8Array, length: number, context: HookContext, bounds: WireBounds | undefined, code: ErrorCode, who: string, asPluginChange = true): void {
  const view = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
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
    // A copy (pooled for small values): the source is reused by the next call.
    const value = Buffer.allocUnsafe(valueLen);
    view.copy(value, 0, at + 4, at + 4 + valueLen);
    if (asPluginChange) context.applyPluginChange(key, value);
    else context.setMetadata(key, value);
    at += 4 + valueLen;
  }
}

/** Encodes `entries` (a plugin's changes) into a fresh buffer. */
export function encodeEntries(entries: Iterable<[string, string | Uint8Array]>): Uint8Array {
  const parts: Buffer[] = [];
  for (const [key, value] of entries) {
    const keyBytes = Buffer.from(key, 'utf8');
    const valueBytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32LE(keyBytes.length);
    const mid = Buffer.allocUnsafe(4);
    mid.writeUInt32LE(valueBytes.byteLength);
    parts.push(head, keyBytes, mid, Buffer.from(valueBytes.buffer, valueBytes.byteOffset, valueBytes.byteLength));
  }
  return new Uint8Array(Buffer.concat(parts));
}
