import { tmpdir } from 'node:os';
import koffi from 'koffi';
import { describe, expect, it } from 'vitest';
import { HostStatus } from '../../src/abi/hooks.js';
import { encodeFields } from '../../src/plugin/metadata-wire.js';
import { runtimeLibrary } from '../../src/runtime/host-runtime.js';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

/**
 * What native plugins in the event loop's thread set stays in the native copy
 * of the context until the host, or a plugin of another backend, next reads
 * it (HookContext.deferChanges): these tests pin what a plugin author and the
 * server see of it.
 */
describe('native changes copied back when the context is next read', () => {
  it('hands each plugin what the earlier ones set, across backends, and the host reads all of it after the chain', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(fixture('c_plain'));
    await manager.loadPlugin(wasmFixture('c_variant'));
    await manager.loadPlugin(fixture('c_second'));
    const context = HookContext.of('message_filtered', { in: 'echo me' });
    expect(manager.runChain(context)).toEqual({ action: 'continue', answered: 3 });
    // The sandboxed plugin read what the native one before it set, and the native one after it read the sandbox's set.
    expect(context.getMetadata('visited')).toBe('plain,c-variant,second');
    expect(context.getMetadata('out')).toBe('echo me');
    expect([...context.pluginChanges()].map(([key]) => key).sort()).toEqual(['out', 'visited']);
    await manager.deinit();
  });

  it('keeps two events apart on the shared native context: the first one\'s keys are collected before the second loads', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    const plain = await manager.loadPlugin(fixture('c_plain'));
    const second = await manager.loadPlugin(fixture('c_second'));
    const one = HookContext.of('command_validated', { in: 'one' });
    const two = HookContext.of('command_validated', { in: 'two' });
    // Called one by one, as the plugin command does, outside a chain (which collects at its end); neither context is read in between.
    plain.executeHook(one);
    plain.executeHook(two);
    second.executeHook(one);
    expect([one.getMetadata('out'), one.getMetadata('visited')]).toEqual(['one', 'plain,second']);
    expect([two.getMetadata('out'), two.getMetadata('visited')]).toEqual(['two', 'plain']);
    // A chain of both on a context that already holds their keys starts from them.
    expect(manager.runChain(one)).toEqual({ action: 'continue', answered: 2 });
    expect(one.getMetadata('visited')).toBe('plain,second,plain,second');
    await manager.deinit();
  });

  it('keeps the keys set before a plugin cancels, and the next event starts from its own keys', async () => {
    const manager = new PluginManager({ directory: tmpdir() });
    await manager.loadPlugin(fixture('c_plain'));
    await manager.loadPlugin(fixture('c_cancel_flag'));
    await manager.loadPlugin(fixture('c_second'));
    const cancelled = HookContext.of('command_received', { in: 'kept' });
    expect(manager.runChain(cancelled)).toMatchObject({ action: 'cancel', plugin: 'flag-setter' });
    expect(cancelled.cancel).toBe(true);
    expect([cancelled.getMetadata('out'), cancelled.getMetadata('visited')]).toEqual(['kept', 'plain,flag-setter']);
    // The native copy carried the first event's cancel and keys: nothing of them leaks into the next.
    const next = HookContext.of('command_received', { in: 'next' });
    expect(manager.runChain(next)).toMatchObject({ action: 'cancel', plugin: 'flag-setter' });
    expect([next.getMetadata('out'), next.getMetadata('visited')]).toEqual(['next', 'plain,flag-setter']);
    await manager.deinit();
  });
});

describe('smtp_host_load_and_call: an event loaded and its hook called in one crossing', () => {
  it('calls the hook once on a load that succeeds, and on a refused load returns the status negated without calling it', () => {
    const lib = runtimeLibrary();
    const create = lib.func('void *smtp_host_context_create(size_t, size_t, size_t)');
    const destroy = lib.func('void smtp_host_context_destroy(void *ctx)');
    const loadAndCall = lib.func('int64_t smtp_host_load_and_call(void *ctx, int hook, const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len, void *fn)');
    const hookProto = koffi.proto('int smtp_test_load_and_call_hook(void *ctx)');
    let calls = 0;
    const hook = koffi.register(() => {
      calls++;
      return 7;
    }, koffi.pointer(hookProto));
    // Keys of at most 16 bytes, values of at most 8.
    const ctx = create(16, 8, 4);
    try {
      const fits = encodeFields({ key: 'short' }).head;
      const packed = loadAndCall(ctx, 2, fits, fits.length, null, 0, hook) as number;
      expect(packed % 2 ** 32).toBe(7);
      expect(calls).toBe(1);
      const tooLarge = encodeFields({ key: 'longer than eight' }).head;
      expect(loadAndCall(ctx, 2, tooLarge, tooLarge.length, null, 0, hook)).toBe(-HostStatus.TOO_LARGE);
      expect(calls).toBe(1);
    } finally {
      destroy(ctx);
      koffi.unregister(hook);
    }
  });
});
