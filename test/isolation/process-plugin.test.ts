import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ABI_VERSION, formatAbiVersion } from '../../src/abi/hooks.js';
import { backendFor, isIsolated, openPlugin } from '../../src/plugin/backends.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions, type PluginOptionsInput } from '../../src/plugin/options.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { RESTART_BACKOFF_MIN_MS } from '../../src/isolation/process-plugin.js';
import { expectCode } from '../helpers/expect-code.js';
import { fixture } from '../helpers/fixtures.js';

const PROBE = fixture('c_isolation_probe');

/** The pids of this process's children that run the plugin child program. */
function childPids(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === process.pid && stat.includes('(smtp-plugin-chi')) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function logCollector(): { logger: pino.Logger; lines: () => Record<string, unknown>[] } {
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
  return { logger, lines: () => lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

async function isolated(input: PluginOptionsInput = {}, logger?: pino.Logger, path = PROBE): Promise<Plugin> {
  const plugin = await openPlugin(path, { options: resolvePluginOptions({ ...input, isolation: 'process' }), ...(logger ? { logger } : {}) });
  expect(await plugin.init('{}')).toBe(0);
  expect(await plugin.enable()).toBe(0);
  return plugin;
}

async function call(plugin: Plugin, fields: Record<string, string>): Promise<HookContext> {
  const context = HookContext.of('message_received', fields);
  expect(await plugin.executeHook(context)).toBe(0);
  return context;
}

async function shutdown(plugin: Plugin): Promise<void> {
  await plugin.disable();
  await plugin.deinit();
  await plugin.unload();
}

describe('isolation = "process": the backend seam', () => {
  it('picks the process backend for a native library when asked, per plugin, and calls it isolated', async () => {
    expect(backendFor(PROBE)).toBe('native');
    expect(backendFor(PROBE, { isolation: 'process' })).toBe('process');
    expect(backendFor(PROBE, { options: resolvePluginOptions({ isolation: 'process' }) })).toBe('process');
    expect(() => resolvePluginOptions({ isolation: 'container' })).toThrow(/expected one of "in-process", "process" for isolation/);
    const plugin = await isolated();
    expect(plugin.backend).toBe('process');
    expect(plugin.kind).toBe('native');
    expect(isIsolated(plugin)).toBe(true);
    expect(plugin.metadata).toMatchObject({ name: 'isolation-probe', version: '1.0.0', description: 'process isolation probe' });
    await shutdown(plugin);
  });

  it('refuses broken libraries with the codes the in-process backend uses, leaving no process behind', async () => {
    const open = (path: string): Promise<Plugin> => openPlugin(path, { isolation: 'process' });
    await expectCode(() => open('/nonexistent/libnothing.so'), 'SMTP_E_PLUGIN_NOT_FOUND', '/nonexistent/libnothing.so');
    await expectCode(() => open(fixture('not_a_library')), 'SMTP_E_PLUGIN_NOT_LIBRARY', 'not_a_library');
    await expectCode(() => open(fixture('c_no_marker')), 'SMTP_E_PLUGIN_MISSING_EXPORT', 'smtp_plugin_abi_version');
    await expectCode(() => open(fixture('c_bad_abi')), 'SMTP_E_PLUGIN_ABI_VERSION', `built for ABI 2.0, this host runs ABI ${formatAbiVersion(ABI_VERSION)}`);
    await expectCode(() => open(fixture('c_missing_disable')), 'SMTP_E_PLUGIN_MISSING_EXPORT', 'smtp_plugin_disable');
    await expectCode(() => open(fixture('c_null_metadata')), 'SMTP_E_PLUGIN_METADATA', 'get_metadata returned NULL');
    await expectCode(() => open(fixture('c_bad_utf8')), 'SMTP_E_PLUGIN_METADATA', 'metadata author is not valid UTF-8');
    await expectCode(() => open(fixture('c_bad_name')), 'SMTP_E_PLUGIN_METADATA', 'metadata name "bad name!"');
    await new Promise((r) => setTimeout(r, 100));
    expect(childPids()).toEqual([]);
  });
});

describe('isolation = "process": hook calls', () => {
  let plugin: Plugin;
  beforeAll(async () => {
    plugin = await isolated();
  });
  afterAll(async () => {
    await shutdown(plugin);
  });

  it('reads one key and sets one, keeping its state between calls; a quick call answers without a promise', async () => {
    const first = await call(plugin, { input: 'hello' });
    expect(first.getMetadata('output')).toBe('seen:hello');
    const context = HookContext.of('message_received', { input: 'again' });
    // Warm: the child spins for the next request, so the answer comes within the synchronous spin.
    let answeredAtOnce = false;
    for (let attempt = 0; attempt < 20 && !answeredAtOnce; attempt++) {
      const code = plugin.executeHook(context);
      answeredAtOnce = typeof code === 'number';
      await code;
    }
    expect(answeredAtOnce).toBe(true);
    expect(context.getMetadata('output')).toBe('seen:again');
    expect(Number(context.getMetadata('count'))).toBeGreaterThan(1);
  });

  it('passes what was set since the event was encoded, binary values and the cancel flag across', async () => {
    const context = HookContext.of('message_received', { input: 'base' });
    context.setMetadata('input', 'changed');
    await plugin.executeHook(context);
    expect(context.getMetadata('output')).toBe('seen:changed');
    const cancelled = HookContext.of('message_received', { probe: 'cancel' });
    await plugin.executeHook(cancelled);
    expect(cancelled.cancel).toBe(true);
    const binary = await openPlugin(fixture('c_plain'), { isolation: 'process' });
    expect(await binary.init('{}')).toBe(0);
    const bytes = Uint8Array.from([0, 1, 2, 0, 255, 10, 0]);
    const carried = new HookContext('message_received');
    carried.setMetadata('in', bytes);
    await binary.executeHook(carried);
    expect(Uint8Array.from(carried.getMetadataBytes('out')!)).toEqual(bytes);
    await binary.executeHook(carried);
    expect(carried.getMetadata('visited')).toBe('plain,plain');
    await binary.deinit();
    await binary.unload();
  });

  it('refuses a context over the plugin\'s metadata bounds before the call (SMTP_E_METADATA_LIMIT)', async () => {
    const small = await isolated({ limits: { metadataValueBytesMax: 1024 } });
    await expectCode(() => small.executeHook(HookContext.of('message_received', { input: 'x'.repeat(2048) })), 'SMTP_E_METADATA_LIMIT', '2048 bytes');
    expect((await call(small, { input: 'fits' })).getMetadata('output')).toBe('seen:fits');
    await shutdown(small);
  });
});

describe('isolation = "process": a plugin that crashes, exits or hangs costs only its own calls', () => {
  it('a segfault, an abort() or an exit() fails that call with SMTP_E_PLUGIN_CRASHED naming the signal or status; the next call runs in a restarted child', async () => {
    const { logger, lines } = logCollector();
    const plugin = await isolated({}, logger);
    for (const [probe, what] of [['segfault', 'killed by SIGSEGV'], ['abort', 'killed by SIGABRT'], ['exit', 'exited with status 3']] as const) {
      await call(plugin, { input: 'before' });
      const started = performance.now();
      await expectCode(() => plugin.executeHook(HookContext.of('message_received', { probe })), 'SMTP_E_PLUGIN_CRASHED', what);
      // Noticed at once (the pidfd), not at the deadline.
      expect(performance.now() - started).toBeLessThan(500);
      const after = await call(plugin, { input: 'after' });
      expect(after.getMetadata('output')).toBe('seen:after');
      // A fresh process, brought back through init: its call count started again.
      expect(after.getMetadata('count')).toBe('1');
    }
    expect(lines().filter((line) => line.msg === 'plugin process restarted')).toHaveLength(3);
    await shutdown(plugin);
    await new Promise((r) => setTimeout(r, 100));
    expect(childPids()).toEqual([]);
  });

  it('a hook that never returns is killed at hook_timeout_ms (SMTP_E_PLUGIN_DEADLINE) and a call queued behind it runs in a restarted child', async () => {
    const plugin = await isolated({ limits: { hookTimeoutMs: 300 } });
    const started = performance.now();
    const hung = plugin.executeHook(HookContext.of('message_received', { probe: 'hang' }));
    const queued = plugin.executeHook(HookContext.of('message_received', { input: 'queued' }));
    await expectCode(() => hung, 'SMTP_E_PLUGIN_DEADLINE', 'ran past its 300 ms deadline');
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1000);
    expect(await queued).toBe(0);
    await shutdown(plugin);
  });

  it('an exit() in init fails the init with SMTP_E_PLUGIN_CRASHED', async () => {
    const plugin = await openPlugin(PROBE, { isolation: 'process' });
    await expectCode(() => plugin.init('{"init":"exit"}'), 'SMTP_E_PLUGIN_CRASHED', 'exited with status 3 during init');
    await plugin.deinit();
    await plugin.unload();
  });

  it('a restart that keeps failing fails calls at once with the last error until its backoff passes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'smtp-isolation-'));
    const path = join(dir, 'libprobe.so');
    copyFileSync(PROBE, path);
    const plugin = await isolated({}, undefined, path);
    try {
      await expectCode(() => plugin.executeHook(HookContext.of('message_received', { probe: 'segfault' })), 'SMTP_E_PLUGIN_CRASHED');
      // The library is now broken on disk: the restart cannot load it.
      writeFileSync(path, 'not a library any more\n');
      await expectCode(() => plugin.executeHook(HookContext.of('message_received', { input: 'x' })), 'SMTP_E_PLUGIN_NOT_LIBRARY');
      const started = performance.now();
      await expectCode(() => plugin.executeHook(HookContext.of('message_received', { input: 'x' })), 'SMTP_E_PLUGIN_NOT_LIBRARY', 'restart backing off');
      expect(performance.now() - started).toBeLessThan(50);
      copyFileSync(PROBE, path);
      await new Promise((r) => setTimeout(r, RESTART_BACKOFF_MIN_MS + 20));
      expect((await call(plugin, { input: 'back' })).getMetadata('output')).toBe('seen:back');
    } finally {
      await shutdown(plugin);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('kills its child on unload, and leaves no zombie', async () => {
    const plugin = await isolated();
    await call(plugin, { input: 'x' });
    const [pid] = childPids();
    expect(pid).toBeGreaterThan(0);
    await shutdown(plugin);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });
});

describe('isolation = "process": what the child may do', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    server = createServer((socket) => socket.on('data', (data) => socket.end(data.toString() === 'ping\n' ? 'pong\n' : 'what?\n')));
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise((done) => server.close(done));
  });

  it('cannot open a file: fopen("/etc/passwd") fails with EPERM', async () => {
    const plugin = await isolated();
    const context = await call(plugin, { probe: 'fopen' });
    expect(context.getMetadata('opened')).toBe('no');
    expect(context.getMetadata('errno')).toBe('1');
    await shutdown(plugin);
  });

  it('cannot make a socket: socket() and connect() fail with EPERM, even to a port it was granted', async () => {
    const plugin = await isolated({ allowConnect: [`tcp:127.0.0.1:${port}`] });
    const context = await call(plugin, { probe: 'socket', port: String(port) });
    expect(context.getMetadata('socket_errno')).toBe('1');
    expect(context.getMetadata('connect_errno')).not.toBe('0');
    await shutdown(plugin);
  });

  it('net_connect to an address it was not granted is refused (SMTP_NET_E_DENIED) and logged by the host', async () => {
    const { logger, lines } = logCollector();
    const plugin = await isolated({ allowConnect: ['tcp:127.0.0.1:1'] }, logger);
    const context = await call(plugin, { probe: 'net', address: `tcp:127.0.0.1:${port}` });
    expect(context.getMetadata('net_result')).toBe('-1');
    expect(lines().some((line) => line.code === 'SMTP_E_NET_DENIED' && line.address === `tcp:127.0.0.1:${port}`)).toBe(true);
    await shutdown(plugin);
  });

  it('net_connect to a granted address gets a working connection, made by the host and passed over', async () => {
    const plugin = await isolated({ allowConnect: [`tcp:127.0.0.1:${port}`] });
    const context = await call(plugin, { probe: 'net', address: `tcp:127.0.0.1:${port}` });
    expect(Number(context.getMetadata('net_result'))).toBeGreaterThanOrEqual(0);
    expect(context.getMetadata('net_reply')).toBe('pong\n');
    await shutdown(plugin);
  });

  it('is held to limits.memory_mb: an allocation past it fails, one within it succeeds', async () => {
    const plugin = await isolated({ limits: { memoryMb: 32 } });
    expect((await call(plugin, { probe: 'alloc', mb: '16' })).getMetadata('alloc')).toBe('ok');
    expect((await call(plugin, { probe: 'alloc', mb: '64' })).getMetadata('alloc')).toBe('null');
    // Still alive and serving.
    expect((await call(plugin, { input: 'alive' })).getMetadata('output')).toBe('seen:alive');
    await shutdown(plugin);
  });

  it("sends the child's stdout and stderr to the host's logger, line by line", async () => {
    const { logger, lines } = logCollector();
    const plugin = await isolated({}, logger);
    await call(plugin, { probe: 'print' });
    for (let i = 0; i < 50 && !lines().some((line) => line.msg === 'and on stderr'); i++) await new Promise((r) => setTimeout(r, 10));
    expect(lines().find((line) => line.msg === 'hello from the probe on stdout')).toMatchObject({ stream: 'stdout', level: 30 });
    expect(lines().find((line) => line.msg === 'and on stderr')).toMatchObject({ stream: 'stderr', level: 40 });
    await shutdown(plugin);
  });
});
