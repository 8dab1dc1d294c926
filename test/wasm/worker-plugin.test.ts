import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import { loadWorkerPlugin } from '../../src/wasm/worker-plugin.js';
import { wasmFixture } from '../helpers/fixtures.js';

// A sandboxed plugin in a worker thread of its own: the hook calls made in
// one turn of the event loop travel to the worker together.

function counted(): HookContext {
  const context = new HookContext('message_received');
  context.setMetadata('mode', 'count');
  return context;
}

describe('a sandboxed plugin in its own worker', () => {
  it('answers the calls of one turn each with its own changes, in call order', async () => {
    const plugin = await loadWorkerPlugin(wasmFixture('sandbox_probe'), resolvePluginOptions({}), silentLogger());
    try {
      expect(await plugin.init('{}')).toBe(0);
      expect(await plugin.enable()).toBe(0);
      const first = [1, 2, 3, 4, 5].map(counted);
      expect(await Promise.all(first.map((context) => plugin.executeHook(context)))).toEqual([0, 0, 0, 0, 0]);
      expect(first.map((context) => context.getMetadata('calls'))).toEqual(['1', '2', '3', '4', '5']);
      // Calls of a later turn go on counting in the same instance.
      const later = [counted(), counted()];
      await Promise.all(later.map((context) => plugin.executeHook(context)));
      expect(later.map((context) => context.getMetadata('calls'))).toEqual(['6', '7']);
    } finally {
      await plugin.unload();
    }
  });

  it('runs a lifecycle call made in the same turn as hook calls after them', async () => {
    const plugin = await loadWorkerPlugin(wasmFixture('sandbox_probe'), resolvePluginOptions({}), silentLogger());
    await plugin.init('{}');
    await plugin.enable();
    const contexts = [1, 2, 3].map(counted);
    const calls = contexts.map((context) => plugin.executeHook(context));
    // Unloaded before them, the calls would find no plugin in the worker and fail.
    const unloaded = plugin.unload();
    expect(await Promise.all(calls)).toEqual([0, 0, 0]);
    expect(contexts.map((context) => context.getMetadata('calls'))).toEqual(['1', '2', '3']);
    await unloaded;
  });
});
