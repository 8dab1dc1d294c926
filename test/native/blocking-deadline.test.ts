import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { blockingProbeRoot, type serverRoot, waitFor } from '../helpers/server.js';
import { openPlugin } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { poolThreads } from '../../src/native/pool-calls.js';
import { expectCode } from '../helpers/expect-code.js';
import { fixture } from '../helpers/fixtures.js';

/**
 * An in-process native plugin with SMTP_PLUGIN_FLAG_BLOCKING whose hook
 * sleeps (the probe's "nap": 3 s) past hook_timeout_ms (200 ms). Its thread
 * cannot be stopped; what the host promises is in docs/sandbox.md.
 */
describe('an in-process blocking hook past its deadline', () => {
  let plugin: Plugin;

  beforeAll(async () => {
    plugin = await openPlugin(fixture('c_blocking_probe'), { options: resolvePluginOptions({ limits: { hookTimeoutMs: 200 } }) });
    expect(plugin.blocking).toBe(true);
    expect(await plugin.init('{}')).toBe(0);
    expect(await plugin.enable()).toBe(0);
  });

  afterAll(async () => {
    await plugin.disable();
    await plugin.deinit();
    await plugin.unload();
  });

  it('fails with SMTP_E_PLUGIN_DEADLINE, fails the next call at once while it is stuck, drops its late result, and takes calls again once it returns', async () => {
    const napping = HookContext.of('message_filtered', { probe: 'nap' });
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 10);
    try {
      await expectCode(async () => plugin.executeHook(napping), 'SMTP_E_PLUGIN_DEADLINE', 'ran past its 200 ms deadline');
    } finally {
      clearInterval(ticker);
    }
    // The event loop ran meanwhile: the sleep is on a pool thread.
    expect(ticks).toBeGreaterThan(0);

    // Still asleep: the next call does not queue behind it.
    await expectCode(async () => plugin.executeHook(HookContext.of('message_filtered', { input: 'while stuck' })), 'SMTP_E_PLUGIN_DEADLINE', 'has not returned after');

    // Once the nap ends, the plugin answers again (bounded wait: the nap is 3 s).
    let answered: HookContext | null = null;
    for (let attempt = 0; attempt < 200 && answered === null; attempt++) {
      await new Promise((r) => setTimeout(r, 50));
      const context = HookContext.of('message_filtered', { input: 'after' });
      try {
        expect(await plugin.executeHook(context)).toBe(0);
        answered = context;
      } catch {
        // still stuck
      }
    }
    expect(answered, 'the plugin took calls again after its nap').not.toBeNull();
    expect(answered!.getMetadata('output')).toBe('seen:after');
    // What the late call set (slept = yes) never reached the context its session had already left.
    expect([...napping.pluginChanges()]).toEqual([]);
  });

  it('reads the pool size as libuv does', () => {
    expect(poolThreads({})).toBe(4);
    expect(poolThreads({ UV_THREADPOOL_SIZE: '16' })).toBe(16);
    expect(poolThreads({ UV_THREADPOOL_SIZE: 'many' })).toBe(4);
    expect(poolThreads({ UV_THREADPOOL_SIZE: '5000' })).toBe(1024);
  });
});

describe('an in-process blocking sleeper in a real server with real clients', () => {
  let root: ReturnType<typeof serverRoot>;
  let server: MailServer;
  let port: number;
  const logLines: string[] = [];

  beforeAll(async () => {
    root = blockingProbeRoot(300);
    const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
    server = new MailServer(loadConfig(root.config), logger);
    port = await server.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  const send = async (from: string, subject: string): Promise<{ ok: boolean; code?: number; response: string }> => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
    try {
      const info = await transport.sendMail({ from, to: 'carol@example.org', subject, text: `body of ${subject}` });
      return { ok: true, response: info.response };
    } catch (error) {
      const failure = error as { responseCode?: number; response?: string };
      return { ok: false, code: failure.responseCode, response: failure.response ?? String(error) };
    } finally {
      transport.close();
    }
  };

  it('the sleeping session gets 451 4.3.0 at the deadline; a session meanwhile gets 451 at once; after the sleep mail is accepted again', async () => {
    const napping = await send('nap@example.com', 'napping');
    expect(napping.ok, napping.response).toBe(false);
    expect(napping.code).toBe(451);
    expect(napping.response).toContain('4.3.0');
    expect(logLines.some((line) => line.includes('"code":"SMTP_E_PLUGIN_DEADLINE"') && line.includes('ran past its 300 ms deadline'))).toBe(true);

    // The nap (3 s) goes on: this session is refused without waiting behind it.
    const meanwhile = await send('bob@example.com', 'meanwhile');
    expect(meanwhile.ok, meanwhile.response).toBe(false);
    expect(meanwhile.code).toBe(451);
    expect(logLines.some((line) => line.includes('has not returned after'))).toBe(true);

    await waitFor(() => logLines.some((line) => line.includes('a hook call that ran past its deadline returned')), 'the nap to end', 20_000);
    const after = await send('dave@example.com', 'after');
    expect(after.ok, after.response).toBe(true);
    expect(after.response).toMatch(/^250 /);

    const box = join(root.maildir, 'carol@example.org', 'new');
    const subjects = (): string[] => (existsSync(box) ? readdirSync(box) : []).map((f) => /^Subject: (.*)$/m.exec(readFileSync(join(box, f), 'utf8'))?.[1] ?? '');
    await waitFor(() => subjects().includes('after'), 'the accepted message in the Maildir');
    expect(subjects()).toEqual(['after']);
  });
});
