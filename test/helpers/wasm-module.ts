/**
 * Builds small WebAssembly modules byte by byte, for the sandbox's bad-input
 * tests: modules a Zig build would never produce (a wrong ABI version, a
 * trapping start function, lying pointers, forbidden imports).
 */

function uleb(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

function sleb(value: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = value & 0x7f;
    value >>= 7;
    if ((value === 0 && (byte & 0x40) === 0) || (value === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

const str = (text: string): number[] => [...uleb(Buffer.byteLength(text)), ...Buffer.from(text)];
const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];

/** A function body of type () -> i32: returns `value`, or traps when `value` is 'trap'. */
export type Body = number | 'trap' | 'loop';

export interface ModuleSpec {
  /** Export name -> body. All functions are () -> i32; JS ignores extra arguments. */
  readonly functions: Readonly<Record<string, Body>>;
  /** Extra function imports (module, name), of type () -> i32. */
  readonly imports?: readonly (readonly [string, string])[];
  /** A start function that traps. */
  readonly trappingStart?: boolean;
  /** Bytes placed at address 0 of memory (1 page, exported as "memory"). */
  readonly data?: Uint8Array;
}

function code(body: Body): number[] {
  const instructions =
    body === 'trap' ? [0x00] : body === 'loop' ? [0x03, 0x40, 0x0c, 0x00, 0x0b, 0x41, 0x00] : [0x41, ...sleb(body)];
  const fn = [0x00, ...instructions, 0x0b];
  return [...uleb(fn.length), ...fn];
}

export function buildModule(spec: ModuleSpec): Uint8Array {
  const names = Object.keys(spec.functions);
  const imports = spec.imports ?? [];
  const bodies = names.map((name) => spec.functions[name]!);
  if (spec.trappingStart) bodies.push('trap');
  const types = [[0x60, 0x00, 0x01, 0x7f], [0x60, 0x00, 0x00]];
  const importCount = imports.length;
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(types)),
    ...(importCount ? section(2, vec(imports.map(([m, n]) => [...str(m), ...str(n), 0x00, 0x00]))) : []),
    ...section(3, vec(bodies.map((_, i) => [spec.trappingStart && i === bodies.length - 1 ? 1 : 0]))),
    ...section(5, vec([[0x00, 0x01]])),
    ...section(7, vec([
      [...str('memory'), 0x02, 0x00],
      ...names.map((name, i) => [...str(name), 0x00, ...uleb(importCount + i)]),
    ])),
    ...(spec.trappingStart ? section(8, uleb(importCount + bodies.length - 1)) : []),
    ...section(10, vec(bodies.map((body, i) => (spec.trappingStart && i === bodies.length - 1 ? [0x03, 0x00, 0x00, 0x0b] : code(body))))),
    ...(spec.data ? section(11, vec([[0x00, 0x41, 0x00, 0x0b, ...uleb(spec.data.length), ...spec.data]])) : []),
  ];
  return Uint8Array.from(bytes);
}

/** smtp_plugin_metadata (wasm32) at address 64, its strings after it. */
export function metadataData(name = 'hand-built'): { data: Uint8Array; pointer: number } {
  const data = new Uint8Array(256);
  const view = new DataView(data.buffer);
  let at = 128;
  const put = (text: string): number => {
    const start = at;
    data.set(Buffer.from(`${text}\0`), at);
    at += Buffer.byteLength(text) + 1;
    return start;
  };
  const pointers = [put(name), put('1.0.0'), put(''), put(''), put(''), 0, 0, 0];
  pointers.forEach((pointer, i) => view.setUint32(64 + i * 4, pointer, true));
  return { data, pointer: 64 };
}

/** Every export a sandboxed plugin needs, returning harmless values; override some. */
export function pluginFunctions(overrides: Record<string, Body> = {}): Record<string, Body> {
  return {
    smtp_plugin_abi_version: 0x10000,
    smtp_plugin_init: 0,
    smtp_plugin_deinit: 0,
    smtp_plugin_get_metadata: 64,
    smtp_plugin_execute_hook: 0,
    smtp_plugin_enable: 0,
    smtp_plugin_disable: 0,
    smtp_wasm_alloc: 1024,
    smtp_wasm_free: 0,
    smtp_wasm_host_allocator: 0,
    smtp_wasm_context_create: 512,
    smtp_wasm_context_load: 0,
    smtp_wasm_context_status: 0,
    smtp_wasm_take_changes: 0,
    ...overrides,
  };
}
