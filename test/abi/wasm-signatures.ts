/**
 * Reads the WebAssembly signature of every function a module imports and
 * exports (the JS API does not expose them in Node 20), for the sandbox ABI
 * tests. Only what those tests need: the type, import, function and export
 * sections of a valid module.
 */

const VALUE_TYPES: Record<number, string> = { 0x7f: 'i32', 0x7e: 'i64', 0x7d: 'f32', 0x7c: 'f64', 0x7b: 'v128', 0x70: 'funcref', 0x6f: 'externref' };

export interface Signatures {
  /** "module.name" -> "(i32,i32)->i64" for every function import. */
  readonly imports: Map<string, string>;
  /** export name -> signature, for every function export. */
  readonly exports: Map<string, string>;
}

export function readSignatures(bytes: Uint8Array): Signatures {
  let at = 8;
  const u8 = (): number => bytes[at++]!;
  const u32 = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = u8();
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7;
    }
  };
  const name = (): string => {
    const length = u32();
    at += length;
    return Buffer.from(bytes.subarray(at - length, at)).toString('utf8');
  };
  const limits = (): void => {
    const flags = u8();
    u32();
    if ((flags & 1) !== 0) u32();
  };
  const types: string[] = [];
  const functionTypes: number[] = [];
  const imports = new Map<string, string>();
  const exports = new Map<string, string>();
  while (at < bytes.length) {
    const id = u8();
    const size = u32();
    const end = at + size;
    if (id === 1) {
      for (let n = u32(); n > 0; n--) {
        if (u8() !== 0x60) throw new Error('not a function type');
        const params = Array.from({ length: u32() }, () => VALUE_TYPES[u8()]);
        const results = Array.from({ length: u32() }, () => VALUE_TYPES[u8()]);
        types.push(`(${params.join(',')})->${results.join(',') || 'void'}`);
      }
    } else if (id === 2) {
      for (let n = u32(); n > 0; n--) {
        const key = `${name()}.${name()}`;
        const kind = u8();
        if (kind === 0) {
          const type = u32();
          imports.set(key, types[type]!);
          functionTypes.push(type);
        } else if (kind === 1) {
          u8();
          limits();
        } else if (kind === 2) {
          limits();
        } else {
          u8();
          u8();
        }
      }
    } else if (id === 3) {
      for (let n = u32(); n > 0; n--) functionTypes.push(u32());
    } else if (id === 7) {
      for (let n = u32(); n > 0; n--) {
        const key = name();
        const kind = u8();
        const index = u32();
        if (kind === 0) exports.set(key, types[functionTypes[index]!]!);
      }
    }
    at = end;
  }
  return { imports, exports };
}
