/**
 * Rewrites a sandboxed plugin's WebAssembly binary before it is compiled, so
 * that a call running in-thread can be stopped and cannot grow its memory
 * past the host's limit.
 *
 * Every loop header decrements an exported i32 budget global; when it reaches
 * zero the loop calls the host import `smtp_sandbox.budget_exhausted`, which
 * either resets `__smtp_budget` (time remains) or throws (the deadline
 * passed). Checking the clock only every `budgetInitial` iterations keeps the
 * cost to a few instructions per iteration, and every unbounded computation in
 * WebAssembly goes through a loop (or recursion, which the stack bounds).
 *
 * Only the instructions the host knows are accepted: an unknown opcode could
 * carry immediates this decoder would misread, and the rewrite would then
 * corrupt the module instead of failing cleanly.
 */

export interface InstrumentOptions {
  /** Max linear memory in 64 KiB pages; the memory section's maximum is set to min(existing max, this). */
  readonly memoryPagesMax: number;
  /** Initial value of the budget global (e.g. 10000). */
  readonly budgetInitial: number;
}

export interface InstrumentResult {
  /** The rewritten module (backed by a plain ArrayBuffer, so it is a BufferSource). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Loop headers instrumented. */
  readonly loopCount: number;
  /** True if the module has its own memory section entry. */
  readonly definesMemory: boolean;
  /** True if it imports a memory (the host then supplies a capped one). */
  readonly importsMemory: boolean;
  /** The imported memory's declared minimum in pages: the size the host's Memory must start at. */
  readonly importedMemoryPagesMin: number | undefined;
}

export type WasmInstrumentReason = 'malformed' | 'unsupported' | 'memory';

export class WasmInstrumentError extends Error {
  readonly reason: WasmInstrumentReason;

  constructor(reason: WasmInstrumentReason, message: string) {
    super(message);
    this.name = 'WasmInstrumentError';
    this.reason = reason;
  }
}

export const BUDGET_EXPORT = '__smtp_budget';
export const CHECK_IMPORT_MODULE = 'smtp_sandbox';
export const CHECK_IMPORT_NAME = 'budget_exhausted';

const malformed = (message: string): WasmInstrumentError => new WasmInstrumentError('malformed', message);
const unsupported = (message: string): WasmInstrumentError => new WasmInstrumentError('unsupported', message);
const hex = (byte: number): string => `0x${byte.toString(16).padStart(2, '0')}`;

class Reader {
  pos: number;

  constructor(readonly bytes: Uint8Array, start = 0, readonly end = bytes.length) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  u8(): number {
    if (this.pos >= this.end) throw malformed(`unexpected end of data at offset ${this.pos}`);
    return this.bytes[this.pos++] as number;
  }

  take(length: number): Uint8Array {
    if (length > this.end - this.pos) throw malformed(`${length} bytes run past the end at offset ${this.pos}`);
    this.pos += length;
    return this.bytes.subarray(this.pos - length, this.pos);
  }

  u32(): number {
    const start = this.pos;
    let value = 0;
    for (let i = 0; i < 5; i++) {
      const byte = this.u8();
      value += (byte & 0x7f) * 2 ** (7 * i);
      if ((byte & 0x80) === 0) {
        if (i === 4 && byte > 0x0f) break;
        return value;
      }
    }
    throw malformed(`bad u32 LEB128 at offset ${start}`);
  }

  /** Signed LEB128 of at most 33 bits (s32 constants, s33 block types). */
  signed(bits: 32 | 33): number {
    const start = this.pos;
    let value = 0;
    for (let shift = 0; shift < bits; shift += 7) {
      const byte = this.u8();
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) {
        if (byte & 0x40) value -= 2 ** (shift + 7);
        if (value < -(2 ** (bits - 1)) || value >= 2 ** (bits - 1)) break;
        return value;
      }
    }
    throw malformed(`bad s${bits} LEB128 at offset ${start}`);
  }

  /** i64 constants are copied verbatim, so only their length matters. */
  skipS64(): void {
    const start = this.pos;
    for (let i = 0; i < 10; i++) if ((this.u8() & 0x80) === 0) return;
    throw malformed(`bad s64 LEB128 at offset ${start}`);
  }

  name(): string {
    const bytes = this.take(this.u32());
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw malformed(`invalid UTF-8 name at offset ${this.pos - bytes.length}`);
    }
  }
}

class Writer {
  private buffer = new Uint8Array(new ArrayBuffer(256));
  private length = 0;

  private reserve(extra: number): void {
    if (this.length + extra <= this.buffer.length) return;
    const grown = new Uint8Array(new ArrayBuffer(Math.max(this.buffer.length * 2, this.length + extra)));
    grown.set(this.buffer.subarray(0, this.length));
    this.buffer = grown;
  }

  byte(value: number): this {
    this.reserve(1);
    this.buffer[this.length++] = value;
    return this;
  }

  bytes(values: Uint8Array | readonly number[]): this {
    this.reserve(values.length);
    this.buffer.set(values, this.length);
    this.length += values.length;
    return this;
  }

  u32(value: number): this {
    do {
      const low = value % 128;
      value = Math.floor(value / 128);
      this.byte(value === 0 ? low : low | 0x80);
    } while (value !== 0);
    return this;
  }

  s32(value: number): this {
    for (;;) {
      const low = value & 0x7f;
      value >>= 7;
      const last = (value === 0 && (low & 0x40) === 0) || (value === -1 && (low & 0x40) !== 0);
      this.byte(last ? low : low | 0x80);
      if (last) return this;
    }
  }

  name(text: string): this {
    const encoded = new TextEncoder().encode(text);
    return this.u32(encoded.length).bytes(encoded);
  }

  /** A length-prefixed blob: section contents, function bodies. */
  sized(content: Uint8Array): this {
    return this.u32(content.length).bytes(content);
  }

  result(): Uint8Array<ArrayBuffer> {
    return this.buffer.slice(0, this.length);
  }
}

// Value types and reference types encoded as one byte; the multi-byte GC
// reference types would need a type-aware decoder and are refused.
const VALUE_TYPES = new Set([0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f]);
const REF_TYPES = new Set([0x70, 0x6f]);

function valueType(r: Reader, where: string): void {
  const byte = r.u8();
  if (!VALUE_TYPES.has(byte)) throw unsupported(`value type ${hex(byte)} in ${where}`);
}

function refType(r: Reader, where: string): void {
  const byte = r.u8();
  if (!REF_TYPES.has(byte)) throw unsupported(`reference type ${hex(byte)} in ${where}`);
}

interface Limits {
  readonly min: number;
  readonly max: number | undefined;
}

function limits(r: Reader, where: string): Limits {
  const flag = r.u8();
  if (flag === 0x02 || flag === 0x03) throw unsupported(`shared ${where} (threads)`);
  if (flag > 0x03) throw unsupported(`${where} limits flag ${hex(flag)} (64-bit or unknown)`);
  const min = r.u32();
  return { min, max: flag === 0x01 ? r.u32() : undefined };
}

function checkStartPages(min: number, options: InstrumentOptions, what: string): void {
  if (min > options.memoryPagesMax) {
    throw new WasmInstrumentError('memory', `the ${what} asks for ${min} pages at start, the limit is ${options.memoryPagesMax}`);
  }
}

const REFUSED_OPCODES: ReadonlyMap<number, string> = new Map([
  ...[0x06, 0x07, 0x08, 0x09, 0x0a, 0x18, 0x19, 0x1f].map((op): [number, string] => [op, 'exception handling']),
  // A tail call replaces its frame: a function that tail-calls itself loops without a loop header
  // (where the budget is checked) and without growing the stack, so the deadline could not stop it.
  [0x12, 'tail calls'],
  [0x13, 'tail calls'],
  [0x14, 'typed function references'],
  [0x15, 'typed function references'],
  [0xfb, 'garbage collection'],
  [0xfd, 'SIMD'],
  [0xfe, 'atomics'],
]);


interface Rewrite {
  /** Defined functions at or above this index move up by one. */
  readonly importedFuncs: number;
  readonly checkFunc: number;
  readonly budgetGlobal: number;
  loopCount: number;
}

const funcIndex = (rw: Rewrite, index: number): number => (index >= rw.importedFuncs ? index + 1 : index);

/**
 * Copies one expression up to and including its final `end`, rewriting
 * function indices and (in function bodies) instrumenting loops. Constant
 * expressions go through the same decoder so that `ref.func` in them is found.
 */
function copyExpression(r: Reader, w: Writer, rw: Rewrite, where: string, isBody: boolean): void {
  let depth = 0;
  for (;;) {
    const start = r.pos;
    const op = r.u8();
    const refused = REFUSED_OPCODES.get(op);
    if (refused !== undefined) throw unsupported(`opcode ${hex(op)} (${refused}) in ${where} at offset ${start}`);
    if (op === 0x10 || op === 0xd2) {
      w.byte(op).u32(funcIndex(rw, r.u32()));
      continue;
    }
    if (op === 0x02 || op === 0x03 || op === 0x04) {
      blockType(r, where);
      depth++;
      w.bytes(r.bytes.subarray(start, r.pos));
      if (op === 0x03) {
        if (!isBody) throw malformed(`loop in the constant expression of ${where}`);
        insertBudgetCheck(w, rw);
      }
      continue;
    }
    if (op === 0x0b) {
      w.byte(op);
      if (depth-- === 0) return;
      continue;
    }
    skipImmediates(r, op, where, start);
    w.bytes(r.bytes.subarray(start, r.pos));
  }
}

function insertBudgetCheck(w: Writer, rw: Rewrite): void {
  rw.loopCount++;
  w.byte(0x23).u32(rw.budgetGlobal) // global.get $budget
    .byte(0x41).byte(0x01) // i32.const 1
    .byte(0x6b) // i32.sub
    .byte(0x24).u32(rw.budgetGlobal) // global.set $budget
    .byte(0x23).u32(rw.budgetGlobal) // global.get $budget
    // <= 0 rather than == 0: a budget nobody refills (a start function runs
    // before the host can reach the global) keeps calling the check.
    .byte(0x41).byte(0x00) // i32.const 0
    .byte(0x4c) // i32.le_s
    .byte(0x04).byte(0x40) // if (empty)
    .byte(0x10).u32(rw.checkFunc) // call $budget_exhausted
    .byte(0x0b); // end
}

function blockType(r: Reader, where: string): void {
  const first = r.bytes[r.pos];
  if (first === 0x40 || (first !== undefined && VALUE_TYPES.has(first))) {
    r.pos++;
    return;
  }
  const start = r.pos;
  if (r.signed(33) < 0) throw unsupported(`block type at offset ${start} in ${where}`);
}

/** Advances past the immediates of an opcode that needs no rewriting. */
function skipImmediates(r: Reader, op: number, where: string, start: number): void {
  if (op === 0x00 || op === 0x01 || op === 0x05 || op === 0x0f || op === 0x1a || op === 0x1b || op === 0xd1) return;
  if (op >= 0x45 && op <= 0xc4) return;
  if (op === 0x0c || op === 0x0d || (op >= 0x20 && op <= 0x26) || op === 0x3f || op === 0x40) {
    r.u32(); // label, local, global, table or memory index
    return;
  }
  if (op >= 0x28 && op <= 0x3e) {
    // Bit 6 of the alignment says a memory index (multi-memory) is present.
    if (r.u32() & 0x40) r.u32();
    r.u32();
    return;
  }
  switch (op) {
    case 0x0e: {
      for (let n = r.u32(); n > 0; n--) r.u32();
      r.u32();
      return;
    }
    case 0x11:
    case 0x13:
      r.u32(); // type index
      r.u32(); // table index
      return;
    case 0x1c:
      for (let n = r.u32(); n > 0; n--) valueType(r, where);
      return;
    case 0x41:
      r.signed(32);
      return;
    case 0x42:
      r.skipS64();
      return;
    case 0x43:
      r.take(4);
      return;
    case 0x44:
      r.take(8);
      return;
    case 0xd0:
      refType(r, where);
      return;
    case 0xfc: {
      const sub = r.u32();
      // Immediate counts of the saturating-truncation, bulk-memory and table ops.
      const counts = [0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 1, 2, 1, 2, 1, 1, 1];
      const count = counts[sub];
      if (count === undefined) throw unsupported(`opcode 0xfc ${sub} in ${where} at offset ${start}`);
      for (let i = 0; i < count; i++) r.u32();
      return;
    }
    default:
      throw unsupported(`opcode ${hex(op)} in ${where} at offset ${start}`);
  }
}

interface Section {
  readonly id: number;
  /** Offsets of the section's contents in the input module. */
  readonly start: number;
  readonly end: number;
}

const MAGIC_AND_VERSION = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/**
 * Custom sections that describe the original code by function index or byte
 * offset: instrumenting changes both, so they would describe the wrong code,
 * and DWARF is most of a Zig plugin (about 810 KB of the 925 KB example spam filter,
 * kept in memory as wire bytes by every loaded instance's module). Others
 * (producers, target_features, component types) are kept.
 */
function describesCode(customName: string): boolean {
  return customName === 'name' || customName.startsWith('.debug_') || customName === 'sourceMappingURL' || customName === 'external_debug_info';
}

/** Section ids in the order the binary format requires them (custom excluded). */
const SECTION_ORDER = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 10, 11];
const sectionRank = (id: number): number => SECTION_ORDER.indexOf(id);

function readSections(bytes: Uint8Array): Section[] {
  if (bytes.length < 8 || MAGIC_AND_VERSION.some((b, i) => bytes[i] !== b)) throw malformed('not a WebAssembly version 1 module');
  const r = new Reader(bytes, 8);
  const sections: Section[] = [];
  let lastRank = -1;
  while (!r.done) {
    const id = r.u8();
    if (id === 13) throw unsupported('the tag section (exception handling)');
    if (id > 12) throw malformed(`unknown section id ${id} at offset ${r.pos - 1}`);
    const length = r.u32();
    const start = r.pos;
    r.take(length);
    if (id !== 0) {
      // Created sections are placed by rank, which needs the input in order.
      if (sectionRank(id) <= lastRank) throw malformed(`section ${id} is out of order or repeated`);
      lastRank = sectionRank(id);
    }
    sections.push({ id, start, end: r.pos });
  }
  return sections;
}

type EntryRewriter = (r: Reader, w: Writer, index: number) => void;

/**
 * Rewrites a vector section entry by entry and appends `added` entries; an
 * absent section (undefined) yields one holding only the added entries.
 */
function rewriteVector(bytes: Uint8Array, section: Section | undefined, entry: EntryRewriter, added: readonly ((w: Writer) => void)[] = []): Uint8Array {
  const entries = new Writer();
  let count = 0;
  if (section) {
    const r = new Reader(bytes, section.start, section.end);
    count = r.u32();
    for (let i = 0; i < count; i++) entry(r, entries, i);
    if (!r.done) throw malformed(`section ${section.id} is longer than its ${count} entries`);
  }
  for (const add of added) add(entries);
  return new Writer().u32(count + added.length).bytes(entries.result()).result();
}

/** Runs `parse` and copies whatever it consumed unchanged. */
function verbatim(r: Reader, w: Writer, parse: () => void): void {
  const start = r.pos;
  parse();
  w.bytes(r.bytes.subarray(start, r.pos));
}

export function instrument(bytes: Uint8Array, options: InstrumentOptions): InstrumentResult {
  const { memoryPagesMax, budgetInitial } = options;
  if (!Number.isInteger(memoryPagesMax) || memoryPagesMax < 0 || memoryPagesMax > 65536) {
    throw new RangeError(`memoryPagesMax must be an integer in 0..65536, got ${memoryPagesMax}`);
  }
  if (!Number.isInteger(budgetInitial) || budgetInitial < 1 || budgetInitial > 0x7fffffff) {
    throw new RangeError(`budgetInitial must be an integer in 1..2^31-1, got ${budgetInitial}`);
  }
  const sections = readSections(bytes);
  const section = (id: number): Section | undefined => sections.find((s) => s.id === id);
  const replaced = new Map<number, Uint8Array>();

  let typeCount = 0;
  replaced.set(1, rewriteVector(bytes, section(1), (r, w, i) => {
    typeCount = i + 1;
    verbatim(r, w, () => {
      const form = r.u8();
      if (form !== 0x60) throw unsupported(`type ${i} has form ${hex(form)}; only function types are supported`);
      for (let n = r.u32(); n > 0; n--) valueType(r, `type ${i}`);
      for (let n = r.u32(); n > 0; n--) valueType(r, `type ${i}`);
    });
  }, [(w) => w.byte(0x60).byte(0x00).byte(0x00)]));

  let importedFuncs = 0;
  let importedGlobals = 0;
  let importsMemory = false;
  let importedMemoryPagesMin: number | undefined;
  replaced.set(2, rewriteVector(bytes, section(2), (r, w, i) => verbatim(r, w, () => {
    const moduleName = r.name();
    const name = r.name();
    if (moduleName === CHECK_IMPORT_MODULE && name === CHECK_IMPORT_NAME) throw unsupported('the module already imports the budget check (instrumented twice?)');
    const kind = r.u8();
    if (kind === 0x00) {
      r.u32();
      importedFuncs++;
    } else if (kind === 0x01) {
      refType(r, `import ${i}`);
      limits(r, `table import ${i}`);
    } else if (kind === 0x02) {
      importsMemory = true;
      importedMemoryPagesMin = limits(r, 'memory import').min;
      checkStartPages(importedMemoryPagesMin, options, 'imported memory');
    } else if (kind === 0x03) {
      valueType(r, `import ${i}`);
      r.u8();
      importedGlobals++;
    } else {
      throw unsupported(`import ${i} ("${moduleName}"."${name}") has kind ${hex(kind)}`);
    }
  }), [(w) => w.name(CHECK_IMPORT_MODULE).name(CHECK_IMPORT_NAME).byte(0x00).u32(typeCount)]));

  const globals = section(6);
  const definedGlobals = globals ? new Reader(bytes, globals.start, globals.end).u32() : 0;
  const rw: Rewrite = { importedFuncs, checkFunc: importedFuncs, budgetGlobal: importedGlobals + definedGlobals, loopCount: 0 };

  const tables = section(4);
  if (tables) {
    rewriteVector(bytes, tables, (r, _w, i) => {
      // Function-references tables carry an init expression that may hold ref.func.
      if (r.bytes[r.pos] === 0x40) throw unsupported(`table ${i} has an initializer expression`);
      refType(r, `table ${i}`);
      limits(r, `table ${i}`);
    });
  }

  let definesMemory = false;
  const memories = section(5);
  if (memories) {
    replaced.set(5, rewriteVector(bytes, memories, (r, w) => {
      const { min, max } = limits(r, 'memory');
      definesMemory = true;
      checkStartPages(min, options, 'module');
      w.byte(0x01).u32(min).u32(Math.min(max ?? Infinity, memoryPagesMax));
    }));
  }

  replaced.set(6, rewriteVector(bytes, globals, (r, w, i) => {
    verbatim(r, w, () => {
      valueType(r, `global ${importedGlobals + i}`);
      r.u8();
    });
    copyExpression(r, w, rw, `global ${importedGlobals + i}`, false);
  }, [(w) => w.byte(0x7f).byte(0x01).byte(0x41).s32(budgetInitial).byte(0x0b)]));

  replaced.set(7, rewriteVector(bytes, section(7), (r, w, i) => {
    const name = r.name();
    if (name === BUDGET_EXPORT) throw unsupported(`the module already exports ${BUDGET_EXPORT} (instrumented twice?)`);
    const kind = r.u8();
    if (kind > 0x03) throw unsupported(`export ${i} ("${name}") has kind ${hex(kind)}`);
    const index = r.u32();
    w.name(name).byte(kind).u32(kind === 0x00 ? funcIndex(rw, index) : index);
  }, [(w) => w.name(BUDGET_EXPORT).byte(0x03).u32(rw.budgetGlobal)]));

  const start = section(8);
  if (start) {
    const r = new Reader(bytes, start.start, start.end);
    replaced.set(8, new Writer().u32(funcIndex(rw, r.u32())).result());
    if (!r.done) throw malformed('the start section is longer than a function index');
  }

  const elements = section(9);
  if (elements) {
    replaced.set(9, rewriteVector(bytes, elements, (r, w, i) => {
      const where = `element segment ${i}`;
      const flags = r.u32();
      if (flags > 7) throw malformed(`${where} has flags ${flags}`);
      w.u32(flags);
      // Bit 0: passive or declarative; bit 1: explicit table (active) or declarative; bit 2: expressions.
      if ((flags & 3) === 2) w.u32(r.u32());
      if ((flags & 1) === 0) copyExpression(r, w, rw, where, false);
      if ((flags & 3) !== 0) {
        verbatim(r, w, () => {
          if (flags & 4) refType(r, where);
          else if (r.u8() !== 0x00) throw malformed(`${where} has an unknown element kind`);
        });
      }
      const count = r.u32();
      w.u32(count);
      for (let n = 0; n < count; n++) {
        if (flags & 4) copyExpression(r, w, rw, where, false);
        else w.u32(funcIndex(rw, r.u32()));
      }
    }));
  }

  const code = section(10);
  if (code) {
    replaced.set(10, rewriteVector(bytes, code, (r, w, i) => {
      const where = `function ${importedFuncs + i}`;
      const size = r.u32();
      const body = new Reader(bytes, r.pos, r.pos + size);
      r.take(size);
      const out = new Writer();
      verbatim(body, out, () => {
        for (let n = body.u32(); n > 0; n--) {
          body.u32();
          valueType(body, where);
        }
      });
      copyExpression(body, out, rw, where, true);
      if (!body.done) throw malformed(`${where} has bytes after its final end`);
      w.sized(out.result());
    }));
  }

  const output: { id: number; body: Uint8Array }[] = [];
  for (const s of sections) {
    const original = bytes.subarray(s.start, s.end);
    if (s.id === 0 && describesCode(new Reader(bytes, s.start, s.end).name())) continue;
    output.push({ id: s.id, body: s.id === 0 ? original : (replaced.get(s.id) ?? original) });
  }
  for (const id of [1, 2, 6, 7]) {
    if (section(id)) continue;
    const body = replaced.get(id) as Uint8Array;
    const before = output.findIndex((s) => s.id !== 0 && sectionRank(s.id) > sectionRank(id));
    output.splice(before < 0 ? output.length : before, 0, { id, body });
  }

  const w = new Writer().bytes(MAGIC_AND_VERSION);
  for (const s of output) w.byte(s.id).sized(s.body);
  // The rewrite adds a global and a function at the end of their index spaces: in a module that is not
  // valid, an index one past its own globals (or functions) would become valid and reach the budget
  // (a guest refilling its own budget never meets its deadline). The original must be valid as it is.
  if (!WebAssembly.validate(bytes as Uint8Array<ArrayBuffer>)) throw malformed('the module is not valid WebAssembly (WebAssembly.validate refused it before instrumentation)');
  return { bytes: w.result(), loopCount: rw.loopCount, definesMemory, importsMemory, importedMemoryPagesMin };
}
