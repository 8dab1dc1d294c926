import { describe, expect, it } from 'vitest';
import { HookContext, type MetadataValue } from '../../src/plugin/hook-context.js';
import { applyChanges, CHANGE_BLOCK_ENTRIES_MAX, copyWire, ENCODE_SCRATCH_BYTES, encodeEntries, encodeFields, wireMetadata, wireSize } from '../../src/plugin/metadata-wire.js';

/** Decoded values are bytes: as text, to compare. */
const text = (fields: Record<string, unknown>): Record<string, string> => Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, Buffer.from(v as Uint8Array).toString()]));

describe('encoded metadata (one encoding per event, shared by every plugin)', () => {
  const session = encodeFields({ session_id: 's1', remote_ip: '127.0.0.1' });
  const body = Buffer.from('Subject: hi\r\n\r\nbody bytes');

  it('starts a message event with the session keys and keeps the body as an uncopied tail', () => {
    const event = encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session);
    expect(event.tail).toBe(body);
    expect(event.count).toBe(4);
    const decoded = wireMetadata(Buffer.concat([event.head, event.tail!]));
    expect(text(decoded.fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org', message_body: body.toString() });
  });

  it('gives each encoding bytes of its own at their exact length, small (written through a shared scratch) or large: a later event never changes an earlier one', () => {
    const first = encodeFields({ sender: 'a@example.org', subject: 'héllo' }, undefined, session);
    const firstBytes = Buffer.from(first.head);
    const large = encodeFields({ header_from: 'x'.repeat(ENCODE_SCRATCH_BYTES) }, undefined, session);
    const second = encodeFields({ sender: 'b@example.net', subject: 'other' }, undefined, session);
    expect(first.head).toEqual(firstBytes);
    expect(text(first.fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org', subject: 'héllo' });
    expect(text(wireMetadata(first.head).fields)).toEqual(text(first.fields));
    expect(text(wireMetadata(second.head).fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'b@example.net', subject: 'other' });
    // 8 bytes of lengths per key: exactly what the keys take, no slack behind them.
    const keyBytes = (fields: Record<string, string>): number => Object.entries(fields).reduce((sum, [k, v]) => sum + 8 + Buffer.byteLength(k) + Buffer.byteLength(v), 0);
    expect(first.head.length).toBe(keyBytes({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org', subject: 'héllo' }));
    expect(large.head.length).toBe(keyBytes({ session_id: 's1', remote_ip: '127.0.0.1', header_from: 'x'.repeat(ENCODE_SCRATCH_BYTES) }));
    expect(text(wireMetadata(large.head).fields).header_from).toHaveLength(ENCODE_SCRATCH_BYTES);
  });

  it('merges the session keys into its fields once: every read is the same object, however many plugins read it', () => {
    const event = encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session);
    const first = event.fields;
    expect(first).toMatchObject({ session_id: 's1', sender: 'a@example.org' });
    for (let call = 0; call < 16; call++) expect(event.fields === first).toBe(true);
  });

  it('drops the body for message_stored without re-encoding the other keys', () => {
    const event = encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session);
    const stored = event.withoutTail();
    expect(stored.tail).toBeNull();
    expect(stored.head.buffer).toBe(event.head.buffer);
    expect(text(wireMetadata(stored.head).fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org' });
    // Its bounds, measured when a bounded copy asks: the body no longer counts.
    expect(event.valueBytesMax).toBe(body.length);
    expect([stored.keyBytesMax, stored.valueBytesMax, stored.largestKey]).toEqual(['session_id'.length, 'a@example.org'.length, 'sender']);
  });

  it('gives message_stored\'s view the keys it holds, taken from the event\'s (no body, and no key the encoding skipped)', () => {
    const event = encodeFields({ sender: 'a@example.org', subject: undefined, message_body: body }, 'message_body', session);
    const stored = event.withoutTail();
    expect(text(stored.fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org' });
    expect(text(stored.fields)).toEqual(text(wireMetadata(stored.head).fields));
    expect(stored.fields.message_body).toBeUndefined();
    // One key at a time, before any fields are built: the same answers.
    for (const encoding of [encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session), event]) {
      const view = encoding.withoutTail();
      for (const key of ['session_id', 'sender', 'message_body', 'subject', 'absent']) {
        const one = (value: MetadataValue | undefined): string | undefined => (value === undefined ? undefined : Buffer.from(value).toString());
        expect(one(view.value(key))).toBe(one(view.fields[key]));
        expect(one(encoding.value(key))).toBe(one(encoding.fields[key]));
      }
    }
    // A view of bytes that came without fields (from another thread) decodes them.
    const fromWire = wireMetadata(Buffer.concat([event.head, event.tail!]));
    expect(fromWire.fields.message_body).toBeDefined();
  });

  it('encodes a context\'s changes once, appending new keys; a key set again is rebuilt into one entry', () => {
    const context = new HookContext('message_filtered', undefined, encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session));
    context.applyPluginChange('score', Buffer.from('3'));
    context.applyPluginChange('sender', Buffer.from('b@example.org'));
    const first = context.encodedChanges();
    expect(first.encoded).toBe(2);
    context.applyPluginChange('verdict', Buffer.from('ham'));
    expect(context.encodedChanges()).toBe(first); // appended to, not re-encoded
    expect(first.encoded).toBe(3);
    context.applyPluginChange('score', Buffer.from('7'));
    expect(context.encodedChanges().encoded).toBe(3); // still one entry per key
    for (let i = 0; i < 300; i++) context.applyPluginChange('score', Buffer.from(String(i)));
    expect(context.encodedChanges().encoded).toBe(3);
    // Two new keys over the four the event had (sender replaced is still one).
    expect(context.size).toBe(6);
    const { changes, bytes } = wireSize(context, { keyBytesMax: 64, valueBytesMax: 1 << 20, keysMax: 8 }, 'test');
    const copy = Buffer.alloc(bytes);
    copyWire(context, changes, copy);
    expect(text(wireMetadata(copy).fields)).toMatchObject({ sender: 'b@example.org', score: '299', verdict: 'ham', session_id: 's1' });
    // A copy's key limit counts wire entries: the four event keys and the three changed.
    expect(() => wireSize(context, { keyBytesMax: 64, valueBytesMax: 1 << 20, keysMax: 6 }, 'test')).toThrow(expect.objectContaining({ code: 'SMTP_E_METADATA_LIMIT', message: expect.stringMatching(/7 metadata keys, at most 6/) }));
    // After a rebuild, a new key is appended again, and a copy made now carries every key with its latest value.
    context.applyPluginChange('late', Buffer.from('x'));
    expect(context.encodedChanges().encoded).toBe(4);
    context.applyPluginChange('later', Buffer.from('y'));
    context.applyPluginChange('verdict', Buffer.from('spam'));
    expect(context.encodedChanges().encoded).toBe(5);
    const again = wireSize(context, undefined, 'test');
    const copyAgain = Buffer.alloc(again.bytes);
    copyWire(context, again.changes, copyAgain);
    expect(text(wireMetadata(copyAgain).fields)).toMatchObject({ score: '299', verdict: 'spam', late: 'x', later: 'y' });
    const grown = new HookContext('command_validated', undefined, session);
    grown.applyPluginChange('note', Buffer.alloc(40));
    expect(() => wireSize(grown, { keyBytesMax: 64, valueBytesMax: 39, keysMax: 8 }, 'test')).toThrow(expect.objectContaining({ message: expect.stringMatching(/metadata "note" \(40 bytes\)/) }));
  });

  it('applies a plugin\'s changes as copies, decodes every key exactly (UTF-8 too) and refuses a malformed or oversized text', () => {
    const context = new HookContext('message_filtered');
    const wire = encodeEntries([['score', '3'], ['clé', 'x'], ['k'.repeat(80), 'long key'], ['score2', Buffer.from([0, 255])]]);
    applyChanges(wire, 0, wire.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'test');
    // The same key from another text comes back as the same key, with the new value.
    const again = encodeEntries([['score', '4']]);
    applyChanges(again, 0, again.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'test');
    wire.fill(0);
    again.fill(0);
    expect(context.toJSON()).toMatchObject({ score: '4', 'clé': 'x', ['k'.repeat(80)]: 'long key' });
    expect([...context.getMetadataBytes('score2')!]).toEqual([0, 255]);
    expect([...context.pluginChanges()].map(([key]) => key)).toEqual(['clé', 'k'.repeat(80), 'score2', 'score']);
    const bounds = { keyBytesMax: 8, valueBytesMax: 4, keysMax: 2 };
    const refused = (bytes: Buffer, length = bytes.length): string => {
      try {
        applyChanges(bytes, 0, length, new HookContext('message_filtered'), bounds, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
      } catch (error) {
        expect((error as { code?: string }).code).toBe('SMTP_E_WASM_BOUNDS');
        return (error as Error).message;
      }
      return 'accepted';
    };
    expect(refused(encodeEntries([['a', '1']]).subarray(0, 7))).toMatch(/is truncated/);
    expect(refused(encodeEntries([['a', '1']]), 99)).toMatch(/claims 99 bytes/);
    expect(refused(encodeEntries([['a', '12345']]))).toMatch(/"a" has 5 bytes \(at most 4\)/);
    expect(refused(encodeEntries([['longerkey', '1']]))).toMatch(/9-byte key/);
    expect(refused(encodeEntries([['a', '1'], ['b', '2'], ['c', '3']]))).toMatch(/more than 2 keys/);
  });

  it('appends a plugin\'s new keys to the change log as it wrote them: the next copy carries them, values stay readable as Buffers', () => {
    const context = new HookContext('message_filtered', undefined, encodeFields({ sender: 'a@example.org' }, undefined, session));
    const first: [string, MetadataValue][] = [['verdict', 'spam'], ['note', 'n'.repeat(40)], ['score', '7']];
    const memory = Buffer.alloc(4096, 0xee);
    const wrote = encodeEntries(first);
    wrote.copy(memory, 100);
    applyChanges(memory, 100, wrote.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
    memory.fill(0); // the guest's memory is reused by its next call
    const log = context.encodedChanges();
    expect(log.bytes.subarray(0, log.length).equals(wrote)).toBe(true);
    // Enough further keys to grow the log past its first buffer: what was read from the old one stays.
    const more: [string, MetadataValue][] = Array.from({ length: 30 }, (_, i) => [`key_${i}`, `value number ${i}`]);
    const wroteMore = encodeEntries(more);
    wroteMore.copy(memory, 7);
    const note = context.getMetadataBytes('note')!;
    applyChanges(memory, 7, wroteMore.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
    memory.fill(0);
    expect(Buffer.isBuffer(note) && note.toString()).toBe('n'.repeat(40));
    expect(Buffer.isBuffer(context.getMetadataBytes('key_29'))).toBe(true);
    expect(context.getMetadata('key_29')).toBe('value number 29');
    expect(context.getMetadata('verdict')).toBe('spam');
    const grown = context.encodedChanges();
    expect(grown.encoded).toBe(33);
    expect(grown.bytes.subarray(0, grown.length).equals(encodeEntries([...first, ...more]))).toBe(true);
    expect(context.size).toBe(3 + 33); // session_id, remote_ip, sender
    expect([...context.pluginChanges()].length).toBe(33);
    // A key whose bytes decoding repaired goes into the log as its text's UTF-8, not as the plugin's bytes
    // (F0 90 80 61 decodes to U+FFFD "a": as many bytes, different ones).
    const repaired = Buffer.from([4, 0, 0, 0, 0xf0, 0x90, 0x80, 0x61, 1, 0, 0, 0, 0x31]);
    const other = new HookContext('message_filtered');
    applyChanges(repaired, 0, repaired.length, other, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
    const otherLog = other.encodedChanges();
    expect(otherLog.bytes.subarray(0, otherLog.length).equals(encodeEntries([['\ufffda', '1']]))).toBe(true);
    expect(other.getMetadata('\ufffda')).toBe('1');
  });

  it('keeps the change log exact when a plugin sets a key again next to a new one, and after a host set', () => {
    const context = new HookContext('message_filtered');
    const apply = (entries: [string, MetadataValue][]): void => {
      const wrote = encodeEntries(entries);
      applyChanges(wrote, 0, wrote.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
      wrote.fill(0);
    };
    apply([['a', '1']]);
    const first = context.encodedChanges();
    apply([['a', '2'], ['b', '3']]);
    const rebuilt = context.encodedChanges();
    expect(rebuilt).not.toBe(first); // "a" set again: rebuilt, with each key once
    expect(rebuilt.bytes.subarray(0, rebuilt.length).equals(encodeEntries([['a', '2'], ['b', '3']]))).toBe(true);
    apply([['c', '4']]);
    context.setMetadata('host', 'h');
    apply([['d', '5']]);
    const log = context.encodedChanges();
    expect(log).toBe(rebuilt); // appended to since the rebuild
    expect(log.bytes.subarray(0, log.length).equals(encodeEntries([['a', '2'], ['b', '3'], ['c', '4'], ['host', 'h'], ['d', '5']]))).toBe(true);
    expect(context.toJSON()).toEqual({ a: '2', b: '3', c: '4', host: 'h', d: '5' });
  });

  it('applies a block of changes whole or not at all, and keeps the log exact for a key given twice, a key set before and a block past the whole-block size', () => {
    const wireOf = (context: HookContext): Buffer => {
      const log = context.encodedChanges();
      return Buffer.from(log.bytes.subarray(0, log.length));
    };
    const context = new HookContext('message_filtered', { keyBytesMax: 16, valueBytesMax: 8, keysMax: 64 });
    const apply = (entries: [string, MetadataValue][], bytes = encodeEntries(entries)): void => {
      applyChanges(bytes, 0, bytes.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
      bytes.fill(0);
    };
    apply([['a', '1'], ['b', '2']]);
    // A value over the context's limit, or a truncated last entry: nothing of the block is applied.
    expect(() => apply([['c', '3'], ['d', '123456789']])).toThrow(/metadata "d" of 9 bytes/);
    const truncated = encodeEntries([['c', '3'], ['d', '4']]);
    expect(() => apply([], truncated.subarray(0, truncated.length - 1))).toThrow(/is truncated/);
    expect(context.toJSON()).toEqual({ a: '1', b: '2' });
    expect(wireOf(context).equals(encodeEntries([['a', '1'], ['b', '2']]))).toBe(true);
    // A key twice in one block: the later value, once in the log.
    apply([['e', '5'], ['f', '6'], ['e', '7']]);
    expect(context.toJSON()).toEqual({ a: '1', b: '2', f: '6', e: '7' });
    expect(wireOf(context).equals(encodeEntries([['a', '1'], ['b', '2'], ['f', '6'], ['e', '7']]))).toBe(true);
    // A key set before (here by the host) beside new ones.
    context.setMetadata('h', 'host');
    apply([['g', '8'], ['h', 'plugin']]);
    expect(context.getMetadata('h')).toBe('plugin');
    // More keys than a block takes whole (CHANGE_BLOCK_ENTRIES_MAX).
    const many: [string, MetadataValue][] = Array.from({ length: CHANGE_BLOCK_ENTRIES_MAX + 8 }, (_, i) => [`k${i}`, `v${i}`]);
    apply(many);
    const expected: [string, MetadataValue][] = [['a', '1'], ['b', '2'], ['f', '6'], ['e', '7'], ['g', '8'], ['h', 'plugin'], ...many];
    expect(context.toJSON()).toEqual(Object.fromEntries(expected));
    expect(wireOf(context).equals(encodeEntries(expected))).toBe(true);
    expect(context.encodedChanges().encoded).toBe(expected.length);
    // Near keys_max the block goes entry by entry, checked exactly: the first key fits, the second is refused.
    const near = new HookContext('message_filtered', { keyBytesMax: 16, valueBytesMax: 8, keysMax: 4 });
    const three = encodeEntries([['x', '1'], ['y', '2'], ['z', '3']]);
    applyChanges(three, 0, three.length, near, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
    const two = encodeEntries([['u', '1'], ['w', '2']]);
    expect(() => applyChanges(two, 0, two.length, near, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"')).toThrow(/more than 4 metadata keys/);
    expect(near.size).toBe(4);
  });

  it('reads changes where they lie in a larger memory (a guest\'s), bounded by their own span, and keeps copies', () => {
    const entries = encodeEntries([['verdict', 'spam'], ['score', '7']]);
    const memory = Buffer.alloc(64 + entries.length + 16, 0xff);
    entries.copy(memory, 64);
    const context = new HookContext('message_filtered');
    applyChanges(memory, 64, entries.length, context, { keyBytesMax: 16, valueBytesMax: 16, keysMax: 4 }, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
    memory.fill(0);
    expect(context.toJSON()).toEqual({ verdict: 'spam', score: '7' });
    // A key that is not valid UTF-8 is bounded by what it decodes to (U+FFFD takes three bytes), not by its bytes on the wire.
    const invalidKey = Buffer.from([4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0x31]);
    const bounded = new HookContext('message_filtered', { keyBytesMax: 8, valueBytesMax: 16, keysMax: 4 });
    expect(() => applyChanges(invalidKey, 0, invalidKey.length, bounded, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"')).toThrow(/metadata key of 12 bytes/);
    // The 0xff bytes after the span are not read as a further entry; a span past the end is refused.
    expect(() => applyChanges(memory, 64, memory.length, context, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"')).toThrow(/claims/);
  });
});
