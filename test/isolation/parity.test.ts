import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPlugin } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions, type Isolation } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { fixture } from '../helpers/fixtures.js';

/**
 * One C source, built once, run native in the server's process and native
 * in a process of its own: the hooks that do not escape their sandbox give
 * the same results. (The C-to-wasm build route is not on this branch's
 * main yet, so the wasm column is not here.) What differs on purpose: in
 * the server's process fopen and socket work; isolated, they fail with EPERM.
 */
describe('parity: the same probe in-process and process-isolated', () => {
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

  async function results(isolation: Isolation): Promise<Record<string, unknown>[]> {
    const granted = `tcp:127.0.0.1:${port}`;
    // blocking: in-process, the hooks run on a pool thread, so that this process's loopback server can answer net_recv.
    const plugin: Plugin = await openPlugin(fixture('c_isolation_probe'), { options: resolvePluginOptions({ isolation, allowConnect: [granted], blocking: true }) });
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

  it('gives the same codes, changes and cancel flags', async () => {
    const inProcess = await results('in-process');
    const isolated = await results('process');
    expect(isolated).toEqual(inProcess);
    expect(inProcess[0]).toEqual({ code: 0, cancel: false, changed: { output: 'seen:one', count: '1' } });
    expect(inProcess[3]).toMatchObject({ changed: { net_reply: 'pong\n' } });
    expect(inProcess[4]).toMatchObject({ changed: { net_result: '-1' } });
  });
});
