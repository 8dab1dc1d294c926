import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ABI_VERSION } from '../../src/abi/hooks.js';
import {
  BUDGET_EXPORT,
  CHECK_IMPORT_MODULE,
  CHECK_IMPORT_NAME,
  WasmInstrumentError,
  instrument,
  type InstrumentOptions,
} from '../../src/sandbox/instrument.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ZIG = join(ROOT, '.toolchain', 'zig-0.14.1', 'ziglang', 'zig');
const ZIG_CACHE = join(ROOT, '.toolchain', 'zig-cache');
// Zig's wasm32 builds start at 257 pages (a 16 MiB stack plus data).
const OPTIONS: InstrumentOptions = { memoryPagesMax: 1024, budgetInitial: 10_000 };

// ---------------------------------------------------------------------------
// A tiny module builder: every helper returns plain byte arrays.

type Bytes = number[];

function u32(value: number): Bytes {
  const out: Bytes = [];
  do {
    const low = value % 128;
    value = Math.floor(value / 128);
    out.push(value === 0 ? low : low | 0x80);
  } while (value !== 0);
  return out;
}

function s32(value: number): Bytes {
  const out: Bytes = [];
  for (;;) {
    const low = value & 0x7f;
    value >>= 7;
    const last = (value === 0 && (low & 0x40) === 0) || (value === -1 && (low & 0x40) !== 0);
    out.push(last ? low : low | 0x80);
    if (last) return out;
  }
}

const str = (text: string): Bytes => {
  const bytes = [...new TextEncoder().encode(text)];
  return [...u32(bytes.length), ...bytes];
};
const vec = (items: Bytes[]): Bytes => [...u32(items.length), ...items.flat()];
const section = (id: number, body: Bytes): Bytes => [id, ...u32(body.length), ...body];
const vecSection = (id: number, items: Bytes[]): Bytes => section(id, vec(items));
const wasm = (...sections: Bytes[]): Uint8Array<ArrayBuffer> =>
  new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...sections.flat()]);
/** A code section entry: locals as [count, type] pairs, then instructions (the final `end` is added). */
const func = (locals: [number, number][], code: Bytes): Bytes => {
  const body = [...vec(locals.map(([n, t]) => [...u32(n), t])), ...code, 0x0b];
  return [...u32(body.length), ...body];
};
const funcType = (params: Bytes, results: Bytes): Bytes => [0x60, ...vec(params.map((t) => [t])), ...vec(results.map((t) => [t]))];
const customSection = (name: string, payload: Bytes): Bytes => section(0, [...str(name), ...payload]);

const I32 = 0x7f;
const I64 = 0x7e;
const FUNCREF = 0x70;
const END = 0x0b;
const EXPORT_FUNC = 0x00;

/** One `() -> i32` function exported as "run", with the given body; memory 1 page. */
function singleFunction(code: Bytes, locals: [number, number][] = []): Uint8Array<ArrayBuffer> {
  return wasm(
    vecSection(1, [funcType([], [I32])]),
    vecSection(3, [[0]]),
    vecSection(5, [[0x00, 1]]),
    vecSection(7, [[...str('run'), EXPORT_FUNC, 0]]),
    vecSection(10, [func(locals, code)]),
  );
}

// ---------------------------------------------------------------------------
// Instantiation helpers.

type Exports = WebAssembly.Exports;
type HostFunction = (...args: number[]) => number | void;

function callExport(exports: Exports, name: string, ...args: number[]): number {
  const fn = exports[name];
  if (typeof fn !== 'function') throw new Error(`no exported function ${name}`);
  return (fn as (...a: number[]) => number)(...args);
}

function exportedMemory(exports: Exports): WebAssembly.Memory {
  const memory = exports.memory;
  if (!(memory instanceof WebAssembly.Memory)) throw new Error('no exported memory');
  return memory;
}

function budgetGlobal(exports: Exports): WebAssembly.Global {
  const global = exports[BUDGET_EXPORT];
  if (!(global instanceof WebAssembly.Global)) throw new Error(`no ${BUDGET_EXPORT}`);
  return global;
}

/** WASI stubs for every WASI import, with an fd_write that reports everything written. */
function wasiImports(module: WebAssembly.Module, memory: () => WebAssembly.Memory): Record<string, HostFunction> {
  const wasi: Record<string, HostFunction> = {};
  for (const entry of WebAssembly.Module.imports(module)) {
    if (entry.module === 'wasi_snapshot_preview1' && entry.kind === 'function') wasi[entry.name] = () => 52; // ENOSYS
  }
  wasi.fd_write = (_fd, iovs, iovsLength, writtenPtr) => {
    const view = new DataView(memory().buffer);
    let written = 0;
    for (let i = 0; i < iovsLength; i++) written += view.getUint32(iovs + i * 8 + 4, true);
    view.setUint32(writtenPtr, written, true);
    return 0;
  };
  return wasi;
}

/** The host's clock, network and counters, as a plugin with no grants sees them: every connect and counter call refused. */
// context_tail (ABI 1.3) is never called here: these tests load the whole text with smtp_wasm_context_load.
const NO_NET = { now_unix_ms: () => 0n, net_connect: () => -1, net_send: () => -5, net_recv: () => -5, net_close: () => -5, counter_incr: () => -1n, context_tail: () => -1 };

function instantiatePlugin(bytes: Uint8Array<ArrayBuffer>, budgetExhausted: () => void = () => {}): Exports {
  const module = new WebAssembly.Module(bytes);
  let exports: Exports = {};
  const instance = new WebAssembly.Instance(module, {
    wasi_snapshot_preview1: wasiImports(module, () => exportedMemory(exports)),
    [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: budgetExhausted },
    smtp_host: NO_NET,
  });
  exports = instance.exports;
  return exports;
}

/** Drives a plugin through the guest half of the sandbox: init, one message_filtered hook, changes read back. */
function runSpamFilter(exports: Exports, config: string, body: string): { code: number; changes: Map<string, string>; name: string } {
  const encoder = new TextEncoder();
  const bytes = (): Uint8Array => new Uint8Array(exportedMemory(exports).buffer);
  const put = (data: Uint8Array): number => {
    const ptr = callExport(exports, 'smtp_wasm_alloc', data.length);
    bytes().set(data, ptr);
    return ptr;
  };
  const cString = (ptr: number): string => {
    const memory = bytes();
    let end = ptr;
    while (memory[end] !== 0) end++;
    return new TextDecoder().decode(memory.subarray(ptr, end));
  };
  const metadataPtr = callExport(exports, 'smtp_plugin_get_metadata');
  const name = cString(new DataView(exportedMemory(exports).buffer).getUint32(metadataPtr, true));
  const configPtr = put(encoder.encode(`${config}\0`));
  expect(callExport(exports, 'smtp_plugin_init', callExport(exports, 'smtp_wasm_host_allocator'), configPtr)).toBe(0);

  const key = encoder.encode('message_body');
  const value = encoder.encode(body);
  const wire = new Uint8Array(8 + key.length + value.length);
  const view = new DataView(wire.buffer);
  view.setUint32(0, key.length, true);
  wire.set(key, 4);
  view.setUint32(4 + key.length, value.length, true);
  wire.set(value, 8 + key.length);
  const ctx = callExport(exports, 'smtp_wasm_context_create', 256, 65536, 64);
  expect(ctx).not.toBe(0);
  expect(callExport(exports, 'smtp_wasm_context_load', ctx, 2, put(wire), wire.length)).toBe(0);
  const code = callExport(exports, 'smtp_plugin_execute_hook', ctx);

  const out = callExport(exports, 'smtp_wasm_alloc', 1024);
  const length = callExport(exports, 'smtp_wasm_take_changes', ctx, out, 1024);
  const changes = new Map<string, string>();
  const changed = bytes().slice(out, out + length);
  const changedView = new DataView(changed.buffer);
  for (let at = 0; at < length; ) {
    const keyLength = changedView.getUint32(at, true);
    const k = new TextDecoder().decode(changed.subarray(at + 4, at + 4 + keyLength));
    at += 4 + keyLength;
    const valueLength = changedView.getUint32(at, true);
    changes.set(k, new TextDecoder().decode(changed.subarray(at + 4, at + 4 + valueLength)));
    at += 4 + valueLength;
  }
  return { code, changes, name };
}

function expectInstrumentError(run: () => unknown, reason: WasmInstrumentError['reason'], message?: RegExp): WasmInstrumentError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(WasmInstrumentError);
    const instrumentError = error as WasmInstrumentError;
    expect(instrumentError.reason).toBe(reason);
    if (message) expect(instrumentError.message).toMatch(message);
    return instrumentError;
  }
  throw new Error('instrument() did not throw');
}

const exportNames = (bytes: Uint8Array<ArrayBuffer>): string[] =>
  WebAssembly.Module.exports(new WebAssembly.Module(bytes)).map((e) => `${e.name}:${e.kind}`);

// ---------------------------------------------------------------------------
// Zig-built fixtures.

const LOOP_PLUGIN = `
const std = @import("std");
const plugin = @import("smtp-server").plugin;

const metadata = plugin.PluginMetadata{ .name = "forever", .version = "1.0.0" };

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    _ = .{ host_allocator, config };
    return 0;
}
export fn smtp_plugin_deinit() callconv(.c) void {}
export fn smtp_plugin_get_metadata() callconv(.c) ?*const plugin.PluginMetadata {
    return &metadata;
}
export fn smtp_plugin_execute_hook(context: *plugin.HookContext) callconv(.c) c_int {
    _ = context;
    var i: u64 = 0;
    while (true) {
        i +%= 1;
        std.mem.doNotOptimizeAway(i);
    }
}
export fn smtp_plugin_enable() callconv(.c) c_int {
    return 0;
}
export fn smtp_plugin_disable() callconv(.c) c_int {
    return 0;
}
`;

function zigWasm(source: string, output: string): Promise<Uint8Array<ArrayBuffer>> {
  const args = [
    'build-exe', '-fno-entry', '-rdynamic', '-target', 'wasm32-wasi', '-O', 'ReleaseSmall',
    '--dep', 'smtp-server', `-Mroot=${source}`, `-Msmtp-server=${join(ROOT, 'abi', 'zig', 'smtp-server.zig')}`,
    `-femit-bin=${output}`,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(ZIG, args, {
      env: { ...process.env, ZIG_GLOBAL_CACHE_DIR: ZIG_CACHE, ZIG_LOCAL_CACHE_DIR: ZIG_CACHE },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (status) => {
      if (status !== 0) reject(new Error(`zig build of ${source} failed (${status}):\n${stderr}`));
      else resolve(new Uint8Array(readFileSync(output)));
    });
  });
}

let dir = '';
let spamFilter: Uint8Array<ArrayBuffer>;
let guideSpamFilter: Uint8Array<ArrayBuffer>;
let loopPlugin: Uint8Array<ArrayBuffer>;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'smtp-instrument-'));
  writeFileSync(join(dir, 'forever.zig'), LOOP_PLUGIN);
  [spamFilter, guideSpamFilter, loopPlugin] = await Promise.all([
    zigWasm(join(ROOT, 'plugins', 'spam_filter.zig'), join(dir, 'spam_filter.wasm')),
    zigWasm(join(ROOT, 'test', 'fixtures', 'plugins', 'guide_spam_filter.zig'), join(dir, 'guide_spam_filter.wasm')),
    zigWasm(join(dir, 'forever.zig'), join(dir, 'forever.wasm')),
  ]);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------

describe('instrument() on Zig-built plugins', () => {
  it('keeps the spam filters valid, working and with the same exports plus the budget global', () => {
    for (const original of [spamFilter, guideSpamFilter]) {
      const result = instrument(original, OPTIONS);
      expect(WebAssembly.validate(result.bytes)).toBe(true);
      expect(result.loopCount).toBeGreaterThan(0);
      expect(result.definesMemory).toBe(true);
      expect(result.importsMemory).toBe(false);
      expect(exportNames(result.bytes)).toEqual([...exportNames(original), `${BUDGET_EXPORT}:global`]);
      const imports = WebAssembly.Module.imports(new WebAssembly.Module(result.bytes));
      expect(imports.at(-1)).toEqual({ module: CHECK_IMPORT_MODULE, name: CHECK_IMPORT_NAME, kind: 'function' });

      const exports = instantiatePlugin(result.bytes);
      expect(callExport(exports, 'smtp_plugin_abi_version')).toBe(ABI_VERSION);
      expect(budgetGlobal(exports).value).toBe(OPTIONS.budgetInitial);
    }
  });

  it('runs a whole message_filtered hook through the instrumented spam filter exactly as the original does', () => {
    const body = 'Buy viagra now! Click here for free money!';
    const config = '{"spam_threshold": 3.0}';
    const before = runSpamFilter(instantiatePlugin(spamFilter), config, body);
    let checks = 0;
    const exports = instantiatePlugin(instrument(spamFilter, { ...OPTIONS, budgetInitial: 7 }).bytes, () => {
      checks++;
      budgetGlobal(exports).value = 7;
    });
    const after = runSpamFilter(exports, config, body);
    expect(after).toEqual(before);
    expect(after.code).toBe(1);
    expect(after.name).toBe('spam-filter');
    expect(after.changes.get('spam_score')).toBe('3');
    expect(after.changes.get('is_spam')).toBe('true');
    // The keyword scan loops far more than 7 times, so the clock was consulted.
    expect(checks).toBeGreaterThan(0);
  });

  it('runs the guide spam filter after instrumentation', () => {
    const exports = instantiatePlugin(instrument(guideSpamFilter, OPTIONS).bytes);
    const result = runSpamFilter(exports, '', 'viagra casino winner free money click here');
    expect(result).toEqual({ code: 1, name: 'spam-filter', changes: new Map([['spam_score', '5'], ['is_spam', 'true']]) });
  });

  it('interrupts an endless loop when budget_exhausted throws', () => {
    const result = instrument(loopPlugin, { ...OPTIONS, budgetInitial: 1000 });
    expect(result.loopCount).toBeGreaterThan(0);
    class Deadline extends Error {}
    let calls = 0;
    const exports = instantiatePlugin(result.bytes, () => {
      calls++;
      throw new Deadline('deadline passed');
    });
    expect(() => callExport(exports, 'smtp_plugin_execute_hook', 0)).toThrow(Deadline);
    // Interrupted at the first check, after exactly budgetInitial loop iterations.
    expect(calls).toBe(1);
    expect(budgetGlobal(exports).value).toBe(0);
  });

  it('lets the loop run on while budget_exhausted resets the budget', () => {
    let calls = 0;
    const exports = instantiatePlugin(instrument(loopPlugin, { ...OPTIONS, budgetInitial: 1000 }).bytes, () => {
      calls++;
      if (calls === 50) throw new Error('deadline passed');
      budgetGlobal(exports).value = 1000;
    });
    expect(() => callExport(exports, 'smtp_plugin_execute_hook', 0)).toThrow('deadline passed');
    expect(calls).toBe(50);
    // A budget that is not reset counts on below zero and is only exhausted again after 2^32 iterations,
    // so the host must reset it; the instance stays usable for the next call.
    budgetGlobal(exports).value = 1000;
    expect(callExport(exports, 'smtp_plugin_abi_version')).toBe(ABI_VERSION);
  });

  it('caps the memory of a real module', () => {
    const original = new WebAssembly.Instance(new WebAssembly.Module(spamFilter), {
      wasi_snapshot_preview1: { fd_write: () => 0 },
      smtp_host: NO_NET,
    });
    const startPages = exportedMemory(original.exports).buffer.byteLength / 65536;
    const exports = instantiatePlugin(instrument(spamFilter, { ...OPTIONS, memoryPagesMax: startPages + 2 }).bytes);
    const memory = exportedMemory(exports);
    expect(() => memory.grow(3)).toThrow(RangeError);
    expect(memory.grow(2)).toBe(startPages);
    expect(() => memory.grow(1)).toThrow(RangeError);
    expectInstrumentError(() => instrument(spamFilter, { ...OPTIONS, memoryPagesMax: startPages - 1 }), 'memory',
      new RegExp(`asks for ${startPages} pages at start, the limit is ${startPages - 1}`));
  });

  it('refuses a truncated real module as malformed', () => {
    for (const length of [7, 9, 100, Math.floor(spamFilter.length / 2), spamFilter.length - 1]) {
      expectInstrumentError(() => instrument(spamFilter.slice(0, length), OPTIONS), 'malformed');
    }
  });
});

describe('instrument() function index rewriting', () => {
  // func 0: imported env.bump; 1: f1 = f2() + 1; 2: f2 = 41; 3: start (calls bump);
  // 4: via the table slot an element segment filled; 5: via ref.func in code; 6: via a ref.func global;
  // 7: calls f2 (a tail call, return_call, is refused: see 'refuses tail calls').
  const T_I32 = 0;
  const T_VOID = 1;
  const nameSubsection = (id: number, payload: Bytes): Bytes => [id, ...u32(payload.length), ...payload];
  const viaSlot = (slot: number, set: Bytes): Bytes => [0x41, slot, ...set, 0x26, 0, 0x41, slot, 0x11, T_I32, 0];
  const module = wasm(
    customSection('producers', [0]),
    vecSection(1, [funcType([], [I32]), funcType([], [])]),
    vecSection(2, [[...str('env'), ...str('bump'), 0x00, T_VOID]]),
    vecSection(3, [[T_I32], [T_I32], [T_VOID], [T_I32], [T_I32], [T_I32], [T_I32]]),
    vecSection(4, [[FUNCREF, 0x00, 8]]),
    vecSection(6, [
      [FUNCREF, 0x00, 0xd2, 2, END], // global 0: ref.func f2
      [I32, 0x01, 0x41, 0, END], // global 1: mutable i32, shows the budget global comes after it
    ]),
    vecSection(7, [
      [...str('f1'), EXPORT_FUNC, 1],
      [...str('f2'), EXPORT_FUNC, 2],
      [...str('viaTable'), EXPORT_FUNC, 4],
      [...str('viaRefFunc'), EXPORT_FUNC, 5],
      [...str('viaGlobal'), EXPORT_FUNC, 6],
      [...str('viaCall'), EXPORT_FUNC, 7],
      [...str('table'), 0x01, 0],
      [...str('counter'), 0x03, 1],
    ]),
    section(8, [3]),
    vecSection(9, [
      [0, 0x41, 0, END, ...vec([[2]])], // table[0] = f2
      [1, 0x00, ...vec([[1]])], // passive
      [2, 0, 0x41, 3, END, 0x00, ...vec([[1]])], // table[3] = f1
      [3, 0x00, ...vec([[5], [6]])], // declarative
      [4, 0x41, 2, END, ...vec([[0xd2, 1, END]])], // table[2] = f1
      [5, FUNCREF, ...vec([[0xd0, FUNCREF, END], [0xd2, 7, END]])], // passive expressions
      [6, 0, 0x41, 1, END, FUNCREF, ...vec([[0xd2, 2, END]])], // table[1] = f2
      [7, FUNCREF, ...vec([[0xd2, 4, END]])], // declarative expressions
    ]),
    vecSection(10, [
      func([], [0x10, 2, 0x41, 1, 0x6a]),
      func([], [0x41, 41]),
      func([], [0x10, 0, 0x23, 1, 0x41, 1, 0x6a, 0x24, 1]),
      func([], [0x41, 2, 0x11, T_I32, 0]),
      func([], viaSlot(6, [0xd2, 1])),
      func([], viaSlot(7, [0x23, 0])),
      func([], [0x10, 2]),
    ]),
    customSection('name', nameSubsection(1, vec([[0, ...str('bump')]]))),
    customSection('.debug_info', new Array(4096).fill(0x55)),
    customSection('sourceMappingURL', str('plugin.wasm.map')),
  );

  function observe(bytes: Uint8Array<ArrayBuffer>): unknown {
    let bumps = 0;
    const exports = new WebAssembly.Instance(new WebAssembly.Module(bytes), {
      env: { bump: () => void bumps++ },
      [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: () => {} },
    }).exports;
    const table = exports.table as WebAssembly.Table;
    const slots = [0, 1, 2, 3].map((i) => (table.get(i) as () => number)());
    const calls = ['f1', 'f2', 'viaTable', 'viaRefFunc', 'viaGlobal', 'viaCall'].map((name) => callExport(exports, name));
    return { bumps, counter: (exports.counter as WebAssembly.Global).value, slots, calls };
  }

  it('behaves exactly as before', () => {
    expect(WebAssembly.validate(module)).toBe(true);
    const result = instrument(module, OPTIONS);
    expect(WebAssembly.validate(result.bytes)).toBe(true);
    expect(observe(module)).toEqual({ bumps: 1, counter: 1, slots: [41, 41, 42, 42], calls: [42, 41, 42, 42, 41, 41] });
    expect(observe(result.bytes)).toEqual(observe(module));
    expect(result).toMatchObject({ loopCount: 0, definesMemory: false, importsMemory: false, importedMemoryPagesMin: undefined });
  });

  it('adds the import after the existing ones and the budget global after the defined ones', () => {
    const compiled = new WebAssembly.Module(instrument(module, OPTIONS).bytes);
    expect(WebAssembly.Module.imports(compiled).map((i) => `${i.module}.${i.name}`)).toEqual(['env.bump', `${CHECK_IMPORT_MODULE}.${CHECK_IMPORT_NAME}`]);
    expect(exportNames(instrument(module, OPTIONS).bytes)).toEqual([...exportNames(module), `${BUDGET_EXPORT}:global`]);
  });

  it('drops the sections that describe the original code (names, DWARF, source map) and keeps other custom sections', () => {
    const { bytes } = instrument(module, OPTIONS);
    const compiled = new WebAssembly.Module(bytes);
    for (const name of ['name', '.debug_info', 'sourceMappingURL']) expect(WebAssembly.Module.customSections(compiled, name), name).toHaveLength(0);
    expect(WebAssembly.Module.customSections(compiled, 'producers')).toHaveLength(1);
    // The 4 KiB of DWARF is not carried along.
    expect(bytes.length).toBeLessThan(module.length - 4096);
  });

  it('creates the type, import, global and export sections a module lacks', () => {
    const bare = wasm(vecSection(5, [[0x00, 1]]));
    const result = instrument(bare, OPTIONS);
    expect(WebAssembly.validate(result.bytes)).toBe(true);
    const exports = new WebAssembly.Instance(new WebAssembly.Module(result.bytes), {
      [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: () => {} },
    }).exports;
    expect(budgetGlobal(exports).value).toBe(OPTIONS.budgetInitial);
    expect(result.definesMemory).toBe(true);
  });

  it('refuses a module instrumented twice', () => {
    expectInstrumentError(() => instrument(instrument(module, OPTIONS).bytes, OPTIONS), 'unsupported', /instrumented twice/);
  });
});

describe('instrument() loops', () => {
  // run(outer, inner): do { do { total++ } while (++j < inner) } while (++i < outer); return total.
  const nested = wasm(
    vecSection(1, [funcType([I32, I32], [I32])]),
    vecSection(3, [[0]]),
    vecSection(7, [[...str('run'), EXPORT_FUNC, 0]]),
    vecSection(10, [func([[3, I32]], [
      0x03, 0x40, // loop (outer)
      0x41, 0, 0x21, 3, // j = 0
      0x03, 0x40, // loop (inner)
      0x20, 4, 0x41, 1, 0x6a, 0x21, 4, // total++
      0x20, 3, 0x41, 1, 0x6a, 0x22, 3, 0x20, 1, 0x49, 0x0d, 0, // br_if (++j < inner)
      END,
      0x20, 2, 0x41, 1, 0x6a, 0x22, 2, 0x20, 0, 0x49, 0x0d, 0, // br_if (++i < outer)
      END,
      0x20, 4,
    ])]),
  );

  function run(budgetInitial: number, reset: boolean): { total: number; checks: number; budget: number } {
    const result = instrument(nested, { ...OPTIONS, budgetInitial });
    expect(result.loopCount).toBe(2);
    let checks = 0;
    const exports: Exports = new WebAssembly.Instance(new WebAssembly.Module(result.bytes), {
      [CHECK_IMPORT_MODULE]: {
        [CHECK_IMPORT_NAME]: () => {
          checks++;
          if (reset) budgetGlobal(exports).value = budgetInitial;
        },
      },
    }).exports;
    const total = callExport(exports, 'run', 3, 5);
    return { total, checks, budget: budgetGlobal(exports).value as number };
  }

  it('counts both nested loop headers and decrements the budget on every iteration', () => {
    // 3 outer + 15 inner iterations: 18 loop headers entered.
    expect(run(1000, false)).toEqual({ total: 15, checks: 0, budget: 1000 - 18 });
    expect(run(4, true)).toEqual({ total: 15, checks: 4, budget: 2 });
    expect(run(18, false)).toEqual({ total: 15, checks: 1, budget: 0 });
  });

  it('instruments a loop with a type-index block type and leaves its parameters alone', () => {
    // run() = loop (type [i32] -> [i32]) with 5 as its parameter: add 1 and leave.
    const bytes = wasm(
      vecSection(1, [funcType([], [I32]), funcType([I32], [I32])]),
      vecSection(3, [[0]]),
      vecSection(7, [[...str('run'), EXPORT_FUNC, 0]]),
      vecSection(10, [func([], [0x41, 5, 0x03, 1, 0x41, 1, 0x6a, END])]),
    );
    const result = instrument(bytes, OPTIONS);
    expect(result.loopCount).toBe(1);
    const exports = new WebAssembly.Instance(new WebAssembly.Module(result.bytes), {
      [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: () => {} },
    }).exports;
    expect(callExport(exports, 'run')).toBe(6);
  });
});

describe('instrument() decoding', () => {
  it('copies every kind of immediate unchanged', () => {
    const code: Bytes = [
      // block (result i32) with br_table, br, br_if
      0x02, I32, 0x41, 7, 0x41, 1, 0x0e, ...vec([[0], [0]]), 0, END, 0x1a,
      // i64.const with a 10-byte LEB, wrap; f32/f64 consts; typed select
      0x42, ...[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f], 0xa7, 0x1a,
      0x43, 0, 0, 0x80, 0x3f, 0x1a, 0x44, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x1a,
      0x41, 1, 0x41, 2, 0x41, 0, 0x1c, ...vec([[I32]]), 0x1a,
      // memory: store/load with memarg, size/grow, fill/copy, saturating truncation, sign extension
      0x41, 0x80, 0x80, 0x80, 0x80, 0x78, 0x1a, // i32.const -2^31 (5 bytes)
      0x41, 8, 0x41, ...s32(-300), 0x36, 2, 4, 0x41, 8, 0x28, 2, 4, 0x21, 0,
      0x3f, 0, 0x40, 0, 0x1a, 0x41, ...s32(64), 0x41, ...s32(0xab), 0x41, 4, 0xfc, 11, 0, 0x41, ...s32(80), 0x41, ...s32(64), 0x41, 4, 0xfc, 10, 0, 0,
      0x43, 0, 0, 0x80, 0x7f, 0xfc, 0, 0x1a, 0x41, 0x80, 0x01, 0xc0, 0x1a, 0x41, 0, 0xd0, FUNCREF, 0xd1, 0x1a, 0x1a,
      // if/else
      0x41, 0, 0x04, I32, 0x41, 1, 0x05, 0x41, 2, END, 0x1a,
      0x20, 0, 0x41, ...s32(80), 0x2d, 0, 0, 0x6a, // local0 + mem8[80]
    ];
    const bytes = singleFunction(code, [[1, I32], [1, I64]]);
    expect(WebAssembly.validate(bytes)).toBe(true);
    const result = instrument(bytes, OPTIONS);
    expect(WebAssembly.validate(result.bytes)).toBe(true);
    const instance = new WebAssembly.Instance(new WebAssembly.Module(result.bytes), { [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: () => {} } });
    expect(callExport(instance.exports, 'run')).toBe(-300 + 0xab);
  });

  it('refuses SIMD, atomics, exception handling and unknown opcodes, naming the opcode and the function', () => {
    const cases: [Bytes, RegExp][] = [
      [[0xfd, 0x0c, ...new Array<number>(16).fill(0), 0x1a, 0x41, 0], /opcode 0xfd \(SIMD\) in function 0/],
      [[0x41, 0, 0xfe, 0x10, 2, 0], /opcode 0xfe \(atomics\) in function 0/],
      [[0x06, 0x40, END, 0x41, 0], /opcode 0x06 \(exception handling\)/],
      [[0xfb, 0, 0x41, 0], /opcode 0xfb/],
      [[0x27, 0x41, 0], /opcode 0x27 in function 0/],
      [[0xfc, 18, 0, 0x41, 0], /opcode 0xfc 18/],
    ];
    for (const [code, message] of cases) expectInstrumentError(() => instrument(singleFunction(code), OPTIONS), 'unsupported', message);
  });

  it('refuses tail calls, which would loop past every budget check', () => {
    // (func (result i32) return_call 0): an endless loop with no loop header and no stack growth.
    expect(WebAssembly.validate(singleFunction([0x12, 0]))).toBe(true);
    expectInstrumentError(() => instrument(singleFunction([0x12, 0]), OPTIONS), 'unsupported', /opcode 0x12 \(tail calls\) in function 0/);
  });

  it('refuses a module that is not valid before the rewrite, though the rewrite would make it valid', () => {
    // global.set 0 in a module without globals: after the rewrite global 0 is the budget, which the guest would refill.
    const refill = singleFunction([0x41, ...s32(1_000_000), 0x24, 0, 0x41, 0]);
    expect(WebAssembly.validate(refill)).toBe(false);
    expectInstrumentError(() => instrument(refill, OPTIONS), 'malformed', /not valid WebAssembly/);
  });

  it('names the original function index of a refused body', () => {
    const bytes = wasm(
      vecSection(1, [funcType([], [])]),
      vecSection(2, [[...str('env'), ...str('f'), 0x00, 0]]),
      vecSection(3, [[0], [0]]),
      vecSection(10, [func([], []), func([], [0xfd, 0x0f, 0x1a])]),
    );
    expectInstrumentError(() => instrument(bytes, OPTIONS), 'unsupported', /function 2/);
  });
});

describe('instrument() memory limits', () => {
  const withMemory = (limits: Bytes): Uint8Array<ArrayBuffer> => wasm(
    vecSection(5, [limits]),
    vecSection(7, [[...str('memory'), 0x02, 0]]),
  );
  const memoryOf = (bytes: Uint8Array<ArrayBuffer>): WebAssembly.Memory => exportedMemory(new WebAssembly.Instance(
    new WebAssembly.Module(bytes), { [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: () => {} } }).exports);

  it('sets a maximum on a memory that has none', () => {
    const result = instrument(withMemory([0x00, 1]), { ...OPTIONS, memoryPagesMax: 4 });
    expect(result).toMatchObject({ definesMemory: true, importsMemory: false });
    const memory = memoryOf(result.bytes);
    expect(() => memory.grow(4)).toThrow(RangeError);
    expect(memory.grow(3)).toBe(1);
    expect(() => memory.grow(1)).toThrow(RangeError);
  });

  it('lowers a larger maximum and keeps a smaller one', () => {
    expect(() => memoryOf(instrument(withMemory([0x01, 1, 100]), { ...OPTIONS, memoryPagesMax: 2 }).bytes).grow(2)).toThrow(RangeError);
    const kept = memoryOf(instrument(withMemory([0x01, 1, 2]), { ...OPTIONS, memoryPagesMax: 100 }).bytes);
    expect(() => kept.grow(2)).toThrow(RangeError);
    expect(kept.grow(1)).toBe(1);
  });

  it('refuses a module that starts above the limit', () => {
    expectInstrumentError(() => instrument(withMemory([0x00, 5]), { ...OPTIONS, memoryPagesMax: 4 }), 'memory',
      /^the module asks for 5 pages at start, the limit is 4$/);
  });

  it('refuses shared and 64-bit memories', () => {
    expectInstrumentError(() => instrument(withMemory([0x03, 1, 2]), OPTIONS), 'unsupported', /shared/);
    expectInstrumentError(() => instrument(withMemory([0x04, 1]), OPTIONS), 'unsupported', /64-bit/);
  });

  it('reports an imported memory and checks its declared minimum', () => {
    const importing = (min: number): Uint8Array<ArrayBuffer> => wasm(vecSection(2, [[...str('env'), ...str('memory'), 0x02, 0x00, min]]));
    const result = instrument(importing(3), { ...OPTIONS, memoryPagesMax: 4 });
    expect(result).toMatchObject({ importsMemory: true, definesMemory: false, importedMemoryPagesMin: 3 });
    const memory = new WebAssembly.Memory({ initial: 3, maximum: 4 });
    expect(() => new WebAssembly.Instance(new WebAssembly.Module(result.bytes), {
      env: { memory },
      [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: () => {} },
    })).not.toThrow();
    expectInstrumentError(() => instrument(importing(5), { ...OPTIONS, memoryPagesMax: 4 }), 'memory', /asks for 5 pages at start, the limit is 4/);
  });
});

describe('instrument() malformed input', () => {
  it('refuses what is not a version 1 module', () => {
    expectInstrumentError(() => instrument(new TextEncoder().encode('this is text, not wasm'), OPTIONS), 'malformed');
    expectInstrumentError(() => instrument(new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x02, 0, 0, 0]), OPTIONS), 'malformed');
    expectInstrumentError(() => instrument(new Uint8Array(), OPTIONS), 'malformed');
  });

  it('refuses bad sections and bodies', () => {
    const good = singleFunction([0x41, 1]);
    expect(WebAssembly.validate(good)).toBe(true);
    const cases: Uint8Array[] = [
      wasm([14, 0]), // unknown section id
      wasm([1, 5, 0]), // section longer than the module
      wasm([1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), // over-long LEB
      wasm(section(1, [1, 0x60, 0, 0, 0xff])), // bytes after the entries
      wasm(vecSection(3, []), vecSection(1, [])), // out of order
      wasm(section(10, [1, 3, 0, 0x41, 1])), // body without its end
      wasm(section(10, [1, 4, 0, 0x0b, 0x0b, 0x0b])), // bytes after the final end
      singleFunction([0x41, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), // 6-byte s32
      good.slice(0, good.length - 1),
    ];
    for (const bytes of cases) expectInstrumentError(() => instrument(bytes, OPTIONS), 'malformed');
  });

  it('rejects nonsensical options', () => {
    expect(() => instrument(singleFunction([0x41, 1]), { memoryPagesMax: -1, budgetInitial: 10 })).toThrow(RangeError);
    expect(() => instrument(singleFunction([0x41, 1]), { memoryPagesMax: 10, budgetInitial: 0 })).toThrow(RangeError);
  });
});
