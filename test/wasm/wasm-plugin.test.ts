import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { PluginInstance } from '../../src/plugin/lifecycle.js';
import { encodeFields } from '../../src/plugin/metadata-wire.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import { loadWasmPlugin } from '../../src/wasm/wasm-plugin.js';
import { wasmFixture } from '../helpers/fixtures.js';
import { buildModule, metadataData, pluginFunctions, type ModuleSpec } from '../helpers/wasm-module.js';
import { expectCode } from '../helpers/expect-code.js';
import { chainRefusal } from '../../src/server/reply-policy.js';

const dir = mkdtempSync(join(tmpdir(), 'wasm-bad-'));
function moduleFile(name: string, spec: ModuleSpec | Uint8Array | string): string {
  const path = join(dir, `${name}.wasm`);
  writeFileSync(path, typeof spec === 'string' || spec instanceof Uint8Array ? spec : buildModule(spec));
  return path;
}
const { data } = metadataData();


async function probe(limits: { memoryMb?: number; hookTimeoutMs?: number; metadataValueBytesMax?: number } = {}): Promise<PluginInstance> {
  const instance = new PluginInstance(loadWasmPlugin(wasmFixture('sandbox_probe'), { options: resolvePluginOptions({ limits }) }));
  await instance.init('{}');
  await instance.enable();
  return instance;
}

function run(instance: PluginInstance, mode: string, extra: Record<string, string> = {}): HookContext {
  const context = new HookContext('message_received');
  context.setMetadata('mode', mode);
  for (const [key, value] of Object.entries(extra)) context.setMetadata(key, value);
  instance.executeHook(context);
  return context;
}

describe('sandboxed plugins: bad input gets a coded error and harms nothing else', () => {
  it('refuses files that are not usable modules', async () => {
    const good = readFileSync(wasmFixture('read_set'));
    await expectCode(() => loadWasmPlugin(moduleFile('text', 'just some text')), 'SMTP_E_WASM_INVALID', 'not a WebAssembly module');
    await expectCode(() => loadWasmPlugin(moduleFile('truncated', good.subarray(0, good.length >> 1))), 'SMTP_E_WASM_INVALID');
    await expectCode(() => loadWasmPlugin(moduleFile('missing', { functions: { smtp_plugin_abi_version: 0x10000 } })), 'SMTP_E_PLUGIN_MISSING_EXPORT', 'smtp_plugin_init');
    await expectCode(() => loadWasmPlugin(moduleFile('abi2', { functions: pluginFunctions({ smtp_plugin_abi_version: 0x20000 }), data })), 'SMTP_E_PLUGIN_ABI_VERSION', 'built for ABI 2.0');
    await expectCode(() => loadWasmPlugin(moduleFile('socket', { functions: pluginFunctions(), data, imports: [['env', 'connect']] })), 'SMTP_E_WASM_IMPORT', '"env.connect"');
    await expectCode(() => loadWasmPlugin(moduleFile('start', { functions: pluginFunctions(), data, trappingStart: true })), 'SMTP_E_WASM_TRAP', 'start');
    await expectCode(() => loadWasmPlugin(moduleFile('nometa', { functions: pluginFunctions({ smtp_plugin_get_metadata: 0 }), data })), 'SMTP_E_PLUGIN_METADATA', 'NULL');
    await expectCode(() => loadWasmPlugin(moduleFile('oobmeta', { functions: pluginFunctions({ smtp_plugin_get_metadata: 70_000 }), data })), 'SMTP_E_WASM_BOUNDS');
    await expectCode(() => loadWasmPlugin(moduleFile('bigmem', good), { options: resolvePluginOptions({ limits: { memoryMb: 1 } }) }), 'SMTP_E_WASM_MEMORY');
  });

  it('takes a plugin whose disable traps out of the chain all the same', async () => {
    const instance = new PluginInstance(loadWasmPlugin(moduleFile('baddisable', { functions: pluginFunctions({ smtp_plugin_disable: 'trap' }), data })));
    await instance.init('{}');
    await instance.enable();
    await expectCode(() => instance.disable(), 'SMTP_E_WASM_TRAP', 'disable');
    expect(instance.state).toBe('disabled');
  });

  it('refuses out-of-bounds lengths handed back for metadata', async () => {
    const liar = new PluginInstance(loadWasmPlugin(moduleFile('liar', { functions: pluginFunctions({ smtp_wasm_context_status: 4, smtp_wasm_take_changes: 0x7fff_0000 }), data })));
    await liar.init('{}');
    await liar.enable();
    await expectCode(() => liar.executeHook(new HookContext('message_received')), 'SMTP_E_WASM_BOUNDS', 'take_changes reported');
  });

  it('turns a trapping init and a trapping hook into coded errors', async () => {
    const instance = new PluginInstance(loadWasmPlugin(wasmFixture('sandbox_probe')));
    await expectCode(() => instance.init('{"init":"trap"}'), 'SMTP_E_WASM_TRAP', 'init');
    const failing = new PluginInstance(loadWasmPlugin(wasmFixture('sandbox_probe')));
    await expectCode(() => failing.init('{"init":"fail"}'), 'SMTP_E_PLUGIN_INIT', 'init returned 3');
    const p = await probe();
    await expectCode(() => run(p, 'trap'), 'SMTP_E_WASM_TRAP', 'message_received');
    await expectCode(() => run(p, 'code7'), 'SMTP_E_PLUGIN_HOOK_CODE', 'returned 7');
  });

  it('interrupts an infinite loop within twice its deadline and replaces the instance', async () => {
    for (const file of ['sandbox_probe', 'sandbox_probe_newest']) {
      const instance = new PluginInstance(loadWasmPlugin(wasmFixture(file), { options: resolvePluginOptions({ limits: { hookTimeoutMs: 200 } }) }));
      await instance.init('{}');
      await instance.enable();
      expect(run(instance, 'count').getMetadata('calls')).toBe('1');
      expect(run(instance, 'count').getMetadata('calls')).toBe('2');
      const start = performance.now();
      await expectCode(() => run(instance, 'loop'), 'SMTP_E_WASM_DEADLINE', 'interrupted after its 200 ms deadline');
      // The bound: interrupted within twice the deadline.
      const elapsed = performance.now() - start;
      expect(elapsed, file).toBeLessThan(400);
      // A fresh instance answers the next call: its counter starts again.
      expect(run(instance, 'count').getMetadata('calls'), file).toBe('1');
      await instance.shutdown();
    }
  });

  it('gives every call a deadline of its own: calls that together take longer than one deadline all finish', async () => {
    // The deadline starts at a call's first clock read (src/wasm/wasm-plugin.ts #clock), not at its
    // start: a deadline left from an earlier call must not cut a later one.
    const instance = await probe({ hookTimeoutMs: 200 });
    const start = performance.now();
    let calls = 0;
    while (performance.now() - start < 500) {
      expect(run(instance, 'spin-ms', { ms: '40' }).getMetadata('calls')).toBe(String(++calls));
    }
    expect(calls).toBeGreaterThan(2);
    // And a call that runs past its own deadline is still cut, after all those that did not.
    await expectCode(() => run(instance, 'loop'), 'SMTP_E_WASM_DEADLINE', 'interrupted after its 200 ms deadline');
    await instance.shutdown();
  });

  it('stops a memory bomb at the memory limit and keeps working', async () => {
    const instance = await probe({ memoryMb: 16 });
    await expectCode(() => run(instance, 'bomb'), 'SMTP_E_WASM_TRAP');
    const handled = run(instance, 'bomb-handled');
    const allocated = Number(handled.getMetadata('allocated_mb'));
    expect(allocated).toBeGreaterThan(4);
    expect(allocated).toBeLessThan(16);
    // The bomb's trap replaced the instance; the handled run was its first call.
    expect(run(instance, 'count').getMetadata('calls')).toBe('2');
  });

  it('bounds metadata copied in and out', async () => {
    const instance = await probe({ metadataValueBytesMax: 1024 * 1024 });
    const big = run(instance, 'big');
    expect(big.getMetadata('set_error')).toBe('MetadataTooLarge');
    expect(big.hasMetadata('big')).toBe(false);
    await expectCode(() => run(instance, 'count', { body: 'x'.repeat(1024 * 1024 + 1) }), 'SMTP_E_METADATA_LIMIT', 'over the bound copied in');
    // The refused call never reached the plugin.
    expect(run(instance, 'count').getMetadata('calls')).toBe('2');
  });

  it('copies out changes larger than its buffers when the loaded context fills the input buffer exactly', async () => {
    // Over 1 MiB the input buffer is sized to the text: no room behind it, and the 2 MiB value is larger
    // than the 4 KiB scratch buffer: the guest is asked what it needs and the scratch buffer grows to it.
    const instance = await probe({ metadataValueBytesMax: 4 * 1024 * 1024 });
    const big = run(instance, 'big', { body: 'y'.repeat(1536 * 1024) });
    expect(big.getMetadataBytes('big')?.length).toBe(2 * 1024 * 1024);
    expect(big.getMetadata('calls')).toBe('1');
    await instance.shutdown();
  });

  it('keeps the manager serving other plugins while one fails, per its on_error policy', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(wasmFixture('sandbox_probe'), '{}', resolvePluginOptions({ limits: { hookTimeoutMs: 30 }, onError: 'continue', maxConsecutiveFailures: 2 }));
    await manager.loadPlugin(wasmFixture('read_set'));
    const loop = (): HookContext => {
      const context = new HookContext('message_received');
      context.setMetadata('mode', 'loop');
      context.setMetadata('a', 'still served');
      return context;
    };
    const first = loop();
    expect(await manager.executeHook('message_received', first)).toEqual({ action: 'continue', skipped: ['sandbox-probe'], answered: 1 });
    expect(first.getMetadata('b')).toBe('still served');
    await manager.executeHook('message_received', loop());
    expect(manager.get('sandbox-probe')!.state).toBe('disabled');
    const after = loop();
    expect(await manager.executeHook('message_received', after)).toEqual({ action: 'continue', answered: 1 });
    // The disabled plugin was not called (it sets "calls" on every call it gets).
    expect(after.hasMetadata('calls')).toBe(false);
    expect(after.getMetadata('b')).toBe('still served');
    await manager.deinit();

    const strict = new PluginManager({ directory: tmpdir() });
    await strict.loadPlugin(wasmFixture('sandbox_probe'), '{}', resolvePluginOptions({ limits: { hookTimeoutMs: 30 } }));
    const outcome = await strict.executeHook('message_received', loop());
    expect(outcome).toMatchObject({ action: 'error', plugin: 'sandbox-probe', policy: 'tempfail' });
    expect(chainRefusal('message_received', outcome, null)).toMatchObject({ code: 451, text: '4.3.0 Temporary plugin failure, try again later', plugin: 'sandbox-probe' });
    expect(outcome.error?.code).toBe('SMTP_E_WASM_DEADLINE');
    await strict.deinit();
  });
});

describe('sandboxed plugins and large messages', () => {
  it('scans messages of changing sizes up to 25 MiB in a 128 MiB sandbox, one after another', async () => {
    // The host's buffer in guest memory used to double: after a 10 MiB message
    // a slightly larger one asked for 20 MiB, and a 25 MiB one for 40 MiB.
    const options = resolvePluginOptions({ limits: { memoryMb: 128, metadataValueBytesMax: 64 * 1024 * 1024 } });
    const filter = new PluginInstance(loadWasmPlugin(wasmFixture('spam_filter'), { options }));
    await filter.init('{}');
    await filter.enable();
    const spam = 'casino winner click here free money act now ';
    for (const kib of [1, 10_240, 10_241, 10_300, 20_480, 1, 25_600, 25_600, 10_240, 26_000]) {
      const context = new HookContext('message_filtered');
      const body = Buffer.alloc(kib * 1024, 'a');
      body.write(spam, body.length - spam.length);
      context.setMetadata('message_body', body);
      context.setMetadata('sender_domain', 'example.org');
      expect(filter.executeHook(context).code, `${kib} KiB`).toBe(1);
      expect(context.getMetadata('is_spam')).toBe('true');
    }
    await filter.shutdown();
  });
});

describe('sandboxed plugins get the message body only when they read it (ABI 1.3)', () => {
  const MiB = 1024 * 1024;
  /** An event as the server encodes it: the body is the encoding's tail, left out of a lazy load. */
  const withBody = (mode: string, body: Buffer): HookContext =>
    new HookContext('message_received', undefined, encodeFields({ mode, sender_domain: 'example.org', message_body: body }, 'message_body'));

  it('copies the body in at the first read only, and the changes made since the event still reach the plugin', async () => {
    const instance = await probe({ memoryMb: 64, metadataValueBytesMax: 16 * MiB });
    const memoryBytes = (): number => {
      const bytes = instance.plugin.runtimeStats!().memoryBytes;
      if (bytes === null) throw new Error('an in-thread sandbox reports its memory');
      return bytes;
    };
    const body = Buffer.alloc(8 * MiB, 'a');
    body.write('the very end....', body.length - 16);
    const skipped = withBody('count', body);
    instance.executeHook(skipped);
    expect(skipped.getMetadata('calls')).toBe('1');
    // The 8 MiB body was never copied into a plugin that did not read it.
    const before = memoryBytes();
    expect(before).toBeLessThan(8 * MiB);
    const read = withBody('body', body);
    read.setMetadata('after', 'set since the event');
    instance.executeHook(read);
    expect(read.getMetadata('body_len')).toBe(String(8 * MiB));
    expect(read.getMetadata('body_end')).toBe('the very end....');
    expect(read.getMetadata('after_seen')).toBe('set since the event');
    expect(memoryBytes()).toBeGreaterThanOrEqual(before + 8 * MiB);
    await instance.shutdown();
  });

  it('ends a call whose body does not fit the memory limit with SMTP_E_WASM_MEMORY, and serves the next call', async () => {
    const instance = await probe({ memoryMb: 16, metadataValueBytesMax: 16 * MiB });
    const body = Buffer.alloc(12 * MiB, 'b');
    // Not read, the body is never copied in: it fits whatever its size.
    expect(instance.executeHook(withBody('count', body)).code).toBe(0);
    await expectCode(() => instance.executeHook(withBody('body', body)), 'SMTP_E_WASM_MEMORY', `no room for the ${12 * MiB}-byte message body within 16 MiB`);
    // The call was cut inside the plugin: the instance was replaced, and its count starts again.
    expect(run(instance, 'count').getMetadata('calls')).toBe('1');
    await instance.shutdown();
  });
});

describe('sandboxed plugins behave like native ones', () => {
  it('reads and sets metadata, binary-safe, and reports cancel', async () => {
    const instance = new PluginInstance(loadWasmPlugin(wasmFixture('read_set')));
    await instance.init('{}');
    await instance.enable();
    const context = new HookContext('message_received');
    const bytes = Uint8Array.from([0, 1, 2, 0, 255]);
    context.setMetadata('a', bytes);
    expect(instance.executeHook(context)).toEqual({ code: 0, action: 'continue' });
    expect(Uint8Array.from(context.getMetadataBytes('b')!)).toEqual(bytes);
    await instance.shutdown();
    const p = await probe();
    const cancelled = run(p, 'cancel');
    expect(cancelled.cancel).toBe(true);
  });
});
