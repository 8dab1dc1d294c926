import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isHostError } from '../../src/errors.js';
import { loadNativePlugin } from '../../src/native/native-plugin.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { PluginInstance } from '../../src/plugin/lifecycle.js';
import { fixture } from '../helpers/fixtures.js';

async function illegal(run: () => unknown): Promise<string> {
  try {
    await run();
  } catch (error) {
    expect(isHostError(error, 'SMTP_E_PLUGIN_STATE')).toBe(true);
    return (error as Error).message;
  }
  throw new Error('expected SMTP_E_PLUGIN_STATE');
}

describe('PluginInstance lifecycle', () => {
  it('walks loaded -> initialized -> enabled -> disabled -> deinitialized -> unloaded', async () => {
    const instance = new PluginInstance(loadNativePlugin(fixture('c_plain')));
    const context = new HookContext('message_received');
    expect(instance.state).toBe('loaded');
    expect(await illegal(() => instance.enable())).toContain('cannot enable in state loaded');
    expect(await illegal(() => instance.executeHook(context))).toContain('cannot executeHook in state loaded');
    await instance.init('{}');
    expect(await illegal(() => instance.init('{}'))).toContain('cannot init in state initialized');
    await instance.enable();
    expect(instance.executeHook(context)).toEqual({ code: 0, action: 'continue' });
    expect(await illegal(() => instance.deinit())).toContain('cannot deinit in state enabled');
    await instance.disable();
    expect(await illegal(() => instance.executeHook(context))).toContain('in state disabled');
    await instance.enable();
    await instance.disable();
    await instance.deinit();
    expect(await illegal(() => instance.enable())).toContain('cannot enable in state deinitialized');
    await instance.unload();
    expect(instance.state).toBe('unloaded');
    expect(await illegal(() => instance.unload())).toContain('cannot unload in state unloaded');
  });

  it('reads stop, cancel by code and cancel by flag', async () => {
    const cases = [
      ['c_stop', { code: 1, action: 'stop' }, false],
      ['c_cancel_code', { code: 2, action: 'cancel' }, true],
      ['c_cancel_flag', { code: 0, action: 'cancel' }, true],
    ] as const;
    for (const [name, result, cancel] of cases) {
      const instance = new PluginInstance(loadNativePlugin(fixture(name)));
      await instance.init('{}');
      await instance.enable();
      const context = new HookContext('message_received');
      expect(instance.executeHook(context), name).toEqual(result);
      expect(context.cancel, name).toBe(cancel);
      await instance.shutdown();
      expect(instance.state).toBe('unloaded');
    }
  });

  it('turns an unknown return code into SMTP_E_PLUGIN_HOOK_CODE naming the plugin and a 4xx reply', async () => {
    const instance = new PluginInstance(loadNativePlugin(fixture('c_bad_code')));
    await instance.init('{}');
    await instance.enable();
    try {
      instance.executeHook(new HookContext('message_filtered'));
      throw new Error('expected an error');
    } catch (error) {
      expect(isHostError(error, 'SMTP_E_PLUGIN_HOOK_CODE')).toBe(true);
      expect((error as Error).message).toBe('plugin "bad-code": message_filtered returned 7 (expected 0, 1 or 2)');
      expect((error as { reply?: { code: number } }).reply?.code).toBe(451);
    }
    await instance.shutdown();
  });

  it('calls deinit after a failed init, so the plugin can free what init half-built, then only unloads', async () => {
    const trace = join(mkdtempSync(join(tmpdir(), 'lifecycle-')), 'trace.log');
    const instance = new PluginInstance(loadNativePlugin(fixture('c_init_fails')));
    await expect(instance.init(JSON.stringify({ trace }))).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_INIT' }));
    expect(readFileSync(trace, 'utf8')).toBe('c-variant deinit\n');
    expect(instance.state).toBe('deinitialized');
    await instance.shutdown();
    expect(instance.state).toBe('unloaded');
    expect(readFileSync(trace, 'utf8')).toBe('c-variant deinit\n');
  });
});
