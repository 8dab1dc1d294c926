import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { nativeRuns, nativeRunsCalled } from '../../src/manager/native-runs.js';
import { PluginManager, type Entry, type HookOutcome } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

interface Step {
  readonly name: string;
  readonly onError?: 'continue' | 'reject';
}

/** A manager holding the fixtures in order; `traced` times every call (then no chain runs in one crossing). */
async function managerOf(steps: readonly Step[], traced: boolean, lines: Record<string, unknown>[] = []): Promise<PluginManager> {
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const manager = new PluginManager({ directory: mkdtempSync(join(tmpdir(), 'runs-')), logger, traceHooks: traced });
  for (const { name, onError } of steps) await manager.loadPlugin(fixture(name), '{}', resolvePluginOptions(onError === undefined ? {} : { onError }));
  return manager;
}

/** What one message_received event gives: the outcome, the plugins that ran (in order) and the cancel flag. */
function fire(manager: PluginManager): { outcome: HookOutcome; visited: string | undefined; cancel: boolean; counterError: string | undefined } {
  const context = HookContext.of('message_received', { sender: 'a@example.org', key: 'native-runs' });
  const outcome = manager.runChain(context) as HookOutcome;
  const { error: _error, ...comparable } = outcome;
  return { outcome: comparable as HookOutcome, visited: context.getMetadata('visited'), cancel: context.cancel, counterError: context.getMetadata('counter_error') };
}

describe('native runs: consecutive native plugins called in one crossing', () => {
  const chains: { what: string; steps: Step[]; expected: ReturnType<typeof fire> }[] = [
    {
      what: 'every plugin continues',
      steps: [{ name: 'c_plain' }, { name: 'c_second' }, { name: 'c_filtered_only' }, { name: 'c_individual' }],
      expected: { outcome: { action: 'continue', answered: 3 }, visited: 'plain,second,individual', cancel: false, counterError: undefined },
    },
    {
      what: 'a plugin stops the chain in the middle of a run',
      steps: [{ name: 'c_plain' }, { name: 'c_stop' }, { name: 'c_second' }],
      expected: { outcome: { action: 'stop', plugin: 'stopper' }, visited: 'plain,stopper', cancel: false, counterError: undefined },
    },
    {
      what: 'a plugin sets the cancel flag and returns continue',
      steps: [{ name: 'c_plain' }, { name: 'c_cancel_flag' }, { name: 'c_second' }],
      expected: { outcome: { action: 'cancel', plugin: 'flag-setter' }, visited: 'plain,flag-setter', cancel: true, counterError: undefined },
    },
    {
      what: 'a plugin returns a code the ABI does not have, under on_error = "continue"',
      steps: [{ name: 'c_plain' }, { name: 'c_bad_code', onError: 'continue' }, { name: 'c_second' }],
      expected: { outcome: { action: 'continue', skipped: ['bad-code'], answered: 2 }, visited: 'plain,bad-code,second', cancel: false, counterError: undefined },
    },
    {
      what: 'the same under on_error = "reject"',
      steps: [{ name: 'c_plain' }, { name: 'c_bad_code', onError: 'reject' }, { name: 'c_second' }],
      expected: { outcome: { action: 'error', plugin: 'bad-code', policy: 'reject' } as HookOutcome, visited: 'plain,bad-code', cancel: false, counterError: undefined },
    },
    {
      what: 'a plugin is refused the host counters (no allow_counters) between two others',
      steps: [{ name: 'c_plain' }, { name: 'counter_probe' }, { name: 'c_second' }],
      expected: { outcome: { action: 'continue', answered: 3 }, visited: 'plain,second', cancel: false, counterError: 'CounterDenied' },
    },
  ];

  for (const { what, steps, expected } of chains) {
    it(`answers as plugin-by-plugin calls do when ${what}`, async () => {
      const fusedLines: Record<string, unknown>[] = [];
      const fused = await managerOf(steps, false, fusedLines);
      const tracedLines: Record<string, unknown>[] = [];
      const traced = await managerOf(steps, true, tracedLines);
      const before = nativeRunsCalled();
      const one = fire(fused);
      expect(nativeRunsCalled()).toBeGreaterThan(before);
      const calledBefore = nativeRunsCalled();
      const other = fire(traced);
      // Every call timed: plugin by plugin.
      expect(nativeRunsCalled()).toBe(calledBefore);
      expect(one).toEqual(expected);
      expect(other).toEqual(expected);
      // A refusal is logged as the refused plugin's, whichever way it ran.
      const denials = (lines: Record<string, unknown>[]): unknown[] => lines.filter((line) => line.code === 'SMTP_E_COUNTER_DENIED').map((line) => String(line.file).endsWith('counter_probe.so'));
      expect(denials(fusedLines)).toEqual(denials(tracedLines));
      if (expected.counterError !== undefined) expect(denials(fusedLines)).toEqual([true]);
      await fused.deinit();
      await traced.deinit();
    });
  }

  it('leaves a disabled plugin out and runs again once it is enabled', async () => {
    const manager = await managerOf([{ name: 'c_plain' }, { name: 'c_second' }, { name: 'c_stop' }], false);
    expect(fire(manager).visited).toBe('plain,second,stopper');
    await manager.disablePlugin('second');
    expect(fire(manager)).toMatchObject({ outcome: { action: 'stop', plugin: 'stopper' }, visited: 'plain,stopper' });
    await manager.enablePlugin('second');
    expect(fire(manager).visited).toBe('plain,second,stopper');
    await manager.deinit();
  });

  it('groups only consecutive native plugins on the shared context, two or more', async () => {
    const manager = new PluginManager({ directory: mkdtempSync(join(tmpdir(), 'runs-')) });
    await manager.loadPlugin(fixture('c_plain'));
    await manager.loadPlugin(wasmFixture('read_set'));
    await manager.loadPlugin(fixture('c_second'));
    await manager.loadPlugin(fixture('c_stop'));
    await manager.loadPlugin(fixture('counter_probe'), '{}', resolvePluginOptions({ allowCounters: true }));
    await manager.loadPlugin(fixture('c_cancel_flag'));
    const chainOf = (names: string[]): Entry[] => names.map((name) => ({ instance: manager.get(name)!, failures: 0 }) as unknown as Entry);
    const starts = nativeRuns(chainOf(['plain', 'read-set', 'second', 'stopper', 'counter-probe', 'flag-setter']));
    // plain alone (the sandboxed plugin follows), second + stopper a run, the granted counter probe breaks it, flag-setter alone.
    expect(starts.map((start) => (start === null ? null : [start.run.entries.length, start.offset]))).toEqual([null, null, [2, 0], null, null, null]);
    await manager.deinit();
  });
});
