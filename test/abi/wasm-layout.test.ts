import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ABI_VERSION_1_1, PluginFlag } from '../../src/abi/hooks.js';
import { WASM32_METADATA, WASM32_POINTER_BYTES, WASM_CONTEXT_STATUS, WASM_GUEST_EXPORTS, WASM_GUEST_OPTIONAL_EXPORTS, WASM_PLUGIN_EXPORTS, WASM_TAIL_IMPORT_NAME, WASM_WIRE_LENGTH_BYTES, wasmMetadataSize } from '../../src/abi/wasm-layout.js';
import type { Logger } from '../../src/log.js';
import { loadNativePlugin } from '../../src/native/native-plugin.js';
import { ABI_DIR, PROJECT_ROOT, ZIG_MODULE_ROOT } from '../../src/paths.js';
import type { Plugin } from '../../src/plugin/plugin.js';
import { buildPlugin } from '../../src/toolchain/build.js';
import { PINNED_ZIG_VERSION, SUPPORTED_ZIG_VERSIONS, findZig, zigEnv } from '../../src/toolchain/zig.js';
import { NET_IMPORT_MODULE, NET_IMPORT_NAMES } from '../../src/sandbox/guest-net.js';
import { COUNTER_IMPORT_NAMES } from '../../src/sandbox/guest-counters.js';
import { BUDGET_EXPORT, CHECK_IMPORT_MODULE, CHECK_IMPORT_NAME } from '../../src/sandbox/instrument.js';
import { BUDGET_ITERATIONS } from '../../src/sandbox/sandbox-errors.js';
import { ProcExit, WASI_MODULE, createWasi } from '../../src/sandbox/wasi.js';
import { loadWasmPlugin } from '../../src/wasm/wasm-plugin.js';
import { FIXTURE_SOURCES, wasmFixture } from '../helpers/fixtures.js';
import { readSignatures } from './wasm-signatures.js';

const FIXTURES = join(PROJECT_ROOT, 'test', 'fixtures', 'abi');
const WASM_HEADER = join(ABI_DIR, 'smtp_wasm.h');
const scratch = mkdtempSync(join(tmpdir(), 'wasm-layout-'));

interface Layout {
  sizes: Record<string, number>;
  offsets: Record<string, number>;
  [key: string]: unknown;
}

function zig(version: string, args: string[]): void {
  const run = spawnSync(findZig(version), args, { encoding: 'utf8', env: zigEnv() });
  expect(run.status, run.stderr).toBe(0);
}

/** Runs a wasm32-wasi command module through the sandbox's own WASI object; returns what it wrote to fds 1 and 2. */
function runWasiCommand(path: string): string {
  const lines: string[] = [];
  // The WASI object logs each output line with its stream, and its refusals without one.
  const record = (fields: { stream?: string }, text: string): void => {
    if (fields.stream !== undefined) lines.push(text);
  };
  const logger = { info: record, warn: record } as unknown as Logger;
  let memory: WebAssembly.Memory | undefined;
  const wasi = createWasi(() => memory!, logger);
  const module = new WebAssembly.Module(readFileSync(path));
  // wasi-libc's start-up (Zig 0.17.1) lists the preopened directories and
  // exits with 71 on any answer but EBADF ("no more"); the sandbox's WASI
  // answers ENOTCAPABLE. A command needs no directory: say there is none.
  const imports: WebAssembly.Imports = { [WASI_MODULE]: wasi.imports as WebAssembly.ModuleImports };
  for (const entry of WebAssembly.Module.imports(module)) {
    if (entry.module !== WASI_MODULE && entry.kind === 'function') (imports[entry.module] ??= {})[entry.name] = () => 0;
  }
  const instance = new WebAssembly.Instance(module, imports);
  memory = instance.exports.memory as WebAssembly.Memory;
  try {
    (instance.exports._start as () => void)();
  } catch (error) {
    if (!(error instanceof ProcExit) || error.exitCode !== 0) throw error;
  }
  wasi.flush();
  return lines.join('\n');
}

/** test/fixtures/abi/layout_dump.c compiled for wasm32 (with smtp_wasm.h's assertions) and run. */
function cWasmLayout(version: string): Layout {
  const out = join(scratch, `layout_dump_c_${version}.wasm`);
  zig(version, ['cc', '-target', 'wasm32-wasi', '-std=c11', '-Wall', '-Werror', `-I${ABI_DIR}`, '-include', WASM_HEADER, '-o', out, join(FIXTURES, 'layout_dump.c')]);
  return JSON.parse(runWasiCommand(out)) as Layout;
}

/** test/fixtures/abi/layout_dump.zig (the Zig binding every wasm build links) built for wasm32 and run. */
function zigWasmLayout(version: string): Layout {
  const out = join(scratch, `layout_dump_zig_${version}.wasm`);
  zig(version, ['build-exe', '-target', 'wasm32-wasi', '--dep', 'smtp-server', `-Mroot=${join(FIXTURES, 'layout_dump.zig')}`, `-Msmtp-server=${ZIG_MODULE_ROOT}`, `-femit-bin=${out}`]);
  return JSON.parse(runWasiCommand(out)) as Layout;
}

/** The #define NAME value lines of abi/smtp_wasm.h, strings unquoted and numbers evaluated. */
function headerDefines(): Record<string, string | number> {
  const defines: Record<string, string | number> = {};
  for (const match of readFileSync(WASM_HEADER, 'utf8').matchAll(/^#define (SMTP_WASM\w*) (.+?)\s*(?:\/\*.*)?$/gm)) {
    const text = match[2]!;
    const string = /^"(.*)"$/.exec(text);
    const number = /^\(?(\d+)u?(?: << (\d+))?\)?$/.exec(text);
    if (string) defines[match[1]!] = string[1]!;
    else if (number) defines[match[1]!] = Number(number[1]) * 2 ** Number(number[2] ?? 0);
  }
  return defines;
}

describe('abi/smtp_wasm.h: the sandbox ABI', () => {
  const c = cWasmLayout(PINNED_ZIG_VERSION);
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('lays out smtp_plugin_metadata on wasm32 as src/abi/wasm-layout.ts says (what the host reads)', () => {
    const metadata = Object.fromEntries(Object.entries(c.offsets).filter(([key]) => key.startsWith('smtp_plugin_metadata.')).map(([key, offset]) => [key.slice('smtp_plugin_metadata.'.length), offset]));
    expect(metadata).toEqual(WASM32_METADATA.offsets);
    WASM32_METADATA.pointerFields.forEach((field, index) => expect(WASM32_METADATA.offsets[field], field).toBe(index * WASM32_POINTER_BYTES));
    expect(c.sizes.smtp_plugin_metadata).toBe(WASM32_METADATA.size_1_1);
    expect(WASM32_METADATA.offsets.flags).toBe(WASM32_METADATA.size_1_0);
    expect(wasmMetadataSize(ABI_VERSION_1_1)).toBe(48);
    expect(wasmMetadataSize((1 << 16) | 0)).toBe(40);
  });

  it('gives the same wasm32 layout with Zig 0.17.1 as with the pinned Zig', () => {
    expect(cWasmLayout('0.17.1')).toEqual(c);
  });

  for (const version of SUPPORTED_ZIG_VERSIONS) {
    it(`matches the Zig binding built for wasm32 with Zig ${version}`, () => {
      const { hook_names: _names, ...zigLayout } = zigWasmLayout(version);
      expect(zigLayout).toEqual(c);
    });
  }

  it("states the layout, the status bits and the host's names as the TypeScript host uses them", () => {
    const defines = headerDefines();
    expect(defines).toMatchObject({
      SMTP_WASM32_POINTER_BYTES: WASM32_POINTER_BYTES,
      SMTP_WASM32_METADATA_HANDLED_HOOKS_OFFSET: WASM32_METADATA.offsets.handled_hooks,
      SMTP_WASM32_METADATA_FLAGS_OFFSET: WASM32_METADATA.offsets.flags,
      SMTP_WASM32_METADATA_SIZE_1_0: WASM32_METADATA.size_1_0,
      SMTP_WASM32_METADATA_SIZE_1_1: WASM32_METADATA.size_1_1,
      SMTP_WASM_WIRE_LENGTH_BYTES: WASM_WIRE_LENGTH_BYTES,
      SMTP_WASM_STATUS_CANCEL: WASM_CONTEXT_STATUS.CANCEL,
      SMTP_WASM_STATUS_NET_DENIED: WASM_CONTEXT_STATUS.NET_DENIED,
      SMTP_WASM_STATUS_CHANGED_SHIFT: WASM_CONTEXT_STATUS.CHANGED_SHIFT,
      SMTP_WASM_HOST_MODULE: NET_IMPORT_MODULE,
      SMTP_WASM_WASI_MODULE: WASI_MODULE,
      SMTP_WASM_SANDBOX_MODULE: CHECK_IMPORT_MODULE,
      SMTP_WASM_BUDGET_CHECK_IMPORT: CHECK_IMPORT_NAME,
      SMTP_WASM_BUDGET_GLOBAL_EXPORT: BUDGET_EXPORT,
      SMTP_WASM_BUDGET_ITERATIONS: BUDGET_ITERATIONS,
    });
    // What the host's WASI answers for a function it does not grant.
    const wasi = createWasi(() => new WebAssembly.Memory({ initial: 1 }), { warn: () => undefined } as unknown as Logger);
    expect((wasi.imports.path_open as () => number)()).toBe(defines.SMTP_WASM_WASI_ENOTCAPABLE);
  });

  describe('declares every export and import with the signature of the modules plugin build makes', () => {
    const stub = join(scratch, 'wasm_abi_stub.wasm');
    zig(PINNED_ZIG_VERSION, ['build-exe', '-target', 'wasm32-freestanding', '-fno-entry', '-rdynamic', '-O', 'ReleaseSmall', `-I${ABI_DIR}`, join(FIXTURES, 'wasm_abi_stub.c'), `-femit-bin=${stub}`]);
    const header = readSignatures(readFileSync(stub));

    it('names the exports and imports the host uses', () => {
      expect([...header.exports.keys()].filter((name) => name.startsWith('smtp_wasm_')).sort()).toEqual([...WASM_GUEST_EXPORTS, ...WASM_GUEST_OPTIONAL_EXPORTS].sort());
      for (const name of WASM_PLUGIN_EXPORTS) expect(header.exports.has(name), name).toBe(true);
      expect([...header.imports.keys()].sort()).toEqual([...NET_IMPORT_NAMES, ...COUNTER_IMPORT_NAMES, WASM_TAIL_IMPORT_NAME].map((name) => `${NET_IMPORT_MODULE}.${name}`).sort());
    });

    // A Zig plugin (both Zig versions) and a C plugin: each links the Zig guest half.
    const modules: [string, () => Promise<string>][] = [
      ['a Zig plugin built with Zig 0.14.1', async () => wasmFixture('sandbox_probe')],
      ['a Zig plugin built with Zig 0.17.1', async () => wasmFixture('sandbox_probe_newest')],
      ['a C plugin', () => buildPlugin({ source: join(FIXTURE_SOURCES, 'c_probe.c'), target: 'wasm', output: join(scratch, 'c_probe.wasm'), optimize: 'ReleaseSmall' })],
    ];
    for (const [what, path] of modules) {
      it(`matches ${what}`, async () => {
        const built = readSignatures(readFileSync(await path()));
        // The optional exports too: every module built here links the current guest half.
        for (const name of [...WASM_GUEST_EXPORTS, ...WASM_GUEST_OPTIONAL_EXPORTS, ...WASM_PLUGIN_EXPORTS]) {
          expect(built.exports.get(name), name).toBe(header.exports.get(name));
        }
        const hostImports = [...built.imports.keys()].filter((key) => key.startsWith(`${NET_IMPORT_MODULE}.`));
        expect(hostImports.sort()).toEqual([...header.imports.keys()].sort());
        for (const key of hostImports) expect(built.imports.get(key), key).toBe(header.imports.get(key));
      });
    }
  });

  describe('is the layout the host reads a C plugin\'s metadata with', () => {
    const loaded: Plugin[] = [];
    afterAll(() => loaded.forEach((plugin) => plugin.unload()));

    it('reads the same metadata from the native and the wasm build of one C file', async () => {
      const source = join(FIXTURE_SOURCES, 'c_metadata.c');
      const [library, module] = await Promise.all([
        buildPlugin({ source, target: 'native', output: join(scratch, 'libc_metadata.so') }),
        buildPlugin({ source, target: 'wasm', output: join(scratch, 'c_metadata.wasm'), optimize: 'ReleaseSmall' }),
      ]);
      const native = loadNativePlugin(library);
      loaded.push(native);
      const wasm = loadWasmPlugin(module);
      loaded.push(wasm);
      expect(native.metadata).toEqual({
        name: 'layout-probe',
        version: '3.4.5',
        author: 'an author',
        description: 'a description',
        license: 'a license',
        dependencies: ['first@^1.2', 'second'],
        minServerVersion: '0.1.0',
        maxServerVersion: '9.8.7',
        handledHooks: (1n << 1n) | (1n << 18n),
        flags: PluginFlag.BLOCKING,
      });
      expect(wasm.metadata).toEqual(native.metadata);
    });
  });
});
