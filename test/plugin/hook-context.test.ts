import { describe, expect, it } from 'vitest';
import { isHostError } from '../../src/errors.js';
import { HookContext } from '../../src/plugin/hook-context.js';

describe('HookContext', () => {
  it('refuses unknown hooks, empty or oversized keys, oversized values and too many keys', () => {
    const limits = { keyBytesMax: 4, valueBytesMax: 3, keysMax: 2 };
    expect(() => new HookContext('bogus' as never)).toThrow(expect.objectContaining({ code: 'SMTP_E_HOOK_UNKNOWN' }));
    const context = new HookContext('message_received', limits);
    for (const [key, value] of [['', 'x'], ['abcde', 'x'], ['k', 'abcd'], ['k', new Uint8Array(4)]] as const) {
      try {
        context.setMetadata(key, value);
        throw new Error(`accepted ${key}`);
      } catch (error) {
        expect(isHostError(error, 'SMTP_E_METADATA_LIMIT'), String(error)).toBe(true);
      }
    }
    context.setMetadata('a', 'é'); // 2 bytes of UTF-8: within 3
    context.setMetadata('b', '1');
    expect(() => context.setMetadata('c', '1')).toThrow(/more than 2 metadata keys/);
    context.setMetadata('a', 'new');
    expect(context.toJSON()).toEqual({ a: 'new', b: '1' });
  });

  it('bumps its version on every change, host or plugin', () => {
    const context = new HookContext('message_received');
    context.setMetadata('a', '1');
    const version = context.version;
    context.applyPluginChange('b', Buffer.from('2'));
    expect(context.version).toBe(version + 1);
    expect(context.getMetadata('b')).toBe('2');
  });
});

describe('HookContext.of: the event encoded once', () => {
  it('encodes the host keys once, skips undefined, references the body as the tail, and reads them back', () => {
    const body = Buffer.from('Subject: x\r\n\r\nbody \xff', 'latin1');
    const context = HookContext.of('message_filtered', { sender: 'a@example.org', helo: undefined, subject: 'héllo', message_body: body }, 'message_body');
    expect(context.base.tail).toBe(body);
    expect(context.base.count).toBe(3);
    expect(context.base.largestKey).toBe('message_body');
    expect(context.getMetadata('subject')).toBe('héllo');
    expect(context.hasMetadata('helo')).toBe(false);
    expect(context.getMetadataBytes('message_body')).toBe(body);
    // The wire text: head, then the body right after its length.
    const wire = Buffer.alloc(context.base.byteLength);
    context.base.copyTo(wire, 0);
    expect(wire.subarray(wire.length - body.length)).toEqual(body);
    expect(wire.readUInt32LE(wire.length - body.length - 4)).toBe(body.length);
  });

  it('keeps later sets as changes stamped with versions, so a copy gets only what it has not seen', () => {
    const context = HookContext.of('message_filtered', { a: '1', b: '2' });
    expect([...context.changesSince(0)]).toEqual([]);
    context.applyPluginChange('b', Buffer.from('two'));
    const seen = context.version;
    context.applyPluginChange('c', Buffer.from('3'));
    context.setMetadata('a', 'one');
    expect([...context.changesSince(seen)].map(([k, v]) => [k, Buffer.from(v).toString()])).toEqual([['c', '3'], ['a', 'one']]);
    expect([...context.pluginChanges()].map(([k]) => k)).toEqual(['b', 'c']);
    expect(context.toJSON()).toEqual({ a: 'one', b: 'two', c: '3' });
    expect(context.size).toBe(3);
  });

  it('collects a backend\'s deferred changes once, before anything reads or changes the context', () => {
    const context = HookContext.of('message_filtered', { a: '1' });
    const collected: string[] = [];
    const source = (name: string, key: string, value: string) => ({
      collect(target: HookContext): void {
        collected.push(name);
        target.applyPluginChange(key, Buffer.from(value));
      },
    });
    const native = source('native', 'a', 'plugin');
    context.deferChanges(native);
    expect(context.pendingFrom(native)).toBe(true);
    expect(collected).toEqual([]);
    // The host's set comes after the plugin's: it must win.
    context.setMetadata('a', 'host');
    expect(collected).toEqual(['native']);
    expect(context.getMetadata('a')).toBe('host');
    // Deferring from another source collects the first one's changes first.
    const first = source('first', 'b', '1');
    const second = source('second', 'b', '2');
    context.deferChanges(first);
    context.deferChanges(second);
    expect(collected).toEqual(['native', 'first']);
    expect([...context.pluginChanges()].map(([key, value]) => [key, Buffer.from(value).toString()])).toEqual([['b', '2']]);
    expect(collected).toEqual(['native', 'first', 'second']);
    context.settle();
    expect(collected).toHaveLength(3);
  });
});
