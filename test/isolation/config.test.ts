import { describe, expect, it } from 'vitest';
import { parsePluginsSection } from '../../src/config/plugins-config.js';

const entry = (extra: Record<string, unknown>): unknown => ({ plugin: [{ name: 'probe', library: 'libprobe.so', ...extra }] });

describe('config: isolation', () => {
  it('is read per plugin; absent means in-process', () => {
    const config = parsePluginsSection({ plugin: [{ name: 'a', library: 'liba.so', isolation: 'process' }, { name: 'b', library: 'libb.so' }] }, '/etc/smtp/config.toml');
    expect(config.plugins[0]!.options.isolation).toBe('process');
    expect(config.plugins[1]!.options.isolation).toBeUndefined();
  });

  it('refuses an unknown value and an entry that runs its sandboxed build, naming the key', () => {
    expect(() => parsePluginsSection(entry({ isolation: 'vm' }), '/c.toml')).toThrow(/plugins\.plugin\[0\]\.isolation: expected one of "in-process", "process" for isolation, got "vm"/);
    expect(() => parsePluginsSection(entry({ wasm: 'probe.wasm', isolation: 'process' }), '/c.toml')).toThrow(/isolation: applies to a native library/);
    expect(parsePluginsSection(entry({ wasm: 'probe.wasm', sandbox: false, isolation: 'process' }), '/c.toml').plugins[0]!.options.isolation).toBe('process');
  });
});
