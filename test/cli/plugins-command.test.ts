import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixture } from '../helpers/fixtures.js';
import { runCli } from '../helpers/cli.js';
import { serverRoot } from '../helpers/server.js';

function rootWith(names: string[]): string {
  const root = serverRoot({
    plugins: `[plugins]\ndirectory = "./plugins"\n${names.map((name) => `\n[[plugins.plugin]]\nname = "${name}"\nlibrary = "lib${name}.so"\n`).join('')}`,
  });
  for (const name of names) copyFileSync(fixture(name), join(root.dir, 'plugins', `lib${name}.so`));
  return root.config;
}

describe('smtp-server plugins order', () => {
  it('prints the resolved order and why each plugin stands there', () => {
    const run = runCli(['plugins', 'order', '--config', rootWith(['c_needs_needs', 'c_second', 'c_needs_plain', 'c_plain'])]);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout.trim().split('\n')).toEqual([
      '1. second@1.0.0  config position 2',
      '2. plain@1.0.0  config position 4',
      '3. needs-plain@1.0.0  after plain (needs-plain depends on plain@^1.0, found 1.0.0)',
      '4. needs-needs@1.0.0  after needs-plain (needs-needs depends on needs-plain, found 1.0.0)',
    ]);
  });

  it('prints the resolution error, naming the whole cycle', () => {
    const run = runCli(['plugins', 'order', '--config', rootWith(['c_cycle_a', 'c_cycle_b'])]);
    expect(run.status).toBe(1);
    expect(run.stderr.trim()).toBe('error SMTP_E_PLUGIN_CYCLE: dependency cycle: cycle-a -> cycle-b -> cycle-a');
  });
});
