import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CounterStatus } from '../../src/abi/hooks.js';
import { PROJECT_ROOT, ZIG_HOST_MODULE_ROOT } from '../../src/paths.js';
import { openPlugin } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions, type PluginOptionsInput } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { configureHostCounters, counterIncr, hostCounterState } from '../../src/runtime/counters.js';
import { findZig, zigEnv } from '../../src/toolchain/zig.js';
import { freePort } from '../helpers/server.js';
import { callJson, runCli } from '../helpers/cli.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

/** Every way the host runs a plugin that can count: one probe source, native and wasm. */
const MODES = {
  'native in-process': { wasm: false, options: { blocking: false } },
  'native blocking': { wasm: false, options: { blocking: true } },
  'process-isolated': { wasm: false, options: { isolation: 'process' } },
  'sandboxed in-thread': { wasm: true, options: { blocking: false } },
  'sandboxed worker': { wasm: true, options: { blocking: true } },
} as const satisfies Record<string, { wasm: boolean; options: PluginOptionsInput }>;
type Mode = keyof typeof MODES;
const MODE_NAMES = Object.keys(MODES) as Mode[];

/** 31 days (the longest window): a test's calls never straddle a window's end. */
const LONG_WINDOW = '2678400';

const loaded: Plugin[] = [];

/** The counter probe (test/fixtures/plugins/counter_probe.zig) in `mode`, initialized and enabled. */
async function probe(mode: Mode, allowCounters = true, logger = pino({ level: 'silent' })): Promise<Plugin> {
  const { wasm, options } = MODES[mode];
  const plugin = await openPlugin(wasm ? wasmFixture('counter_probe') : fixture('counter_probe'), { options: resolvePluginOptions({ ...options, allowCounters }), logger });
  loaded.push(plugin);
  expect(await plugin.init('{}')).toBe(0);
  expect(await plugin.enable()).toBe(0);
  return plugin;
}

/** One hook call; what the probe set: `count`, or `counter_error`. */
async function call(plugin: Plugin, fields: Record<string, string>): Promise<Record<string, string>> {
  const context = HookContext.of('command_validated', fields);
  await plugin.executeHook(context);
  return Object.fromEntries([...context.pluginChanges()].map(([key, value]) => [key, String(value)]));
}

/** A logger whose records land in `lines`. */
function capture(lines: Record<string, unknown>[]): pino.Logger {
  return pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
}

afterAll(async () => {
  for (const plugin of loaded) await plugin.unload();
});

describe('host counters (ABI 1.2), memory backend', () => {
  it('count the same in every backend: native in-process, blocking, process-isolated, sandboxed in-thread and in a worker', async () => {
    const results: Record<string, Record<string, string>[]> = {};
    for (const mode of MODE_NAMES) {
      const plugin = await probe(mode);
      const key = `parity:${mode.replace(/ /g, '-')}`;
      results[mode] = [
        await call(plugin, { key, by: '1', window: LONG_WINDOW }),
        await call(plugin, { key, by: '2', window: LONG_WINDOW }),
        await call(plugin, { key, by: '0', window: LONG_WINDOW }),
        await call(plugin, { key: 'two words', window: LONG_WINDOW }),
        await call(plugin, { key: 'k'.repeat(257), window: LONG_WINDOW }),
        await call(plugin, { key, window: '0' }),
        await call(plugin, { key, window: '2678401' }),
        await call(plugin, { key, by: '-1', window: LONG_WINDOW }),
        await call(plugin, { key, by: '2147483648', window: LONG_WINDOW }),
      ];
    }
    const invalid = { counter_error: 'CounterInvalid' };
    expect(results['native in-process']).toEqual([{ count: '1' }, { count: '3' }, { count: '3' }, invalid, invalid, invalid, invalid, invalid, invalid]);
    for (const mode of MODE_NAMES) expect(results[mode], mode).toEqual(results['native in-process']);
  });

  it('share one count between backends when the plugin name and key match, and keep other plugins apart', async () => {
    const plugins = await Promise.all(MODE_NAMES.map((mode) => probe(mode)));
    const counts: string[] = [];
    for (let round = 0; round < 2; round++) {
      for (const plugin of plugins) counts.push((await call(plugin, { key: 'shared', window: LONG_WINDOW })).count!);
    }
    expect(counts).toEqual(['1', '2', '3', '4', '5', '6', '7', '8', '9', '10']);
    // Another plugin's "shared" is its own (the C probe, named isolation-probe), natively and sandboxed.
    const other = await openPlugin(fixture('c_isolation_probe'), { options: resolvePluginOptions({ allowCounters: true }) });
    const otherWasm = await openPlugin(wasmFixture('c_isolation_probe'), { options: resolvePluginOptions({ allowCounters: true }) });
    loaded.push(other, otherWasm);
    for (const each of [other, otherWasm]) await each.init('{}');
    const counter = async (plugin: Plugin): Promise<string | undefined> => (await call(plugin, { probe: 'counter', key: 'shared', by: '5', window: LONG_WINDOW })).counter;
    expect([await counter(other), await counter(otherWasm)]).toEqual(['5', '10']);
    expect((await call(plugins[0]!, { key: 'shared', by: '0', window: LONG_WINDOW })).count).toBe('10');
  });

  it('restart a count when its window ends', async () => {
    for (const mode of ['native in-process', 'sandboxed in-thread'] as const) {
      const plugin = await probe(mode);
      const key = `window:${mode.replace(/ /g, '-')}`;
      // Just past a second's start, so that two calls fit in one 1-second window.
      await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 20));
      expect((await call(plugin, { key, window: '1' })).count, mode).toBe('1');
      expect((await call(plugin, { key, window: '1' })).count, mode).toBe('2');
      await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 20));
      expect((await call(plugin, { key, window: '1' })).count, mode).toBe('1');
    }
  });

  it('refuse a plugin without allow_counters in every backend, and log it once with its code', async () => {
    for (const mode of MODE_NAMES) {
      const lines: Record<string, unknown>[] = [];
      const plugin = await probe(mode, false, capture(lines));
      for (let i = 0; i < 3; i++) expect(await call(plugin, { key: 'denied', window: LONG_WINDOW }), mode).toEqual({ counter_error: 'CounterDenied' });
      await plugin.unload();
      expect(lines.filter((line) => line.code === 'SMTP_E_COUNTER_DENIED'), mode).toEqual([
        expect.objectContaining({ level: 40, code: 'SMTP_E_COUNTER_DENIED', msg: expect.stringContaining('allow_counters') }),
      ]);
    }
    // Nothing was counted under the refused calls' key.
    expect(counterIncr('counter-probe', Buffer.from('denied'), 0, Number(LONG_WINDOW))).toBe(0);
  });

  it('are granted to plugin call with --allow-counters', () => {
    const args = ['plugin', 'call', fixture('counter_probe'), '--hook', 'command_validated', '--meta', 'key=cli'];
    expect(callJson(runCli([...args, '--allow-counters'])).metadata).toMatchObject({ count: '1' });
    const refused = runCli(args);
    expect(callJson(refused).metadata).toMatchObject({ counter_error: 'CounterDenied' });
    expect(refused.stdout + refused.stderr).toContain('SMTP_E_COUNTER_DENIED');
  });

  it('pass the runtime\'s own Zig tests (the memory table\'s bound, RESP parsing)', () => {
    const run = spawnSync(findZig(), ['test', '-lc', '--dep', 'smtp-host', `-Mroot=${join(PROJECT_ROOT, 'src', 'runtime', 'counters.zig')}`, `-Msmtp-host=${ZIG_HOST_MODULE_ROOT}`], { encoding: 'utf8', env: zigEnv() });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/All \d+ tests passed/);
  });
});

describe('host counters with a Redis that cannot answer', () => {
  afterEach(async () => {
    await configureHostCounters({ redis: null, redisTimeoutMs: 500, onRedisDown: 'tempfail', keyPrefix: 'test' });
  });

  it('answer UNAVAILABLE with on_redis_down = "tempfail", and count in memory with "local"', async () => {
    // A loopback port nothing listens on: every connect is refused at once.
    const redis = `redis://127.0.0.1:${await freePort()}`;
    const key = Buffer.from('redis-down');
    const lines: Record<string, unknown>[] = [];
    const failuresBefore = hostCounterState().redisFailures;
    await configureHostCounters({ redis, redisTimeoutMs: 200, onRedisDown: 'tempfail', keyPrefix: 'test', logger: capture(lines) });
    expect(counterIncr('counter-probe', key, 1, 60)).toBe(CounterStatus.UNAVAILABLE);
    // Marked down: the next calls answer at once, without trying Redis again.
    const started = performance.now();
    for (let i = 0; i < 100; i++) expect(counterIncr('counter-probe', key, 1, 60)).toBe(CounterStatus.UNAVAILABLE);
    expect(performance.now() - started).toBeLessThan(100);
    expect(hostCounterState()).toMatchObject({ redisConfigured: true, redisDown: true, redisFailures: failuresBefore + 1, lastError: 'ConnectFailed' });
    await new Promise((r) => setTimeout(r, 1100));
    expect(lines).toContainEqual(expect.objectContaining({ code: 'SMTP_E_COUNTER_UNAVAILABLE', redis }));

    await configureHostCounters({ redis, redisTimeoutMs: 200, onRedisDown: 'local', keyPrefix: 'test' });
    expect([1, 2, 3].map(() => counterIncr('counter-probe', key, 1, 60))).toEqual([1, 2, 3]);
  });

  it('take a Redis they cannot use (rediss://) as down for good, and say why', async () => {
    const lines: Record<string, unknown>[] = [];
    await configureHostCounters({ redis: 'rediss://127.0.0.1:6380', redisTimeoutMs: 200, onRedisDown: 'tempfail', keyPrefix: 'test', logger: capture(lines) });
    expect(counterIncr('counter-probe', Buffer.from('tls'), 1, 60)).toBe(CounterStatus.UNAVAILABLE);
    expect(lines).toEqual([expect.objectContaining({ level: 50, code: 'SMTP_E_COUNTER_UNAVAILABLE', err: expect.stringContaining('TLS') })]);
  });
});
