import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CounterStatus, HostStatus } from '../../src/abi/hooks.js';
import { openPlugin } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions, type Isolation } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

/** The three ways one C source runs: native in the server's process, native in a child process, and built for wasm32 in the sandbox. */
type Mode = Isolation | 'wasm';

/**
 * One C source (test/fixtures/plugins/c_isolation_probe.c), built native by
 * gcc and for wasm by `plugin build --target wasm`, run in all three modes:
 * the hooks that do not escape their sandbox give the same results. What
 * differs on purpose, and so is not compared: in the server's process fopen
 * and socket work; isolated, they fail with EPERM; in wasm there is no file
 * system and no socket() at all.
 */
describe('parity: the same C probe in-process, process-isolated and wasm', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    server = createServer((socket) => socket.on('data', () => socket.end('pong\n')));
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise((done) => server.close(done));
  });

  /** Each mode's results, run once and shared by the tests below. */
  const runs = new Map<Mode, Promise<Record<string, unknown>[]>>();
  function resultsOf(mode: Mode): Promise<Record<string, unknown>[]> {
    if (!runs.has(mode)) runs.set(mode, results(mode));
    return runs.get(mode)!;
  }

  async function results(mode: Mode): Promise<Record<string, unknown>[]> {
    const granted = `tcp:127.0.0.1:${port}`;
    // blocking: in-process, the hooks run on a pool thread, so that this process's loopback server can answer net_recv.
    const options = resolvePluginOptions({ allowConnect: [granted], allowCounters: true, blocking: true, ...(mode === 'wasm' ? {} : { isolation: mode }) });
    const plugin: Plugin = await openPlugin(mode === 'wasm' ? wasmFixture('c_isolation_probe') : fixture('c_isolation_probe'), { options });
    expect(await plugin.init('{}')).toBe(0);
    expect(await plugin.enable()).toBe(0);
    const out: Record<string, unknown>[] = [];
    const cases: Record<string, string>[] = [
      { input: 'one' },
      { input: 'two', extra: 'x'.repeat(1024) },
      { probe: 'cancel' },
      { probe: 'net', address: granted },
      { probe: 'net', address: 'tcp:127.0.0.1:1' },
      { probe: 'alloc', mb: '8' },
      { probe: 'null' },
      // The host counters (ABI 1.2), a key per mode (they share one store); a 31-day window.
      { probe: 'counter', key: `parity:${mode}`, by: '2', window: '2678400' },
      { probe: 'counter', key: `parity:${mode}`, by: '3', window: '2678400' },
      { probe: 'counter', key: 'not a key', by: '1', window: '2678400' },
    ];
    for (const fields of cases) {
      const context = HookContext.of('message_filtered', fields);
      const code = await plugin.executeHook(context);
      const changed = Object.fromEntries([...context.pluginChanges()].map(([key, value]) => [key, typeof value === 'string' ? value : Buffer.from(value).toString('utf8')]));
      out.push({ code, cancel: context.cancel, changed });
    }
    await plugin.disable();
    await plugin.deinit();
    await plugin.unload();
    return out;
  }

  it('gives the same codes, changes and cancel flags in all three modes', async () => {
    const inProcess = await resultsOf('in-process');
    const isolated = await resultsOf('process');
    const wasm = await resultsOf('wasm');
    expect(isolated).toEqual(inProcess);
    expect(wasm).toEqual(inProcess);
    expect(inProcess[0]).toEqual({ code: 0, cancel: false, changed: { output: 'seen:one', count: '1' } });
    expect(inProcess[1]).toEqual({ code: 0, cancel: false, changed: { output: 'seen:two', count: '2' } });
    expect(inProcess[2]).toEqual({ code: 0, cancel: true, changed: {} });
    expect(inProcess[3]).toMatchObject({ changed: { net_reply: 'pong\n' } });
    expect(inProcess[4]).toMatchObject({ changed: { net_result: '-1' } });
    expect(inProcess[5]).toMatchObject({ changed: { alloc: 'ok' } });
    expect(inProcess.slice(7).map((each) => each.changed)).toEqual([{ counter: '2' }, { counter: '5' }, { counter: String(CounterStatus.INVALID) }]);
  });

  it('refuses a NULL value with a non-zero length as SMTP_STATUS_INVALID and stores nothing, in all three modes', async () => {
    // set_metadata(ctx, "stored", NULL, 5): natively NULL would be a segfault if read; in wasm it is address 0, readable, so only the check keeps 5 bytes from being stored.
    for (const mode of ['in-process', 'process', 'wasm'] as const) {
      const nullCase = (await resultsOf(mode))[6];
      expect(nullCase, mode).toEqual({ code: 0, cancel: false, changed: { null_status: String(HostStatus.INVALID) } });
    }
  });
});
