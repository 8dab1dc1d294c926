import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPluginsConfig } from '../../src/config/plugins-config.js';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

/** A server root with plugins/ and wasm-plugins/ holding copies of the spam filter builds, and a config.toml. */
function root(toml: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'config-'));
  mkdirSync(join(dir, 'plugins'));
  mkdirSync(join(dir, 'wasm-plugins'));
  copyFileSync(fixture('spam_filter'), join(dir, 'plugins', 'libspam_filter.so'));
  copyFileSync(wasmFixture('spam_filter'), join(dir, 'wasm-plugins', 'spam_filter.wasm'));
  copyFileSync(fixture('c_plain'), join(dir, 'plugins', 'libplain.so'));
  copyFileSync(wasmFixture('read_set'), join(dir, 'wasm-plugins', 'read_set.wasm'));
  writeFileSync(join(dir, 'config.toml'), toml);
  return join(dir, 'config.toml');
}

const ENTRY = `
[plugins]
enabled = true
directory = "./plugins"
auto_load = AUTO

[[plugins.plugin]]
name = "spam-filter"
enabled = true
library = "libspam_filter.so"
wasm = "spam_filter.wasm"
SANDBOX
config = '''
{ "spam_threshold": 2.0 }
'''
on_error = "reject"

[plugins.plugin.limits]
memory_mb = 32
hook_timeout_ms = 250
`;

function configText(sandbox: string, autoLoad = false): string {
  return ENTRY.replace('SANDBOX', sandbox).replace('AUTO', String(autoLoad));
}

describe('config.toml [plugins]', () => {
  it('chooses the sandboxed build by default when both are given, and native with sandbox = false', async () => {
    for (const [sandbox, kind] of [['', 'wasm'], ['sandbox = true', 'wasm'], ['sandbox = false', 'native']] as const) {
      const config = loadPluginsConfig(root(configText(sandbox)));
      const [entry] = config.plugins;
      expect(entry).toMatchObject({ name: 'spam-filter', sandboxed: kind === 'wasm', options: { onError: 'reject', limits: { memoryMb: 32, hookTimeoutMs: 250 } } });
      expect(Object.isFrozen(config)).toBe(true);
      const manager = new PluginManager({ directory: config.directory });
      const { loaded, failed } = await manager.loadFromConfig(config);
      expect(failed).toEqual([]);
      expect(loaded.map((p) => [p.name, p.plugin.kind])).toEqual([['spam-filter', kind]]);
      const context = new HookContext('message_filtered');
      context.setMetadata('message_body', 'casino winner');
      expect((await manager.executeHook('message_filtered', context)).action).toBe('stop');
      await manager.deinit();
    }
  });

  it('auto-loads the other libraries and .wasm files, never a configured one twice', async () => {
    const config = loadPluginsConfig(root(configText('', true)));
    const manager = new PluginManager({ directory: config.directory, wasmDirectory: config.wasmDirectory });
    const { loaded, failed } = await manager.loadFromConfig(config);
    expect(failed).toEqual([]);
    expect(loaded.map((p) => `${p.name}:${p.plugin.kind}`)).toEqual(['spam-filter:wasm', 'plain:native', 'read-set:wasm']);
    await manager.deinit();
  });

  it('names the file, the line and the key of every mistake', async () => {
    const cases: [string, RegExp][] = [
      [configText('sandbox = "yes"'), /config\.toml:12: plugins\.plugin\[0\]\.sandbox: expected true or false, got "yes"/],
      [configText('colour = "blue"'), /config\.toml:12: plugins\.plugin\[0\]\.colour: unknown key/],
      [configText('').replace('memory_mb = 32', 'memory_mb = 0'), /config\.toml:19: plugins\.plugin\[0\]\.limits\.memory_mb: expected an integer from 1 to 4096 for memoryMb, got 0/],
      [configText('').replace('hook_timeout_ms', 'timeout'), /config\.toml:20: plugins\.plugin\[0\]\.limits\.timeout: unknown limit/],
      [configText('').replace('"reject"', '"shrug"'), /config\.toml:16: plugins\.plugin\[0\]\.on_error: expected one of continue, tempfail, reject for on_error, got "shrug"/],
      [configText('').replace('{ "spam_threshold": 2.0 }', '{ nope'), /plugins\.plugin\[0\]\.config: expected a JSON text/],
      [configText('').replace('wasm = "spam_filter.wasm"', 'wasm = "spam_filter.so"'), /plugins\.plugin\[0\]\.wasm: expected a \.wasm file/],
      [configText('').replace('library = "libspam_filter.so"\nwasm = "spam_filter.wasm"', ''), /give library \(native\), wasm \(sandboxed\), both, or component/],
      ['[plugins]\nenabled = yes\n', /config\.toml:2: not valid TOML/],
      ['[plugins]\nauto_lod = true\n', /config\.toml:2: plugins\.auto_lod: unknown key/],
    ];
    for (const [toml, expected] of cases) {
      expect(() => loadPluginsConfig(root(toml)), toml).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(expected) }));
    }
  });
});
