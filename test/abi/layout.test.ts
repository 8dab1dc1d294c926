import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { describe, expect, it } from 'vitest';
import { ABI_VERSION, COUNTER_LIMITS, CounterStatus, HOOK_NAMES, HookCode, HostStatus, NetStatus, PluginFlag } from '../../src/abi/hooks.js';
import { LAYOUT_STRUCTS } from '../../src/abi/layout.js';
import { ABI_DIR, ABI_HEADER, PROJECT_ROOT, ZIG_MODULE_ROOT } from '../../src/paths.js';
import { SUPPORTED_ZIG_VERSIONS, findZig, zigEnv } from '../../src/toolchain/zig.js';

interface Layout {
  sizes: Record<string, number>;
  offsets: Record<string, number>;
  hooks: number[];
  hook_names?: string[];
  hook_count: number;
  results: number[];
  statuses: number[];
  net_statuses: number[];
  counter_statuses: number[];
  counter_bounds: number[];
  flags: number[];
  abi_version: number;
}

const FIXTURES = join(PROJECT_ROOT, 'test', 'fixtures', 'abi');

function cLayout(): Layout {
  const exe = join(mkdtempSync(join(tmpdir(), 'layout-')), 'layout_dump');
  const cc = spawnSync('gcc', ['-std=c11', '-Wall', '-Werror', `-I${ABI_DIR}`, '-o', exe, join(FIXTURES, 'layout_dump.c')], { encoding: 'utf8' });
  expect(cc.status, cc.stderr).toBe(0);
  return JSON.parse(spawnSync(exe, { encoding: 'utf8' }).stdout) as Layout;
}

function zigLayout(version: string): Layout {
  const run = spawnSync(findZig(version), ['run', '--dep', 'smtp-server', `-Mroot=${join(FIXTURES, 'layout_dump.zig')}`, `-Msmtp-server=${ZIG_MODULE_ROOT}`], {
    encoding: 'utf8',
    env: zigEnv(),
  });
  expect(run.status, run.stderr).toBe(0);
  return JSON.parse(run.stderr) as Layout;
}

function tsLayout(c: Layout): Layout {
  const offsets: Record<string, number> = {};
  for (const key of Object.keys(c.offsets)) {
    const [struct, field] = key.split('.') as [keyof typeof LAYOUT_STRUCTS, string];
    offsets[key] = koffi.offsetof(LAYOUT_STRUCTS[struct], field);
  }
  const sizes: Record<string, number> = { smtp_hook_type: 4 };
  for (const [name, type] of Object.entries(LAYOUT_STRUCTS)) sizes[name] = koffi.sizeof(type);
  return {
    sizes,
    offsets,
    hooks: HOOK_NAMES.map((_, index) => index),
    hook_count: HOOK_NAMES.length,
    results: [HookCode.CONTINUE, HookCode.STOP, HookCode.CANCEL],
    statuses: [HostStatus.OK, HostStatus.NO_MEMORY, HostStatus.TOO_LARGE, HostStatus.INVALID],
    net_statuses: [NetStatus.DENIED, NetStatus.ADDRESS, NetStatus.CONNECT, NetStatus.TIMEOUT, NetStatus.CLOSED, NetStatus.IO, NetStatus.LIMIT],
    flags: [Number(PluginFlag.BLOCKING)],
    counter_statuses: [CounterStatus.DENIED, CounterStatus.UNAVAILABLE, CounterStatus.INVALID, CounterStatus.LIMIT],
    counter_bounds: [COUNTER_LIMITS.keyBytesMax, COUNTER_LIMITS.windowSecondsMax, COUNTER_LIMITS.byMax, COUNTER_LIMITS.keysMax],
    abi_version: ABI_VERSION,
  };
}

describe('abi/smtp_plugin.h is the contract', () => {
  const c = cLayout();

  it('has the 19 hooks numbered 0 to 18 and three result codes', () => {
    expect(c.hooks).toEqual([...Array(19).keys()]);
    expect(c.hook_count).toBe(19);
    expect(c.results).toEqual([0, 1, 2]);
  });

  it('names the hooks in the header as the TypeScript list does, in order', () => {
    const header = readFileSync(ABI_HEADER, 'utf8');
    const block = header.slice(header.indexOf('typedef enum smtp_hook_type {'), header.indexOf('} smtp_hook_type;'));
    const names = [...block.matchAll(/SMTP_HOOK_([A-Z_]+) = (\d+)/g)].map((m) => [m[1]!.toLowerCase(), Number(m[2])]);
    expect(names).toEqual(HOOK_NAMES.map((name, index) => [name, index]));
  });

  it('matches the TypeScript (koffi) layouts', () => {
    expect(tsLayout(c)).toEqual(c);
  });

  for (const version of SUPPORTED_ZIG_VERSIONS) {
    it(`matches the Zig binding built with Zig ${version}`, () => {
      const { hook_names: zigNames, ...zig } = zigLayout(version);
      expect(zig).toEqual(c);
      expect(zigNames).toEqual([...HOOK_NAMES]);
    });

    it(`passes the binding's own Zig tests with Zig ${version}`, () => {
      const run = spawnSync(findZig(version), ['test', ZIG_MODULE_ROOT], { encoding: 'utf8', env: zigEnv() });
      expect(run.status, run.stderr).toBe(0);
      expect(run.stderr).toMatch(/All \d+ tests passed/);
    });
  }
});
