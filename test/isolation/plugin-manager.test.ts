import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import { fixture } from '../helpers/fixtures.js';

describe('the manager with a process-isolated plugin', () => {
  it("applies its on_error to a crash, counts the failures, and disables it after max_consecutive_failures; the plugins after it keep serving", async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    const probe = await manager.loadPlugin(fixture('c_isolation_probe'), '{}', resolvePluginOptions({ isolation: 'process', onError: 'reject', maxConsecutiveFailures: 2 }));
    await manager.loadPlugin(fixture('c_plain'), '{}', resolvePluginOptions({ isolation: 'process' }));
    expect(probe.plugin.backend).toBe('process');

    const crash = (): HookContext => HookContext.of('message_received', { probe: 'segfault' });
    const first = await manager.executeHook('message_received', crash());
    expect(first).toMatchObject({ action: 'error', plugin: 'isolation-probe', policy: 'reject' });
    expect(first.error?.code).toBe('SMTP_E_PLUGIN_CRASHED');
    expect(first.error?.reply).toEqual({ code: 451, enhanced: '4.3.0' });
    // A success in between resets the count.
    const fine = HookContext.of('message_received', { input: 'x' });
    expect(await manager.executeHook('message_received', fine)).toEqual({ action: 'continue', answered: 2 });
    expect(fine.getMetadata('output')).toBe('seen:x');
    expect(fine.getMetadata('visited')).toBe('plain');
    await manager.executeHook('message_received', crash());
    expect(probe.state).toBe('enabled');
    await manager.executeHook('message_received', crash());
    await new Promise((r) => setTimeout(r, 50));
    expect(probe.state).toBe('disabled');
    const after = HookContext.of('message_received', { probe: 'segfault' });
    expect(await manager.executeHook('message_received', after)).toEqual({ action: 'continue', answered: 1 });
    expect(after.getMetadata('visited')).toBe('plain');
    await manager.deinit();
  });
});
