import { describe, expect, it } from 'vitest';
import { ABI_VERSION, formatAbiVersion } from '../../src/abi/hooks.js';
import { loadNativePlugin } from '../../src/native/native-plugin.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { fixture } from '../helpers/fixtures.js';
import { expectCode } from '../helpers/expect-code.js';


describe('the native backend', () => {
  it('refuses each broken library with a coded error naming the file and the problem', async () => {
    await expectCode(() => loadNativePlugin('/nonexistent/libnothing.so'), 'SMTP_E_PLUGIN_NOT_FOUND', '/nonexistent/libnothing.so');
    await expectCode(() => loadNativePlugin(fixture('not_a_library')), 'SMTP_E_PLUGIN_NOT_LIBRARY', 'not_a_library');
    await expectCode(() => loadNativePlugin(fixture('c_no_marker')), 'SMTP_E_PLUGIN_MISSING_EXPORT', 'smtp_plugin_abi_version');
    await expectCode(() => loadNativePlugin(fixture('c_bad_abi')), 'SMTP_E_PLUGIN_ABI_VERSION', `built for ABI 2.0, this host runs ABI ${formatAbiVersion(ABI_VERSION)}`);
    await expectCode(() => loadNativePlugin(fixture('c_missing_disable')), 'SMTP_E_PLUGIN_MISSING_EXPORT', 'smtp_plugin_disable');
    await expectCode(() => loadNativePlugin(fixture('c_null_metadata')), 'SMTP_E_PLUGIN_METADATA', 'get_metadata returned NULL');
    await expectCode(() => loadNativePlugin(fixture('c_bad_utf8')), 'SMTP_E_PLUGIN_METADATA', 'metadata author is not valid UTF-8');
    await expectCode(() => loadNativePlugin(fixture('c_bad_name')), 'SMTP_E_PLUGIN_METADATA', 'metadata name "bad name!"');
  });

  it('falls back to the six individual exports when smtp_plugin_get_interface is absent', async () => {
    for (const name of ['c_individual', 'read_set']) {
      const plugin = loadNativePlugin(fixture(name));
      expect(plugin.init('{}')).toBe(0);
      const context = new HookContext('message_received');
      context.setMetadata('a', 'x');
      context.setMetadata('in', 'y');
      expect(plugin.executeHook(context)).toBe(0);
      expect(context.getMetadata(name === 'read_set' ? 'b' : 'out')).toBe(name === 'read_set' ? 'x' : 'y');
      await plugin.deinit();
      await plugin.unload();
    }
  });

  it('passes metadata values binary-safe, NUL bytes included, both ways', async () => {
    const plugin = loadNativePlugin(fixture('c_plain'));
    expect(plugin.init('{}')).toBe(0);
    const bytes = Uint8Array.from([0, 1, 2, 0, 255, 10, 0]);
    const context = new HookContext('message_received');
    context.setMetadata('in', bytes);
    plugin.executeHook(context);
    expect(Uint8Array.from(context.getMetadataBytes("out")!)).toEqual(bytes);
    // A second call on the same context sees the first call's changes.
    plugin.executeHook(context);
    expect(context.getMetadata('visited')).toBe('plain,plain');
    await plugin.deinit();
    await plugin.unload();
  });

  it('keeps host-set values current between calls on one context', async () => {
    const plugin = loadNativePlugin(fixture('read_set'));
    await plugin.init('{}');
    const context = new HookContext('message_received');
    for (const value of ['one', 'two', 'three']) {
      context.setMetadata('a', value);
      plugin.executeHook(context);
      expect(context.getMetadata('b')).toBe(value);
    }
    await plugin.deinit();
    await plugin.unload();
  });
});
