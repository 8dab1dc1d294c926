import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { sharedLibraryName } from '../../src/paths.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

/** A plugin directory holding copies of the named fixtures, as 00_<name>.so etc. */
function pluginDir(names: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'plugins-'));
  names.forEach((name, index) => copyFileSync(fixture(name), join(dir, sharedLibraryName(`${String(index).padStart(2, '0')}_${name}`))));
  return dir;
}

const SPAM = 'winner! casino: click here for free money, act now, congratulations';

describe('PluginManager', () => {
  it('counts who answered: an authenticator disabled after the check approves nothing', async () => {
    const dir = pluginDir(['c_plain', 'c_policy']);
    const manager = new PluginManager({ directory: dir });
    await manager.loadPlugins([{ path: join(dir, sharedLibraryName('00_c_plain')) }, { path: join(dir, sharedLibraryName('01_c_policy')), authenticator: true }]);
    const login = (): HookContext => HookContext.of('auth_started', { username: 'alice', password: 'secret', method: 'PLAIN' });
    expect(manager.handles('auth_started', 'authenticators')).toBe(true);
    expect(manager.runChain(login(), 'authenticators')).toEqual({ action: 'continue', answered: 1 });
    // The server checked handles() before the other plugins ran; meanwhile the authenticator went down.
    await manager.disablePlugin('policy');
    expect(manager.runChain(login(), 'authenticators')).toEqual({ action: 'continue', answered: 0 });
    expect(manager.runChain(login(), 'others')).toEqual({ action: 'continue', answered: 1 });
    await manager.deinit();
  });

  it('answers which of a list of hooks are handled from a cache that follows every change of the chains', async () => {
    const dir = pluginDir(['spam_filter']);
    const manager = new PluginManager({ directory: dir });
    const stages = Object.freeze(['message_received', 'message_validated', 'message_filtered'] as const);
    expect(manager.handledAmong(stages)).toEqual([]);
    await manager.loadAllPlugins();
    expect(manager.handledAmong(stages)).toEqual(['message_filtered']);
    expect(manager.handledAmong(['message_received'])).toEqual([]);
    await manager.disablePlugin('spam-filter');
    expect(manager.handledAmong(stages)).toEqual([]);
    await manager.enablePlugin('spam-filter');
    expect(manager.handledAmong(stages)).toEqual(['message_filtered']);
    await manager.deinit();
    expect(manager.handledAmong(stages)).toEqual([]);
  });

  it('loads every library in the directory, skips a broken one and keeps serving', async () => {
    const dir = pluginDir(['c_plain', 'c_bad_abi', 'spam_filter', 'c_second']);
    const manager = new PluginManager({ directory: dir });
    const { loaded, failed } = await manager.loadAllPlugins();
    expect(loaded.map((p) => p.name)).toEqual(['plain', 'spam-filter', 'second']);
    expect(failed).toHaveLength(1);
    expect(failed[0]!.error.code).toBe('SMTP_E_PLUGIN_ABI_VERSION');
    expect(failed[0]!.path).toContain('01_c_bad_abi');

    const context = new HookContext('message_filtered');
    context.setMetadata('message_body', 'hello');
    expect(await manager.executeHook('message_filtered', context)).toEqual({ action: 'continue', answered: 3 });
    expect(context.getMetadata('visited')).toBe('plain,second');
    expect(context.getMetadata('spam_score')).toBe('0');
    // A second scan loads nothing twice.
    expect((await manager.loadAllPlugins()).loaded).toEqual([]);
    await manager.deinit();
  });

  it('runs the chain in load order and stops at stop, cancel or an error', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(fixture('c_plain'));
    await manager.loadPlugin(fixture('spam_filter'), '{"spam_threshold": 5.0}');
    await manager.loadPlugin(fixture('c_second'));

    const spam = new HookContext('message_filtered');
    spam.setMetadata('message_body', SPAM);
    expect(await manager.executeHook('message_filtered', spam)).toEqual({ action: 'stop', plugin: 'spam-filter' });
    expect(spam.getMetadata('visited')).toBe('plain');
    expect(spam.getMetadata('is_spam')).toBe('true');
    expect(spam.cancel).toBe(false);

    await manager.loadPlugin(fixture('c_cancel_flag'));
    await manager.loadPlugin(fixture('c_bad_code'));
    const received = new HookContext('message_received');
    expect(await manager.executeHook('message_received', received)).toEqual({ action: 'cancel', plugin: 'flag-setter' });
    expect(received.cancel).toBe(true);
    expect(received.getMetadata('visited')).toBe('plain,second,flag-setter');

    await manager.disablePlugin('flag-setter');
    const failing = await manager.executeHook('message_received', new HookContext('message_received'));
    expect(failing.action).toBe('error');
    expect(failing.plugin).toBe('bad-code');
    expect(failing.error?.code).toBe('SMTP_E_PLUGIN_HOOK_CODE');
    // The failing plugin harmed nothing: the others still run.
    await manager.unloadPlugin('bad-code');
    const after = new HookContext('message_received');
    expect(await manager.executeHook('message_received', after)).toEqual({ action: 'continue', answered: 2 });
    expect(after.getMetadata('visited')).toBe('plain,second');
    await manager.deinit();
  });

  it('skips a plugin for hooks it does not declare', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(fixture('c_filtered_only'));
    await manager.loadPlugin(fixture('c_plain'));
    const received = new HookContext('message_received');
    await manager.executeHook('message_received', received);
    expect(received.getMetadata('visited')).toBe('plain');
    const filtered = new HookContext('message_filtered');
    await manager.executeHook('message_filtered', filtered);
    expect(filtered.getMetadata('visited')).toBe('filtered-only,plain');
    await manager.deinit();
  });

  it('enables and disables at run time, and refuses duplicates and unknown names', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(fixture('c_spam_filter'));
    const spam = () => {
      const context = new HookContext('message_filtered');
      context.setMetadata('message_body', SPAM);
      return manager.executeHook('message_filtered', context);
    };
    expect((await spam()).action).toBe('stop');
    await manager.disablePlugin('c-spam-filter');
    expect((await spam()).action).toBe('continue');
    await manager.enablePlugin('c-spam-filter');
    expect((await spam()).action).toBe('stop');
    await expect(manager.loadPlugin(fixture('c_spam_filter'))).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_DUPLICATE' }));
    await expect(manager.disablePlugin('nobody')).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_UNKNOWN' }));
    await expect(manager.loadPlugin(fixture('c_init_fails'))).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_INIT' }));
    expect(manager.list().map((p) => p.name)).toEqual(['c-spam-filter']);
    await manager.deinit();
  });

  it('inits and enables in load order, and disables and deinits in reverse', async () => {
    const trace = join(mkdtempSync(join(tmpdir(), 'trace-')), 'trace.log');
    const config = JSON.stringify({ trace });
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(fixture('c_plain'), config);
    await manager.loadPlugin(fixture('c_second'), config);
    await manager.deinit();
    expect(readFileSync(trace, 'utf8').trim().split('\n')).toEqual([
      'plain init', 'plain enable', 'second init', 'second enable',
      'second disable', 'second deinit', 'plain disable', 'plain deinit',
    ]);
    expect(manager.list()).toEqual([]);
  });
});

describe('PluginManager.bodyCopies (what the body budget counts: docs/hooks.md)', () => {
  it('counts each enabled sandboxed plugin of the body hooks once, and no in-process native plugin', async () => {
    const manager = new PluginManager({ directory: mkdtempSync(join(tmpdir(), 'plugins-')) });
    const bodyHooks = ['message_received', 'message_validated', 'message_filtered'] as const;
    await manager.loadPlugin(fixture('c_spam_filter'), '{}');
    expect(manager.bodyCopies(bodyHooks)).toBe(0);
    await manager.loadPlugin(wasmFixture('spam_filter'), '{}');
    expect(manager.bodyCopies(bodyHooks)).toBe(1);
    // read-set declares no hooks, so it handles all three: still one copy.
    await manager.loadPlugin(wasmFixture('read_set'), '{}');
    expect(manager.bodyCopies(bodyHooks)).toBe(2);
    await manager.disablePlugin('spam-filter');
    expect(manager.bodyCopies(bodyHooks)).toBe(1);
    await manager.deinit();
  });
});
