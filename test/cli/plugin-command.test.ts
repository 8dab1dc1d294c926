import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ABI_VERSION, formatAbiVersion } from '../../src/abi/hooks.js';
import { FIXTURE_DIR, FIXTURE_SOURCES, fixture, wasmFixture } from '../helpers/fixtures.js';
import { callJson, runCli } from '../helpers/cli.js';

const SIX_KEYWORDS = 'Congratulations WINNER! Visit our casino, click here for free money, act now';
const CLEAN = 'Hi Bob, the meeting moved to 3pm. See you there.';

describe('smtp-server plugin call', () => {
  // The guide's own source, with only the two ABI lines changed, built by plugin build on 0.14.1.
  it('blocks six keywords and passes a clean body with the guide spam filter built by plugin build', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'guide-')), 'libguide.so');
    const build = runCli(['plugin', 'build', join(FIXTURE_SOURCES, 'guide_spam_filter.zig'), '-o', out, '--zig', '0.14.1']);
    expect(build.status, build.stderr).toBe(0);
    expect(build.stdout.trim()).toBe(out);
    expect(existsSync(`${out}.o`)).toBe(false);
    const spam = callJson(runCli(['plugin', 'call', out, '--hook', 'message_filtered', '--meta', `message_body=${SIX_KEYWORDS.toLowerCase()}`]));
    expect(spam).toMatchObject({ code: 1, cancel: false });
    expect(spam.metadata.is_spam).toBe('true');
    expect(spam.metadata.spam_score).toBe('6');
    const clean = callJson(runCli(['plugin', 'call', out, '--hook', 'message_filtered', '--meta', `message_body=${CLEAN}`]));
    expect(clean).toEqual({ code: 0, cancel: false, metadata: { message_body: CLEAN } });
  });

  it('gives the same results for the Zig example and the C plugin built with gcc', () => {
    for (const lib of [fixture('spam_filter'), fixture('c_spam_filter'), fixture('spam_filter_newest')]) {
      const spam = callJson(runCli(['plugin', 'call', lib, '--hook', 'message_filtered', '--meta', `message_body=${SIX_KEYWORDS}`, '--meta', 'sender=a@example.com']));
      // The Zig example also chooses its reply (554 5.7.1); the C plugin leaves it to the host.
      const reply = lib === fixture('c_spam_filter') ? {} : { smtp_reply_code: '554', smtp_reply_text: '5.7.1 Message refused as spam' };
      expect(spam, lib).toEqual({ code: 1, cancel: false, metadata: { message_body: SIX_KEYWORDS, sender: 'a@example.com', spam_score: '6', is_spam: 'true', ...reply } });
      const clean = callJson(runCli(['plugin', 'call', lib, '--hook', 'message_filtered', '--meta', `message_body=${CLEAN}`]));
      expect(clean, lib).toEqual({ code: 0, cancel: false, metadata: { message_body: CLEAN, spam_score: '0' } });
      const lowered = callJson(runCli(['plugin', 'call', lib, '--hook', 'message_filtered', '--config', '{"spam_threshold": 2}', '--meta', 'message_body=Buy VIAGRA, Click Here']));
      expect(lowered.code, lib).toBe(1);
    }
  });

  it('reads metadata from files and reports cancel', () => {
    const dir = mkdtempSync(join(tmpdir(), 'meta-'));
    writeFileSync(join(dir, 'in.txt'), 'from a file');
    const run = callJson(runCli(['plugin', 'call', fixture('c_cancel_flag'), '--hook', 'message_received', '--meta-file', `in=${join(dir, 'in.txt')}`]));
    expect(run).toEqual({ code: 0, cancel: true, metadata: { in: 'from a file', visited: 'flag-setter', out: 'from a file' } });
  });

  it('fails with a coded error on stderr and a non-zero exit', () => {
    const cases: [string[], string][] = [
      [['plugin', 'call', '/nonexistent/libx.so', '--hook', 'message_received'], 'SMTP_E_PLUGIN_NOT_FOUND'],
      [['plugin', 'call', fixture('not_a_library'), '--hook', 'message_received'], 'SMTP_E_PLUGIN_NOT_LIBRARY'],
      [['plugin', 'call', fixture('c_bad_abi'), '--hook', 'message_received'], 'SMTP_E_PLUGIN_ABI_VERSION'],
      [['plugin', 'call', fixture('c_init_fails'), '--hook', 'message_received'], 'SMTP_E_PLUGIN_INIT'],
      [['plugin', 'call', fixture('c_bad_code'), '--hook', 'message_received'], 'SMTP_E_PLUGIN_HOOK_CODE'],
      [['plugin', 'call', fixture('spam_filter'), '--hook', 'message_filtered', '--config', '{"spam_threshold": "high"}'], 'SMTP_E_PLUGIN_INIT'],
      [['plugin', 'call', fixture('spam_filter'), '--hook', 'message_filtered', '--config', 'not json'], 'SMTP_E_PLUGIN_CONFIG'],
      [['plugin', 'call', fixture('spam_filter'), '--hook', 'no_such_hook'], 'SMTP_E_CLI_USAGE'],
      [['plugin', 'call', fixture('spam_filter')], 'SMTP_E_CLI_USAGE'],
      [['plugin', 'build', join(FIXTURE_SOURCES, 'read_set.zig'), '--target', 'riscv'], 'SMTP_E_CLI_USAGE'],
      [['plugin', 'build', join(FIXTURE_SOURCES, 'read_set.zig'), '--zig', '0.9.0'], 'SMTP_E_ZIG_VERSION'],
    ];
    for (const [args, code] of cases) {
      const run = runCli(args);
      expect(run.status, args.join(' ')).not.toBe(0);
      expect(run.stdout, args.join(' ')).toBe('');
      expect(run.stderr, args.join(' ')).toContain(`error ${code}:`);
    }
  });

  it('reports a Zig compile error as SMTP_E_BUILD_FAILED with the compiler message', () => {
    const dir = mkdtempSync(join(tmpdir(), 'broken-'));
    writeFileSync(join(dir, 'broken.zig'), 'const plugin = @import("smtp-server").plugin;\nexport fn f() c_int { return undefined_name; }\n');
    const run = runCli(['plugin', 'build', join(dir, 'broken.zig')]);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain('SMTP_E_BUILD_FAILED');
    expect(run.stderr).toContain('undefined_name');
    expect(existsSync(join(dir, 'libbroken.so'))).toBe(false);
  });
});

describe('smtp-server plugin info', () => {
  it('prints metadata and ABI version as JSON', () => {
    const run = runCli(['plugin', 'info', fixture('spam_filter')]);
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({
      file: fixture('spam_filter'),
      kind: 'native',
      abi_version: formatAbiVersion(ABI_VERSION),
      name: 'spam-filter',
      version: '1.2.0',
      author: 'SMTP Team',
      description: 'Basic spam filtering using keyword analysis',
      license: 'MIT',
      dependencies: [],
      min_server_version: '0.28.0',
      max_server_version: null,
      handled_hooks: ['message_filtered'],
      blocking: false,
    });
    // A plugin that waits on the network says so (ABI 1.1 flags).
    const probe = runCli(['plugin', 'info', fixture('net_probe')]);
    expect(JSON.parse(probe.stdout)).toMatchObject({ name: 'net-probe', abi_version: formatAbiVersion(ABI_VERSION), blocking: true });
  });

  it('loads a library named relative to the working directory', () => {
    const run = runCli(['plugin', 'info', 'libspam_filter.so'], { cwd: FIXTURE_DIR });
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).name).toBe('spam-filter');
  });
});

describe('smtp-server plugin test', () => {
  it("runs the example's Zig unit tests, on the pinned and the newest Zig", () => {
    for (const version of ['0.14.1', '0.17.1']) {
      const run = runCli(['plugin', 'test', 'plugins/spam_filter.zig', '--zig', version]);
      expect(run.status, run.stderr).toBe(0);
      expect(run.stderr).toMatch(/All \d+ tests passed/);
    }
  });

  it('fails when a unit test fails', () => {
    const dir = mkdtempSync(join(tmpdir(), 'failing-'));
    writeFileSync(join(dir, 'failing.zig'), 'const std = @import("std");\nconst plugin = @import("smtp-server").plugin;\ntest "fails" { try std.testing.expectEqual(@as(u32, 1), plugin.abi_version); }\n');
    const run = runCli(['plugin', 'test', join(dir, 'failing.zig')]);
    expect(run.status).not.toBe(0);
  });
});

describe('smtp-server', () => {
  it('runs through npx from the checkout', () => {
    const run = spawnSync('npx', ['--no-install', 'smtp-server', '--version'], { encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout.trim()).toBe('0.28.0');
  });
});

describe('smtp-server plugin call on sandboxed plugins', () => {
  it('builds with --target wasm and gives the native results', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'wasm-')), 'spam_filter.wasm');
    const build = runCli(['plugin', 'build', 'plugins/spam_filter.zig', '--target', 'wasm', '-o', out]);
    expect(build.status, build.stderr).toBe(0);
    const args = ['--hook', 'message_filtered', '--meta', `message_body=${SIX_KEYWORDS}`];
    expect(callJson(runCli(['plugin', 'call', out, ...args]))).toEqual(callJson(runCli(['plugin', 'call', fixture('spam_filter'), ...args])));
    const info = JSON.parse(runCli(['plugin', 'info', out]).stdout);
    expect(info).toMatchObject({ kind: 'wasm', abi_version: formatAbiVersion(ABI_VERSION), name: 'spam-filter', handled_hooks: ['message_filtered'] });
  });

  it('stops an endless loop within twice --deadline-ms and a memory bomb at --memory-mb', () => {
    const started = Date.now();
    const loop = runCli(['plugin', 'call', wasmFixture('sandbox_probe'), '--hook', 'message_received', '--meta', 'mode=loop', '--deadline-ms', '200']);
    expect(loop.status).toBe(1);
    expect(loop.stderr).toContain('error SMTP_E_WASM_DEADLINE: plugin "sandbox-probe" message_received: interrupted after its 200 ms deadline');
    // The process start and plugin load are included; the loop itself is bounded by 2 x 200 ms.
    expect(Date.now() - started).toBeLessThan(5000);
    const bomb = runCli(['plugin', 'call', wasmFixture('sandbox_probe'), '--hook', 'message_received', '--meta', 'mode=bomb-handled', '--memory-mb', '8']);
    const result = callJson(bomb);
    expect(Number(result.metadata.allocated_mb)).toBeLessThan(8);
    const trap = runCli(['plugin', 'call', wasmFixture('sandbox_probe'), '--hook', 'message_received', '--meta', 'mode=bomb', '--memory-mb', '8']);
    expect(trap.status).toBe(1);
    expect(trap.stderr).toContain('error SMTP_E_WASM_TRAP');
    expect(runCli(['plugin', 'call', wasmFixture('sandbox_probe'), '--hook', 'message_received', '--memory-mb', 'lots']).stderr).toContain('SMTP_E_CLI_USAGE');
    expect(runCli(['plugin', 'call', wasmFixture('sandbox_probe'), '--hook', 'message_received', '--memory-mb', '0']).stderr).toContain('SMTP_E_PLUGIN_OPTIONS');
  });

  it("sends the plugin's std.debug.print to the log, not to stdout", () => {
    const run = runCli(['plugin', 'call', wasmFixture('sandbox_probe'), '--hook', 'message_received', '--meta', 'mode=print']);
    expect(callJson(run).code).toBe(0);
    const line = run.stderr.split('\n').find((l) => l.includes('hello from the sandbox'));
    expect(JSON.parse(line!)).toMatchObject({ stream: 'stderr', msg: 'hello from the sandbox' });
  });
});

describe('smtp-server plugin build on C plugins, native and sandboxed', () => {
  const dir = mkdtempSync(join(tmpdir(), 'c-both-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const built: Record<string, string> = {};
  const build = (source: string, target: 'native' | 'wasm', zig: string, output: string): void => {
    const run = runCli(['plugin', 'build', join(FIXTURE_SOURCES, source), '--target', target, '--zig', zig, '-o', join(dir, output)]);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout.trim()).toBe(join(dir, output));
    built[output] = run.stdout.trim();
  };

  beforeAll(() => {
    for (const zig of ['0.14.1', '0.17.1']) {
      build('c_spam_filter.c', 'native', zig, `${zig}/libc_spam_filter.so`);
      build('c_spam_filter.c', 'wasm', zig, `${zig}/c_spam_filter.wasm`);
    }
    build('c_probe.c', 'native', '0.14.1', 'libc_probe.so');
    build('c_probe.c', 'wasm', '0.14.1', 'c_probe.wasm');
  });

  it('builds the C spam filter (smtp_plugin_get_interface) both ways, with the verdicts of the gcc build', () => {
    // Nothing is left beside the outputs (Zig 0.14 writes a .o there).
    expect(readdirSync(join(dir, '0.14.1')).sort()).toEqual(['c_spam_filter.wasm', 'libc_spam_filter.so']);
    const cases = [
      ['--meta', `message_body=${SIX_KEYWORDS}`, '--meta', 'sender=a@example.com'],
      ['--meta', `message_body=${CLEAN}`],
      ['--config', '{"spam_threshold": 2}', '--meta', 'message_body=Buy VIAGRA, Click Here'],
    ];
    for (const args of cases) {
      const expected = callJson(runCli(['plugin', 'call', fixture('c_spam_filter'), '--hook', 'message_filtered', ...args]));
      for (const file of Object.keys(built).filter((name) => name.includes('spam'))) {
        expect(callJson(runCli(['plugin', 'call', built[file]!, '--hook', 'message_filtered', ...args])), `${file} ${args.join(' ')}`).toEqual(expected);
      }
    }
    expect(callJson(runCli(['plugin', 'call', built['0.14.1/c_spam_filter.wasm']!, '--hook', 'message_filtered', '--meta', `message_body=${SIX_KEYWORDS}`])))
      .toMatchObject({ code: 1, metadata: { spam_score: '6', is_spam: 'true' } });
  });

  it('gives the same code, cancel flag and metadata changes from the native and the wasm build of one C file', () => {
    const bytes = join(dir, 'binary.dat');
    writeFileSync(bytes, Buffer.from([0x78, 0x00, 0x79, 0xff, 0x01]));
    const cases: string[][] = [
      ['--hook', 'message_received', '--meta-file', `in=${bytes}`],
      ['--hook', 'command_validated', '--config', '{"greeting":"hi"}', '--meta', 'mode=stop'],
      ['--hook', 'message_received', '--meta', 'mode=cancel', '--meta', 'in=abc'],
      ['--hook', 'server_started', '--meta', 'mode=flag'],
    ];
    for (const args of cases) {
      const native = callJson(runCli(['plugin', 'call', built['libc_probe.so']!, ...args]));
      const wasm = callJson(runCli(['plugin', 'call', built['c_probe.wasm']!, ...args]));
      expect(wasm, args.join(' ')).toEqual(native);
      // The probe reached every part of the ABI it tries: the clock, a refused connect, a status code.
      expect(native.metadata, args.join(' ')).toMatchObject({ calls: '1', clock: 'plausible', connect: '-1', empty_key_status: '3' });
    }
    const reversed = callJson(runCli(['plugin', 'call', built['c_probe.wasm']!, ...cases[0]!]));
    // plugin call prints values as UTF-8 text: 0xff shows as U+FFFD.
    expect(reversed.metadata.out).toBe('\u0001\ufffdy\u0000x');
    expect(callJson(runCli(['plugin', 'call', built['c_probe.wasm']!, ...cases[2]!]))).toMatchObject({ code: 2, cancel: true, metadata: { hook: '0', out: 'cba' } });
    expect(callJson(runCli(['plugin', 'call', built['c_probe.wasm']!, ...cases[3]!]))).toMatchObject({ code: 0, cancel: true, metadata: { hook: '16' } });
    for (const file of ['libc_probe.so', 'c_probe.wasm']) {
      const bad = runCli(['plugin', 'call', built[file]!, '--hook', 'message_received', '--meta', 'mode=bad']);
      expect(bad.stderr, file).toContain('error SMTP_E_PLUGIN_HOOK_CODE: plugin "c-probe": message_received returned 7');
      const init = runCli(['plugin', 'call', built[file]!, '--hook', 'message_received', '--config', '{"fail": true}']);
      expect(init.stderr, file).toContain('error SMTP_E_PLUGIN_INIT');
    }
  });

  it('prints the same metadata for both builds with plugin info', () => {
    const [native, wasm] = ['libc_probe.so', 'c_probe.wasm'].map((file) => {
      const run = runCli(['plugin', 'info', built[file]!]);
      expect(run.status, run.stderr).toBe(0);
      return JSON.parse(run.stdout) as Record<string, unknown>;
    });
    expect(native).toMatchObject({ kind: 'native', name: 'c-probe', version: '2.1.0', dependencies: ['spam-filter@^1.0'], max_server_version: '1.0.0', handled_hooks: ['message_received', 'command_validated'] });
    expect({ ...wasm, file: undefined, kind: undefined }).toEqual({ ...native, file: undefined, kind: undefined });
    expect(wasm!.kind).toBe('wasm');
  });

  it('refuses what a C plugin cannot be, with coded errors', () => {
    const broken = join(dir, 'broken');
    mkdirSync(broken);
    // Neither smtp_plugin_get_interface nor the six functions: the sandbox has nothing to call.
    writeFileSync(join(broken, 'no_interface.c'), '#include "smtp_plugin.h"\nSMTP_PLUGIN_DECLARE_ABI_VERSION()\n');
    const link = runCli(['plugin', 'build', join(broken, 'no_interface.c'), '--target', 'wasm']);
    expect(link.status).toBe(1);
    expect(link.stderr).toContain('error SMTP_E_BUILD_FAILED');
    expect(link.stderr).toContain('must define smtp_plugin_get_interface or all six');
    expect(existsSync(join(broken, 'no_interface.wasm'))).toBe(false);
    expect(existsSync(join(broken, 'no_interface.wasm.o'))).toBe(false);
    writeFileSync(join(broken, 'syntax.c'), '#include "smtp_plugin.h"\nint smtp_plugin_enable(void) { return undefined_name; }\n');
    for (const target of ['native', 'wasm']) {
      const run = runCli(['plugin', 'build', join(broken, 'syntax.c'), '--target', target]);
      expect(run.stderr, target).toContain('error SMTP_E_BUILD_FAILED');
      expect(run.stderr, target).toContain('undefined_name');
    }
    expect(runCli(['plugin', 'build', join(broken, 'syntax.c'), '--target', 'component']).stderr).toContain('error SMTP_E_BUILD_TARGET');
    expect(runCli(['plugin', 'test', join(broken, 'syntax.c')]).stderr).toContain('error SMTP_E_CLI_USAGE');
  });
});
