import { describe, expect, it } from 'vitest';
import { isHostError } from '../../src/errors.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { PluginInstance } from '../../src/plugin/lifecycle.js';
import { loadPluginFile } from '../../src/plugin/load.js';
import type { HookName } from '../../src/abi/hooks.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

interface Case {
  readonly name: string;
  readonly config?: string;
  readonly hook: HookName;
  readonly metadata: Record<string, string>;
}

/** Every example plugin, its builds, and one table of hook cases they must all answer alike. */
const EXAMPLES: { plugin: string; builds: string[]; cases: Case[] }[] = [
  {
    plugin: 'spam_filter',
    builds: [fixture('spam_filter'), fixture('spam_filter_newest'), wasmFixture('spam_filter'), wasmFixture('spam_filter_newest'), wasmFixture('spam_filter_component')],
    cases: [
      { name: 'six keywords', hook: 'message_filtered', metadata: { message_body: 'Congratulations WINNER! casino: click here, free money, act now' } },
      { name: 'clean', hook: 'message_filtered', metadata: { message_body: 'lunch at noon?' } },
      { name: 'no body', hook: 'message_filtered', metadata: { sender: 'a@example.com' } },
      { name: "the guide's body at threshold 3", config: '{"spam_threshold": 3.0}', hook: 'message_filtered', metadata: { message_body: 'Buy viagra now! Click here for free money!' } },
      { name: "the guide's body at threshold 5", hook: 'message_filtered', metadata: { message_body: 'Buy viagra now! Click here for free money!' } },
      { name: 'own keywords', config: '{"spam_threshold": 1, "blacklist_keywords": ["lottery"]}', hook: 'message_filtered', metadata: { message_body: 'LOTTERY results' } },
      { name: 'other hook', hook: 'message_received', metadata: { message_body: 'viagra casino winner free money click here act now' } },
      { name: 'binary body', hook: 'message_filtered', metadata: { message_body: 'casino\u0000winner\u0000act now\u0000limited time\u0000viagra' } },
      { name: 'bad config', config: '{"spam_threshold": -1}', hook: 'message_filtered', metadata: {} },
    ],
  },
];

type Result = { code: number; cancel: boolean; metadata: Record<string, string> } | { error: string };

function runCase(file: string, c: Case): Result {
  const instance = new PluginInstance(loadPluginFile(file));
  try {
    instance.init(c.config ?? '{}');
    instance.enable();
    const context = new HookContext(c.hook);
    for (const [key, value] of Object.entries(c.metadata)) context.setMetadata(key, value);
    const { code } = instance.executeHook(context);
    return { code, cancel: context.cancel, metadata: context.toJSON() };
  } catch (error) {
    if (isHostError(error)) return { error: error.code };
    throw error;
  } finally {
    instance.shutdown();
  }
}

describe('parity: the same source gives the same results native and sandboxed (and the JavaScript component the same as the Zig)', () => {
  for (const example of EXAMPLES) {
    it(`${example.plugin}: ${example.builds.length} builds agree on ${example.cases.length} cases`, () => {
      for (const c of example.cases) {
        const [reference, ...others] = example.builds.map((file) => runCase(file, c));
        for (const [index, result] of others.entries()) expect(result, `${c.name}: ${example.builds[index + 1]}`).toEqual(reference);
      }
      // The table means something: it holds both verdicts and a refused config.
      const verdicts = example.cases.map((c) => runCase(example.builds[0]!, c));
      expect(verdicts).toContainEqual(expect.objectContaining({ code: 1 }));
      expect(verdicts).toContainEqual(expect.objectContaining({ code: 0 }));
      expect(verdicts).toContainEqual({ error: 'SMTP_E_PLUGIN_INIT' });
    });
  }

  it("runs the guide's spam filter, unchanged but for two lines, sandboxed too", () => {
    const body = { message_body: 'viagra casino winner free money click here act now' };
    const c: Case = { name: 'guide', hook: 'message_filtered', metadata: body };
    const native = runCase(fixture('guide_spam_filter'), c);
    expect(native).toEqual({ code: 1, cancel: false, metadata: { ...body, spam_score: '6', is_spam: 'true' } });
    expect(runCase(wasmFixture('guide_spam_filter'), c)).toEqual(native);
  });
});
