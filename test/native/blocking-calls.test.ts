import { createServer, type Server } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BATCH_CALLS_MAX } from '../../src/native/blocking-calls.js';
import { openPlugin } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions, type PluginOptionsInput } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { expectCode } from '../helpers/expect-code.js';
import { fixture } from '../helpers/fixtures.js';

/**
 * The calls of an in-process blocking plugin go to koffi's pool in batches:
 * every call that queued while the previous batch ran is handed over at
 * once, each in its own native context (src/native/blocking-calls.ts).
 * What a plugin author relies on must hold as it did with one call per
 * hand-off: one call at a time and in order, each answer in its own
 * context, a connection kept from one call to the next, and a call whose
 * session stopped waiting never made.
 */
describe('batched blocking native calls', () => {
  let pong: Server;
  let port = 0;
  let plugin: Plugin | null = null;

  beforeAll(async () => {
    pong = createServer((socket) => socket.on('data', () => socket.write('pong\n')));
    await new Promise<void>((resolve) => pong.listen(0, '127.0.0.1', resolve));
    port = (pong.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise((resolve) => pong.close(resolve));
  });

  afterEach(async () => {
    if (plugin === null) return;
    await plugin.disable();
    await plugin.deinit();
    await plugin.unload();
    plugin = null;
  });

  async function blockingProbe(input: PluginOptionsInput = {}): Promise<Plugin> {
    const opened = await openPlugin(fixture('c_blocking_probe'), { options: resolvePluginOptions(input) });
    expect(opened.blocking).toBe(true);
    expect(await opened.init('{}')).toBe(0);
    expect(await opened.enable()).toBe(0);
    plugin = opened;
    return opened;
  }

  it(`answers ${BATCH_CALLS_MAX * 3} calls made at once each in its own context, one at a time and in the order they came`, async () => {
    const probe = await blockingProbe();
    const calls = BATCH_CALLS_MAX * 3;
    const contexts = Array.from({ length: calls }, (_, i) => HookContext.of('message_stored', { input: `message ${i}` }));
    // The first call goes alone; the rest queue behind it and go in batches.
    const codes = await Promise.all(contexts.map((context) => probe.executeHook(context)));
    expect(codes).toEqual(contexts.map(() => 0));
    contexts.forEach((context, i) => {
      expect(context.getMetadata('output')).toBe(`seen:message ${i}`);
      // The probe counts its calls: the i-th call made was the i-th run.
      expect(context.getMetadata('count')).toBe(String(i + 1));
    });
  });

  it('keeps a connection opened in one call for the calls after it, whichever context of the batch they run in', async () => {
    const address = `tcp:127.0.0.1:${port}`;
    const probe = await blockingProbe({ allowConnect: [address] });
    const open = HookContext.of('message_stored', { probe: 'net_open', address });
    const pings = Array.from({ length: 10 }, () => HookContext.of('message_stored', { probe: 'net_ping' }));
    const close = HookContext.of('message_stored', { probe: 'net_close' });
    await Promise.all([open, ...pings, close].map((context) => probe.executeHook(context)));
    expect(Number(open.getMetadata('net_result'))).toBeGreaterThanOrEqual(0);
    for (const ping of pings) {
      expect(ping.getMetadata('net_result')).toBeUndefined();
      expect(ping.getMetadata('net_reply')).toBe('pong\n');
    }
    expect(close.getMetadata('net_result')).toBe('0');
  });

  it('never makes a call whose deadline passed while it waited in a batch behind a stuck call', async () => {
    const probe = await blockingProbe({ limits: { hookTimeoutMs: 1000 } });
    // The first call runs alone (a batch starts at the end of the event loop's turn); the stuck one and the one behind it queue meanwhile and go together.
    const first = probe.executeHook(HookContext.of('message_stored', { probe: 'sleep', ms: '300' }));
    await new Promise((resolve) => setImmediate(resolve));
    const stuck = probe.executeHook(HookContext.of('message_stored', { probe: 'nap' }));
    const behind = HookContext.of('message_stored', { input: 'behind the nap' });
    const behindCall = probe.executeHook(behind);
    expect(await first).toBe(0);
    await expectCode(async () => stuck, 'SMTP_E_PLUGIN_DEADLINE', 'ran past its 1000 ms deadline');
    await expectCode(async () => behindCall, 'SMTP_E_PLUGIN_DEADLINE', 'waited behind the plugin\'s previous call past its 1000 ms deadline');
    expect(behind.getMetadata('output')).toBeUndefined();

    // Once the nap ends (3 s), the next call is the third the plugin ran: the one behind it never was.
    let after: HookContext | null = null;
    for (let attempt = 0; attempt < 100 && after === null; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      const context = HookContext.of('message_stored', { input: 'after' });
      try {
        expect(await probe.executeHook(context)).toBe(0);
        after = context;
      } catch (error) {
        expect((error as { code?: string }).code).toBe('SMTP_E_PLUGIN_DEADLINE');
      }
    }
    expect(after?.getMetadata('output')).toBe('seen:after');
    expect(after?.getMetadata('count')).toBe('3');
  });
});
