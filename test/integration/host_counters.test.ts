import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { openPlugin, backendsStopped } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions, type PluginOptionsInput } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { configureHostCounters, type HostCountersConfig } from '../../src/runtime/counters.js';
import { buildPlugin } from '../../src/toolchain/build.js';
import { startRedis, type Redis } from './helpers/redis.js';

/**
 * The host counters (ABI 1.2) backed by a real redis-server: two processes,
 * each with its own native runtime (this one, and a second Node process
 * driven by helpers/counter-process.mjs over dist/), count together; with
 * redis-server stopped, on_redis_down = "tempfail" answers
 * SMTP_COUNTER_E_UNAVAILABLE and "local" counts in each process's memory;
 * once it is back, the counts are shared again.
 */

/** 31 days: no test straddles a window's end. */
const WINDOW = '2678400';
const PREFIX = 'itest';
/** How long Redis stays marked down after a failure (src/runtime/counters.zig redis_backoff_ms), plus a margin. */
const BACKOFF_WAIT_MS = 1200;

/** The second process: requests answered in order, one line each. */
class CounterProcess {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #lines: Interface;
  readonly #waiting: ((line: string) => void)[] = [];

  constructor() {
    this.#child = spawn(process.execPath, [join(PROJECT_ROOT, 'test', 'integration', 'helpers', 'counter-process.mjs')], { stdio: 'pipe' });
    this.#child.stderr.resume();
    this.#lines = createInterface({ input: this.#child.stdout });
    this.#lines.on('line', (line) => this.#waiting.shift()?.(line));
  }

  async request(request: Record<string, unknown>): Promise<Record<string, unknown>> {
    const line = await new Promise<string>((done) => {
      this.#waiting.push(done);
      this.#child.stdin.write(`${JSON.stringify(request)}\n`);
    });
    const answer = JSON.parse(line) as { ok: boolean; error?: string } & Record<string, unknown>;
    if (!answer.ok) throw new Error(`counter process: ${answer.error}`);
    return answer;
  }

  async count(key: string): Promise<string> {
    const { changed } = (await this.request({ op: 'call', fields: { key, window: WINDOW } })) as { changed: Record<string, string> };
    return changed.count ?? changed.counter_error!;
  }

  async stop(): Promise<void> {
    const exited = new Promise((done) => this.#child.once('exit', done));
    this.#child.stdin.end();
    await exited;
  }
}

describe('host counters backed by Redis', () => {
  let redis: Redis;
  let other: CounterProcess;
  const plugins: Plugin[] = [];
  let native: string;
  let wasm: string;
  const logs: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'counter-probe-'));
    const source = join(PROJECT_ROOT, 'test', 'fixtures', 'plugins', 'counter_probe.zig');
    [native, wasm] = await Promise.all([
      buildPlugin({ source, output: join(dir, 'libcounter_probe.so') }),
      buildPlugin({ source, output: join(dir, 'counter_probe.wasm'), target: 'wasm' }),
    ]);
    redis = await startRedis();
    other = new CounterProcess();
    await other.request({ op: 'open', file: wasm, options: { allowCounters: true, blocking: true } });
  });

  afterAll(async () => {
    for (const plugin of plugins) await plugin.unload();
    await backendsStopped();
    await configureHostCounters({ redis: null, redisTimeoutMs: 500, onRedisDown: 'tempfail', keyPrefix: PREFIX });
    await other?.stop();
    await redis?.stop();
  });

  function config(onRedisDown: 'tempfail' | 'local'): HostCountersConfig {
    return { redis: `redis://127.0.0.1:${redis.port}`, redisTimeoutMs: 300, onRedisDown, keyPrefix: PREFIX };
  }

  /** Both processes use the Redis with `onRedisDown`. */
  async function configureBoth(onRedisDown: 'tempfail' | 'local'): Promise<void> {
    await configureHostCounters({ ...config(onRedisDown), logger });
    await other.request({ op: 'configure', config: config(onRedisDown) });
  }

  async function probe(file: string, options: PluginOptionsInput): Promise<Plugin> {
    const plugin = await openPlugin(file, { options: resolvePluginOptions({ allowCounters: true, ...options }) });
    plugins.push(plugin);
    await plugin.init('{}');
    await plugin.enable();
    return plugin;
  }

  async function count(plugin: Plugin, key: string): Promise<string> {
    const context = HookContext.of('command_validated', { key, window: WINDOW });
    await plugin.executeHook(context);
    const changed = Object.fromEntries([...context.pluginChanges()].map(([name, value]) => [name, String(value)]));
    return changed.count ?? changed.counter_error!;
  }

  it('count across two processes, in every backend of this one, under <prefix>:ctr:<plugin>:<key>:<window>:<index>', async () => {
    await configureBoth('tempfail');
    const inProcess = await probe(native, { blocking: false });
    const blocking = await probe(native, { blocking: true });
    const isolated = await probe(native, { isolation: 'process' });
    const sandboxed = await probe(wasm, { blocking: false });
    const worker = await probe(wasm, { blocking: true });
    const seen: string[] = [];
    for (const plugin of [inProcess, blocking, isolated, sandboxed, worker]) {
      seen.push(await count(plugin, 'shared'));
      seen.push(await other.count('shared'));
    }
    expect(seen).toEqual(['1', '2', '3', '4', '5', '6', '7', '8', '9', '10']);
    const index = Math.floor(Date.now() / 1000 / Number(WINDOW));
    const key = `${PREFIX}:ctr:counter-probe:shared:${WINDOW}:${index}`;
    expect(await redis.command('GET', key)).toBe('10');
    // An expiry of two windows: the key outlives its window, then goes.
    const ttl = (await redis.command('TTL', key)) as number;
    expect(ttl).toBeGreaterThan(Number(WINDOW));
    expect(ttl).toBeLessThanOrEqual(2 * Number(WINDOW));
  });

  it('with on_redis_down = "tempfail": UNAVAILABLE while redis-server is stopped, one shared count again once it is back', async () => {
    await configureBoth('tempfail');
    const plugin = await probe(native, { blocking: false });
    expect([await count(plugin, 'tempfail'), await other.count('tempfail')]).toEqual(['1', '2']);
    await redis.stop();
    const started = performance.now();
    for (let i = 0; i < 20; i++) {
      expect(await count(plugin, 'tempfail')).toBe('CounterUnavailable');
      expect(await other.count('tempfail')).toBe('CounterUnavailable');
    }
    // Marked down after the first refused connect: the others answer at once, none waits a timeout.
    expect(performance.now() - started).toBeLessThan(1000);
    await new Promise((r) => setTimeout(r, BACKOFF_WAIT_MS));
    expect(logs).toContainEqual(expect.objectContaining({ level: 40, code: 'SMTP_E_COUNTER_UNAVAILABLE', err: 'ConnectFailed' }));
    await redis.start();
    await new Promise((r) => setTimeout(r, BACKOFF_WAIT_MS));
    // The restarted Redis kept nothing (--save ''): the count starts again, shared.
    expect([await count(plugin, 'tempfail'), await other.count('tempfail'), await count(plugin, 'tempfail')]).toEqual(['1', '2', '3']);
    await new Promise((r) => setTimeout(r, BACKOFF_WAIT_MS));
    expect(logs).toContainEqual(expect.objectContaining({ level: 30, msg: 'Redis answers the host counters again' }));
  });

  it('with on_redis_down = "local": each process counts in its own memory while redis-server is stopped, in Redis again once it is back', async () => {
    await configureBoth('local');
    const plugin = await probe(wasm, { blocking: true });
    expect([await count(plugin, 'local'), await other.count('local')]).toEqual(['1', '2']);
    await redis.stop();
    expect([await count(plugin, 'local'), await count(plugin, 'local'), await other.count('local')]).toEqual(['1', '2', '1']);
    await redis.start();
    await new Promise((r) => setTimeout(r, BACKOFF_WAIT_MS));
    expect([await count(plugin, 'local'), await other.count('local')]).toEqual(['1', '2']);
    expect(await redis.command('GET', `${PREFIX}:ctr:counter-probe:local:${WINDOW}:${Math.floor(Date.now() / 1000 / Number(WINDOW))}`)).toBe('2');
  });
});
