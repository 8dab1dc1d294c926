import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPluginsConfig } from '../../src/config/plugins-config.js';
import { PROJECT_ROOT } from '../../src/paths.js';

describe("the repository's config.toml", () => {
  it('is valid and names the example builds that npm install makes', () => {
    const config = loadPluginsConfig(join(PROJECT_ROOT, 'config.toml'));
    expect(config.plugins.map((p) => [p.name, p.sandboxed])).toEqual([['spam-filter', false]]);
    expect(config.plugins[0]!.builds).toEqual([join(PROJECT_ROOT, 'plugins', 'libspam_filter.so'), join(PROJECT_ROOT, 'wasm-plugins', 'spam_filter.wasm')]);
    // The spam filter's config is the per-plugin file, not an inline config.
    expect(JSON.parse(config.plugins[0]!.config)).toEqual(JSON.parse(readFileSync(join(PROJECT_ROOT, 'plugins', 'spam_filter.json'), 'utf8')));
  });
});
