import { copyFileSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { authenticatorNames, loadPluginsConfig } from '../../src/config/plugins-config.js';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { PROJECT_ROOT } from '../../src/paths.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';
import { runClient } from '../helpers/server.js';

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
      [configText('allow_counters = "yes"'), /config\.toml:12: plugins\.plugin\[0\]\.allow_counters: expected true or false for allow_counters, got "yes"/],
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

  it('reads a milter entry, and refuses a bad milter address or a build beside it with the line', () => {
    const toml = (extra: string): string => `[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "rspamd"\n${extra}`;
    const [entry] = loadPluginsConfig(root(toml('milter = "inet:127.0.0.1:11332"\n'))).plugins;
    expect(entry).toMatchObject({ name: 'rspamd', file: 'milter:inet:127.0.0.1:11332#rspamd', builds: [], sandboxed: false });
    const cases: [string, RegExp][] = [
      [toml('milter = "127.0.0.1:11332"\n'), /config\.toml:6: plugins\.plugin\[0\]\.milter: milter address "127\.0\.0\.1:11332": expected inet:HOST:PORT, inet:PORT@HOST or unix:\/path/],
      [toml('milter = "inet:127.0.0.1:0"\n'), /plugins\.plugin\[0\]\.milter: .*expected a port from 1 to 65535/],
      [toml('milter = "inet:127.0.0.1:11332"\nlibrary = "libplain.so"\n'), /config\.toml:7: plugins\.plugin\[0\]\.library: does not apply to a milter entry/],
      [toml('milter = "unix:/run/x.sock"\nauthenticator = true\n'), /plugins\.plugin\[0\]\.authenticator: does not apply to a milter entry/],
      [toml('milter = "unix:/run/x.sock"\nallow_counters = true\n'), /plugins\.plugin\[0\]\.allow_counters: does not apply to a milter entry/],
    ];
    for (const [text, expected] of cases) {
      expect(() => loadPluginsConfig(root(text)), text).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(expected) }));
    }
  });

  it('reads optional and authenticator (both false unless an entry says so) and names a wrong value', () => {
    const toml = (extra: string): string =>
      `[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "plain"\nlibrary = "libplain.so"\n\n[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libspam_filter.so"\n${extra}`;
    const config = loadPluginsConfig(root(toml('optional = true\nauthenticator = true\n')));
    expect(config.plugins.map((p) => [p.name, p.optional, p.authenticator])).toEqual([['plain', false, false], ['spam-filter', true, true]]);
    expect(authenticatorNames(config)).toEqual(['spam-filter']);
    expect(authenticatorNames(loadPluginsConfig(root(toml('authenticator = true\nenabled = false\n'))))).toEqual([]);
    expect(authenticatorNames(loadPluginsConfig(root(toml(''))))).toEqual([]);
    // allow_counters (ABI 1.2's host counters): off unless an entry grants it.
    expect(loadPluginsConfig(root(toml('allow_counters = true\n'))).plugins.map((p) => p.options.allowCounters)).toEqual([false, true]);
    expect(() => loadPluginsConfig(root(toml('optional = "yes"\n')))).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(/config\.toml:11: plugins\.plugin\[1\]\.optional: expected true or false, got "yes"/) }));
    expect(() => loadPluginsConfig(root(toml('authenticator = 1\n')))).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(/config\.toml:11: plugins\.plugin\[1\]\.authenticator: expected true or false, got 1/) }));
  });

  it('refuses a plugin file outside its folder, lexically and through symlinks, unless a trusted directory holds it', () => {
    const toml = (entry: string, section = ''): string => `[plugins]\ndirectory = "./plugins"\nwasm_directory = "./wasm-plugins"\n${section}\n[[plugins.plugin]]\nname = "x"\n${entry}\n`;
    const elsewhere = mkdtempSync(join(tmpdir(), 'elsewhere-'));
    copyFileSync(fixture('c_plain'), join(elsewhere, 'libx.so'));
    const refused: [string, RegExp][] = [
      [toml('library = "../../elsewhere/x.so"'), /config\.toml:7: plugins\.plugin\[0\]\.library: "\.\.\/\.\.\/elsewhere\/x\.so" resolves to \/.*\/elsewhere\/x\.so, outside plugins\.directory \(\/.*\/plugins\): move it there, or list its folder in plugins\.trusted_directories/],
      [toml(`library = "${join(elsewhere, 'libx.so')}"`), /config\.toml:7: plugins\.plugin\[0\]\.library: ".*libx\.so" resolves to .*, outside plugins\.directory/],
      [toml('library = "sub/../../libplain.so"'), /plugins\.plugin\[0\]\.library: "sub\/\.\.\/\.\.\/libplain\.so" resolves to .*config-[^/]*\/libplain\.so, outside plugins\.directory/],
      // A library belongs in directory, not in wasm_directory, and the other way round.
      [toml('library = "../wasm-plugins/read_set.so"'), /plugins\.plugin\[0\]\.library: .* outside plugins\.directory/],
      [toml('wasm = "../plugins/spam_filter.wasm"'), /config\.toml:7: plugins\.plugin\[0\]\.wasm: .* outside plugins\.wasm_directory/],
      [toml('component = "/tmp/spam_filter.component.wasm"'), /config\.toml:7: plugins\.plugin\[0\]\.component: .* outside plugins\.wasm_directory/],
      [toml('library = "libplain.so"', 'trusted_directories = ["opt/plugins"]'), /config\.toml:4: plugins\.trusted_directories: expected absolute paths, got "opt\/plugins"/],
      [toml('library = "libplain.so"', 'trusted_directories = "/opt"'), /config\.toml:4: plugins\.trusted_directories: expected an array of absolute folder paths/],
    ];
    for (const [text, expected] of refused) {
      expect(() => loadPluginsConfig(root(text)), text).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(expected) }));
    }
    // A symlink inside the folder that points out of it is what it points to.
    const linked = root(toml('library = "libx.so"'));
    symlinkSync(join(elsewhere, 'libx.so'), join(dirname(linked), 'plugins', 'libx.so'));
    expect(() => loadPluginsConfig(linked)).toThrow(expect.objectContaining({ code: 'SMTP_E_CONFIG', message: expect.stringMatching(/plugins\.plugin\[0\]\.library: "libx\.so" is a link to .*elsewhere-.*\/libx\.so, outside plugins\.directory/) }));
    // Listed in trusted_directories, both are allowed; a link within the folder stays fine.
    const trusted = `trusted_directories = [${JSON.stringify(elsewhere)}]`;
    expect(loadPluginsConfig(root(toml(`library = "${join(elsewhere, 'libx.so')}"`, trusted))).plugins[0]!.file).toBe(join(elsewhere, 'libx.so'));
    const linkedTrusted = root(toml('library = "libx.so"', trusted));
    symlinkSync(join(elsewhere, 'libx.so'), join(dirname(linkedTrusted), 'plugins', 'libx.so'));
    expect(loadPluginsConfig(linkedTrusted).trustedDirectories).toEqual([elsewhere]);
    const inside = root(toml('library = "libalias.so"'));
    symlinkSync(join(dirname(inside), 'plugins', 'libplain.so'), join(dirname(inside), 'plugins', 'libalias.so'));
    expect(loadPluginsConfig(inside).plugins[0]!.file).toBe(join(dirname(inside), 'plugins', 'libalias.so'));
  });

  it('stops the smtp-server command before it listens when a library path climbs out with ../', async () => {
    const config = root(`[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "x"\nlibrary = "../../elsewhere/x.so"\n`);
    const run = await runClient(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), '--config', config, '--port', '0'], 20_000);
    expect(run.status).toBe(1);
    expect(run.stderr).toMatch(/^error SMTP_E_CONFIG: .*config\.toml:6: plugins\.plugin\[0\]\.library: "\.\.\/\.\.\/elsewhere\/x\.so" resolves to .*, outside plugins\.directory/m);
  });
});
