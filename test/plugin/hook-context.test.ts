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
