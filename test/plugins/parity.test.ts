import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isHostError } from '../../src/errors.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { PluginInstance } from '../../src/plugin/lifecycle.js';
import { openPlugin } from '../../src/plugin/backends.js';
import type { HookName } from '../../src/abi/hooks.js';
import { PROJECT_ROOT } from '../../src/paths.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

const SPAM = 'viagra casino winner free money click here act now';
/** The repository's per-plugin config file, which config.toml's spam-filter entry reads. */
const REPOSITORY_CONFIG = readFileSync(join(PROJECT_ROOT, 'plugins', 'spam_filter.json'), 'utf8');
/** The guide's plugins/spam_filter.json as printed: it turns on auto_learn, which the filter does not have. */
const GUIDE_CONFIG = JSON.stringify({
  enabled: true,
  spam_threshold: 5.0,
  quarantine_path: '/var/spool/smtp/quarantine',
  whitelist: ['example.com', 'trusted-domain.com'],
  blacklist_keywords: ['viagra', 'casino', 'free money'],
  auto_learn: true,
  bayesian_filtering: false,
});
const WHITELIST = '{"spam_threshold": 1, "whitelist": ["Example.com", "trusted.example"]}';

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
      // Whitelist: the envelope sender's domain and its subdomains, ASCII case-insensitive.
      { name: 'whitelisted domain', config: WHITELIST, hook: 'message_filtered', metadata: { sender_domain: 'example.com', message_body: SPAM } },
      { name: 'whitelisted subdomain', config: WHITELIST, hook: 'message_filtered', metadata: { sender_domain: 'Mail.EXAMPLE.com', message_body: SPAM } },
      { name: 'lookalike domain', config: WHITELIST, hook: 'message_filtered', metadata: { sender_domain: 'badexample.com', message_body: SPAM } },
      { name: 'listed domain as a prefix', config: WHITELIST, hook: 'message_filtered', metadata: { sender_domain: 'example.com.evil.test', message_body: SPAM } },
      { name: 'domain from sender', config: WHITELIST, hook: 'message_filtered', metadata: { sender: 'a@b@trusted.example', message_body: SPAM } },
      { name: 'empty sender_domain wins over sender', config: WHITELIST, hook: 'message_filtered', metadata: { sender_domain: '', sender: 'a@example.com', message_body: SPAM } },
      { name: 'whitelist not a domain', config: '{"whitelist": ["*.example.com"]}', hook: 'message_filtered', metadata: {} },
      { name: 'whitelist with an address', config: '{"whitelist": ["user@example.com"]}', hook: 'message_filtered', metadata: {} },
      { name: 'whitelist null', config: '{"whitelist": null}', hook: 'message_filtered', metadata: {} },
      { name: 'whitelist not a list', config: '{"whitelist": "example.com"}', hook: 'message_filtered', metadata: {} },
      // Quarantine: spam is kept (quarantine, quarantine_path) instead of refused (smtp_reply_code, smtp_reply_text).
      { name: 'quarantined with a folder', config: '{"spam_threshold": 2, "quarantine": true, "quarantine_path": "spam-filter"}', hook: 'message_filtered', metadata: { message_body: SPAM } },
      { name: 'quarantined without a folder', config: '{"spam_threshold": 2, "quarantine": true}', hook: 'message_filtered', metadata: { message_body: SPAM } },
      { name: 'quarantine on, clean', config: '{"quarantine": true, "quarantine_path": "x"}', hook: 'message_filtered', metadata: { message_body: 'lunch' } },
      { name: 'quarantine_path without quarantine', config: '{"quarantine_path": "spam"}', hook: 'message_filtered', metadata: {} },
      { name: 'quarantine_path empty', config: '{"quarantine": true, "quarantine_path": ""}', hook: 'message_filtered', metadata: {} },
      { name: 'quarantine_path with NUL', config: '{"quarantine": true, "quarantine_path": "a\\u0000b"}', hook: 'message_filtered', metadata: {} },
      { name: 'quarantine not a boolean', config: '{"quarantine": "yes"}', hook: 'message_filtered', metadata: {} },
      // Features the guide names that the filter does not have: refused when on.
      { name: 'auto_learn on', config: '{"auto_learn": true}', hook: 'message_filtered', metadata: {} },
      { name: 'bayesian_filtering on', config: '{"bayesian_filtering": true}', hook: 'message_filtered', metadata: {} },
      { name: 'enabled false', config: '{"enabled": false}', hook: 'message_filtered', metadata: {} },
      { name: 'all off', config: '{"enabled": true, "auto_learn": false, "bayesian_filtering": false}', hook: 'message_filtered', metadata: { message_body: SPAM } },
      { name: "the guide's file", config: GUIDE_CONFIG, hook: 'message_filtered', metadata: {} },
      { name: "the repository's file", config: REPOSITORY_CONFIG, hook: 'message_filtered', metadata: { sender_domain: 'example.com', message_body: SPAM } },
    ],
  },
];

type Result = { code: number; cancel: boolean; metadata: Record<string, string> } | { error: string };

async function runCase(file: string, c: Case): Promise<Result> {
  const instance = new PluginInstance(await openPlugin(file));
  try {
    await instance.init(c.config ?? '{}');
    await instance.enable();
    const context = new HookContext(c.hook);
    for (const [key, value] of Object.entries(c.metadata)) context.setMetadata(key, value);
    const { code } = instance.executeHook(context);
    return { code, cancel: context.cancel, metadata: context.toJSON() };
  } catch (error) {
    if (isHostError(error)) return { error: error.code };
    throw error;
  } finally {
    await instance.shutdown();
  }
}

describe('parity: the same source gives the same results native and sandboxed (and the JavaScript component the same as the Zig)', () => {
  for (const example of EXAMPLES) {
    it(`${example.plugin}: ${example.builds.length} builds agree on ${example.cases.length} cases`, async () => {
      for (const c of example.cases) {
        const results: Result[] = [];
        for (const file of example.builds) results.push(await runCase(file, c));
        const [reference, ...others] = results;
        for (const [index, result] of others.entries()) expect(result, `${c.name}: ${example.builds[index + 1]}`).toEqual(reference);
      }
      // The table means something: it holds both verdicts and a refused config.
      const verdicts: Result[] = [];
      for (const c of example.cases) verdicts.push(await runCase(example.builds[0]!, c));
      expect(verdicts).toContainEqual(expect.objectContaining({ code: 1 }));
      expect(verdicts).toContainEqual(expect.objectContaining({ code: 0 }));
      expect(verdicts).toContainEqual({ error: 'SMTP_E_PLUGIN_INIT' });
    });
  }

  it('spam_filter: the table shows each verdict the host acts on', async () => {
    const verdict = (name: string): Promise<Result> => runCase(fixture('spam_filter'), EXAMPLES[0]!.cases.find((c) => c.name === name)!);
    expect(await verdict('six keywords')).toMatchObject({ code: 1, metadata: { is_spam: 'true', smtp_reply_code: '554', smtp_reply_text: '5.7.1 Message refused as spam' } });
    expect(await verdict('whitelisted subdomain')).toEqual({ code: 0, cancel: false, metadata: { sender_domain: 'Mail.EXAMPLE.com', message_body: SPAM, spam_whitelisted: 'true' } });
    expect(await verdict('lookalike domain')).toMatchObject({ code: 1, metadata: { is_spam: 'true' } });
    expect(await verdict('quarantined with a folder')).toEqual({
      code: 1,
      cancel: false,
      metadata: { message_body: SPAM, spam_score: '6', is_spam: 'true', quarantine_path: 'spam-filter', quarantine: 'true' },
    });
    expect(await verdict('quarantined without a folder')).not.toHaveProperty('metadata.quarantine_path');
    for (const name of ['auto_learn on', 'bayesian_filtering on', 'enabled false', 'quarantine_path without quarantine', "the guide's file", 'whitelist not a domain']) {
      expect(await verdict(name), name).toEqual({ error: 'SMTP_E_PLUGIN_INIT' });
    }
    // The repository's file loads, and refuses spam (quarantine is off there).
    expect(await verdict("the repository's file")).toMatchObject({ code: 1, metadata: { smtp_reply_code: '554' } });
  });

  it("runs the guide's spam filter, unchanged but for two lines, sandboxed too", async () => {
    const body = { message_body: 'viagra casino winner free money click here act now' };
    const c: Case = { name: 'guide', hook: 'message_filtered', metadata: body };
    const native = await runCase(fixture('guide_spam_filter'), c);
    expect(native).toEqual({ code: 1, cancel: false, metadata: { ...body, spam_score: '6', is_spam: 'true' } });
    expect(await runCase(wasmFixture('guide_spam_filter'), c)).toEqual(native);
  });
});
