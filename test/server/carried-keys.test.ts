import { describe, expect, it } from 'vitest';
import { HookContext } from '../../src/plugin/hook-context.js';
import { applyChanges, encodeEntries } from '../../src/plugin/metadata-wire.js';
import { CarriedKeys } from '../../src/server/carried-keys.js';
import { BODY_KEY } from '../../src/server/hook-table.js';

describe('keys carried from a message\'s earlier stages to its later ones', () => {
  it('carries what plugins set (not the host, not the body), and the latest stage\'s value of a key set twice', () => {
    const received = new HookContext('message_received');
    received.setMetadata('host_note', 'not carried');
    received.applyPluginChange('verdict', Buffer.from('maybe'));
    received.applyPluginChange('score', Buffer.from('3'));
    received.applyPluginChange(BODY_KEY, Buffer.from('rewritten body'));
    const filtered = new HookContext('message_filtered');
    filtered.applyPluginChange('verdict', Buffer.from('spam'));
    const carried = new CarriedKeys();
    carried.add(received);
    carried.add(filtered);
    const stored = new HookContext('message_stored');
    for (const [key, value] of carried) stored.setMetadata(key, value);
    expect(stored.toJSON()).toEqual({ verdict: 'spam', score: '3' });
    // Read again for another stage, it gives the same.
    expect(new Map([...carried].map(([key, value]) => [key, String(value)]))).toEqual(new Map([['verdict', 'spam'], ['score', '3']]));
  });

  it('carries values copied back from a plugin\'s memory after that memory is reused', () => {
    const stage = new HookContext('message_filtered');
    const memory = encodeEntries([['verdict', 'ham'], ['score', '1']]);
    applyChanges(memory, 0, memory.length, stage, undefined, 'SMTP_E_WASM_BOUNDS', 'plugin "p"');
    memory.fill(0);
    const carried = new CarriedKeys();
    carried.add(stage);
    expect(Object.fromEntries([...carried].map(([key, value]) => [key, String(value)]))).toEqual({ verdict: 'ham', score: '1' });
  });

  it('carries nothing from stages whose plugins set nothing', () => {
    const carried = new CarriedKeys();
    carried.add(new HookContext('message_received'));
    expect([...carried]).toEqual([]);
  });
});
