import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { fixture } from '../helpers/fixtures.js';

function traced(): { config: string; lines: () => string[] } {
  const trace = join(mkdtempSync(join(tmpdir(), 'deps-')), 'trace.log');
  return { config: JSON.stringify({ trace }), lines: () => readFileSync(trace, 'utf8').trim().split('\n') };
}

describe('PluginManager dependencies', () => {
  it('inits and enables in dependency order, ties in the given order, and tears down in reverse', async () => {
    const { config, lines } = traced();
    const manager = new PluginManager({ directory: tmpdir() });
    const { loaded, failed } = await manager.loadPlugins(['c_needs_needs', 'c_second', 'c_needs_plain', 'c_plain'].map((name) => ({ path: fixture(name), config })));
    expect(failed).toEqual([]);
    expect(loaded.map((p) => p.name)).toEqual(['second', 'plain', 'needs-plain', 'needs-needs']);
    await manager.deinit();
    expect(lines().filter((l) => l.endsWith(' init') || l.endsWith(' deinit'))).toEqual([
      'second init', 'plain init', 'needs-plain init', 'needs-needs init',
      'needs-needs deinit', 'needs-plain deinit', 'plain deinit', 'second deinit',
    ]);
  });

  it('refuses a plugin whose dependency is missing, out of range, on a cycle, or failed, and loads the rest', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    const { loaded, failed } = await manager.loadPlugins(['c_second', 'c_needs_plain', 'c_cycle_a', 'c_cycle_b', 'c_future'].map((name) => ({ path: fixture(name) })));
    expect(loaded.map((p) => p.name)).toEqual(['second']);
    const errors = Object.fromEntries(failed.map(({ path, error }) => [path.split('/').pop(), `${error.code}: ${error.message}`]));
    expect(errors).toEqual({
      'libc_future.so': 'SMTP_E_PLUGIN_SERVER_VERSION: plugin "future" needs server >= 9.0.0, this server is 0.28.0',
      'libc_needs_plain.so': 'SMTP_E_PLUGIN_DEPENDENCY: plugin "needs-plain" depends on "plain", which is not loaded',
      'libc_cycle_a.so': 'SMTP_E_PLUGIN_CYCLE: dependency cycle: cycle-a -> cycle-b -> cycle-a',
      'libc_cycle_b.so': 'SMTP_E_PLUGIN_CYCLE: dependency cycle: cycle-a -> cycle-b -> cycle-a',
    });
    await manager.loadPlugin(fixture('c_plain'));
    await expect(manager.loadPlugin(fixture('c_needs_plain2'))).rejects.toThrow('plugin "needs-plain2" depends on plain@^2.0, found 1.0.0');
    // A running plugin satisfies a dependency loaded later.
    expect((await manager.loadPlugin(fixture('c_needs_plain'))).name).toBe('needs-plain');
    await manager.deinit();

    const failing = new PluginManager({ directory: tmpdir() });
    const report = await failing.loadPlugins([{ path: fixture('c_plain_fails') }, { path: fixture('c_needs_plain') }]);
    expect(report.loaded).toEqual([]);
    expect(report.failed.map(({ error }) => error.code)).toEqual(['SMTP_E_PLUGIN_INIT', 'SMTP_E_PLUGIN_DEPENDENCY']);
    await failing.deinit();
  });

  it('refuses to disable or unload a plugin an enabled plugin depends on, unless asked to cascade', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugins(['c_plain', 'c_needs_plain', 'c_needs_needs'].map((name) => ({ path: fixture(name) })));
    await expect(manager.disablePlugin('plain')).rejects.toThrow('cannot disable "plain": enabled plugins depend on it (needs-needs, needs-plain); ask to cascade');
    await expect(manager.unloadPlugin('needs-plain')).rejects.toThrow('cannot unload "needs-plain": enabled plugins depend on it (needs-needs); ask to cascade');
    expect(await manager.disablePlugin('plain', { cascade: true })).toEqual(['needs-needs', 'needs-plain', 'plain']);
    expect(manager.list().map((p) => p.state)).toEqual(['disabled', 'disabled', 'disabled']);
    await expect(manager.enablePlugin('needs-plain')).rejects.toThrow(/depends on "plain", which is not loaded/);
    await manager.enablePlugin('plain');
    await manager.enablePlugin('needs-plain');
    expect(await manager.unloadPlugin('needs-plain', { cascade: true })).toEqual(['needs-plain']);
    await manager.deinit();
  });
});
