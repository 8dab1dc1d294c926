import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import { hostError, isHostError } from '../errors.js';

/**
 * Checks a native plugin file's structure before it is handed to dlopen
 * (koffi.load). The dynamic loader maps a library's segments by the file
 * offsets its headers give and touches them at once: a truncated or
 * half-written .so makes it fault on a page past the end of the file
 * (SIGBUS or SIGSEGV, which kills the server) instead of failing with an
 * error. So every table and every segment the loader would read or map must
 * lie inside the file, and the file must be a shared library for this
 * process's CPU. Only the headers, the tables and the dynamic section are
 * read, never the whole file.
 *
 * A file of full size whose end is still zeros (preallocated, or written
 * out of order) is refused too: the section headers come last. This is a
 * structural check, not a proof: a file whose headers are whole but whose
 * code or data is corrupt still loads, and may crash when called.
 */

/** The process a library is checked for. */
export interface LibraryTarget {
  readonly platform: NodeJS.Platform;
  /** process.arch values: x64, arm64, ia32, arm, riscv64, ppc64, s390x, loong64. */
  readonly arch: string;
  readonly endianness: 'LE' | 'BE';
}

export function currentLibraryTarget(): LibraryTarget {
  return { platform: process.platform, arch: process.arch, endianness: endianness() };
}

/** The most a table or a dynamic section may take before the file is refused as implausible (real ones are a few KiB). */
const TABLE_BYTES_MAX = 16 * 1024 * 1024;
/** The most Mach-O load commands or PE sections read. */
const COMMANDS_MAX = 65_536;

class NotALibrary extends Error {}

/** Reads ranges of one open file, each checked against the file's size first. */
class FileReader {
  constructor(readonly fd: number, readonly size: number) {}

  /** `length` bytes at `offset`; a range past the end of the file is the error `what` names. */
  read(offset: number, length: number, what: string): Buffer {
    this.within(offset, length, what);
    if (length > TABLE_BYTES_MAX) throw new NotALibrary(`${what} is ${length} bytes, more than a library's tables plausibly take`);
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const got = readSync(this.fd, buf, done, length - done, offset + done);
      if (got === 0) throw new NotALibrary(`${what} runs past the end of the file (it shrank while being read)`);
      done += got;
    }
    return buf;
  }

  within(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new NotALibrary(`${what} has an impossible offset or size`);
    }
    if (offset + length > this.size) {
      throw new NotALibrary(`truncated: ${what} ends at byte ${offset + length}, the file has ${this.size} bytes`);
    }
  }
}

/** A little- or big-endian view of a buffer, with 64-bit values as safe numbers. */
class Fields {
  constructor(readonly buf: Buffer, readonly little: boolean) {}

  u16(at: number): number {
    return this.little ? this.buf.readUInt16LE(at) : this.buf.readUInt16BE(at);
  }

  u32(at: number): number {
    return this.little ? this.buf.readUInt32LE(at) : this.buf.readUInt32BE(at);
  }

  u64(at: number): number {
    const value = this.little ? this.buf.readBigUInt64LE(at) : this.buf.readBigUInt64BE(at);
    // Anything past 2^53 is no offset or size in a real file; it fails the range checks as infinity.
    return value > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(value);
  }

  /** A word of the file's class: 4 bytes (32-bit) or 8 (64-bit). */
  word(at: number, is64: boolean): number {
    return is64 ? this.u64(at) : this.u32(at);
  }

  i64(at: number, is64: boolean): bigint {
    if (!is64) return BigInt(this.little ? this.buf.readInt32LE(at) : this.buf.readInt32BE(at));
    return this.little ? this.buf.readBigInt64LE(at) : this.buf.readBigInt64BE(at);
  }
}

// --- ELF ------------------------------------------------------------------

/** e_machine for each process.arch (and whether that CPU's ELF is 64-bit). */
const ELF_MACHINES: Record<string, { machine: number; is64: boolean }> = {
  x64: { machine: 62, is64: true },
  arm64: { machine: 183, is64: true },
  ia32: { machine: 3, is64: false },
  arm: { machine: 40, is64: false },
  riscv64: { machine: 243, is64: true },
  ppc64: { machine: 21, is64: true },
  s390x: { machine: 22, is64: true },
  loong64: { machine: 258, is64: true },
};
const ELF_MACHINE_NAMES: Record<number, string> = { 3: 'x86', 8: 'MIPS', 20: 'PowerPC', 21: 'PowerPC64', 22: 's390', 40: 'ARM', 62: 'x86-64', 183: 'AArch64', 243: 'RISC-V', 258: 'LoongArch' };

const ET_DYN = 3;
const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const SHT_NULL = 0;
const SHT_DYNAMIC = 6;
const SHT_NOBITS = 8;
const PN_XNUM = 0xffff;
const DT_NULL = 0n;
const DT_STRTAB = 5n;
const DT_SYMTAB = 6n;
const DT_SYMENT = 11n;
const DT_RELAENT = 9n;
const DT_RELENT = 19n;
const DT_PLTREL = 20n;
/** The size tags of DT_TABLES, by name, for messages. */
const DT_SIZE_NAMES = new Map<bigint, string>([[10n, 'DT_STRSZ'], [8n, 'DT_RELASZ'], [18n, 'DT_RELSZ'], [2n, 'DT_PLTRELSZ'], [35n, 'DT_RELRSZ'], [27n, 'DT_INIT_ARRAYSZ'], [28n, 'DT_FINI_ARRAYSZ'], [33n, 'DT_PREINIT_ARRAYSZ']]);

/** Dynamic tags whose value is a table's address, with the tag of its size where there is one. */
const DT_TABLES: readonly (readonly [bigint, bigint | null, string])[] = [
  [5n, 10n, 'DT_STRTAB'],
  [6n, null, 'DT_SYMTAB'],
  [4n, null, 'DT_HASH'],
  [0x6ffffef5n, null, 'DT_GNU_HASH'],
  [7n, 8n, 'DT_RELA'],
  [17n, 18n, 'DT_REL'],
  [23n, 2n, 'DT_JMPREL'],
  [36n, 35n, 'DT_RELR'],
  [25n, 27n, 'DT_INIT_ARRAY'],
  [26n, 28n, 'DT_FINI_ARRAY'],
  [32n, 33n, 'DT_PREINIT_ARRAY'],
  [12n, null, 'DT_INIT'],
  [13n, null, 'DT_FINI'],
  [0x6ffffff0n, null, 'DT_VERSYM'],
  [0x6ffffffcn, null, 'DT_VERDEF'],
  [0x6ffffffen, null, 'DT_VERNEED'],
];

interface Segment {
  readonly vaddr: number;
  readonly offset: number;
  readonly filesz: number;
  readonly memsz: number;
}

const PT_NAMES: Record<number, string> = { 1: 'PT_LOAD', 2: 'PT_DYNAMIC', 3: 'PT_INTERP', 4: 'PT_NOTE', 6: 'PT_PHDR', 7: 'PT_TLS' };

function checkElf(file: FileReader, target: LibraryTarget): void {
  const ident = file.read(0, 16, 'the ELF identification');
  const elfClass = ident[4];
  const data = ident[5];
  if (elfClass !== 1 && elfClass !== 2) throw new NotALibrary(`ELF class ${elfClass} is neither 32- nor 64-bit`);
  if (data !== 1 && data !== 2) throw new NotALibrary(`ELF data encoding ${data} is neither little nor big endian`);
  if (ident[6] !== 1) throw new NotALibrary(`ELF version ${ident[6]} is not 1`);
  const is64 = elfClass === 2;
  const little = data === 1;
  const wanted = ELF_MACHINES[target.arch];
  if (wanted && wanted.is64 !== is64) throw new NotALibrary(`a ${is64 ? 64 : 32}-bit ELF file; this process (${target.arch}) loads ${wanted.is64 ? 64 : 32}-bit libraries`);
  if ((target.endianness === 'LE') !== little) throw new NotALibrary(`a ${little ? 'little' : 'big'}-endian ELF file; this process is ${target.endianness === 'LE' ? 'little' : 'big'}-endian`);

  const header = new Fields(file.read(0, is64 ? 64 : 52, 'the ELF header'), little);
  const type = header.u16(16);
  const machine = header.u16(18);
  if (wanted && machine !== wanted.machine) {
    throw new NotALibrary(`built for ${ELF_MACHINE_NAMES[machine] ?? `ELF machine ${machine}`}; this process runs on ${ELF_MACHINE_NAMES[wanted.machine]} (${target.arch})`);
  }
  if (type !== ET_DYN) throw new NotALibrary(`ELF type ${type} is not a shared object (ET_DYN, ${ET_DYN})${type === 1 ? ': an object file, not linked' : type === 2 ? ': an executable' : ''}`);
  const phoff = header.word(is64 ? 32 : 28, is64);
  const shoff = header.word(is64 ? 40 : 32, is64);
  const phentsize = header.u16(is64 ? 54 : 42);
  let phnum = header.u16(is64 ? 56 : 44);
  const shentsize = header.u16(is64 ? 58 : 46);
  let shnum = header.u16(is64 ? 60 : 48);
  const phentsizeWanted = is64 ? 56 : 32;
  const shentsizeWanted = is64 ? 64 : 40;

  // Section 0 carries the real counts when they do not fit the header (PN_XNUM, shnum 0).
  if (shoff !== 0 && (shnum === 0 || phnum === PN_XNUM)) {
    if (shentsize !== shentsizeWanted) throw new NotALibrary(`section header entries are ${shentsize} bytes, not ${shentsizeWanted}`);
    const first = new Fields(file.read(shoff, shentsize, 'section header 0'), little);
    if (shnum === 0) shnum = first.word(is64 ? 32 : 20, is64);
    if (phnum === PN_XNUM) phnum = first.u32(is64 ? 44 : 28);
  }

  if (phnum === 0) throw new NotALibrary('no program headers: nothing for the loader to map');
  if (phentsize !== phentsizeWanted) throw new NotALibrary(`program header entries are ${phentsize} bytes, not ${phentsizeWanted}`);
  const programHeaders = new Fields(file.read(phoff, phnum * phentsize, `the program header table (${phnum} entries at byte ${phoff})`), little);

  // Where the section headers put the dynamic section; null when the file has no section headers (stripped of them).
  let dynamicSections: number[] | null = null;
  if (shoff !== 0 && shnum > 0) {
    if (shentsize !== shentsizeWanted) throw new NotALibrary(`section header entries are ${shentsize} bytes, not ${shentsizeWanted}`);
    const sections = new Fields(file.read(shoff, shnum * shentsize, `the section header table (${shnum} entries at byte ${shoff})`), little);
    dynamicSections = [];
    for (let index = 1; index < shnum; index++) {
      const at = index * shentsize;
      const type = sections.u32(at + 4);
      const offset = sections.word(at + (is64 ? 24 : 16), is64);
      const size = sections.word(at + (is64 ? 32 : 20), is64);
      // Only section 0 is SHT_NULL. The section headers come last in the file:
      // zeros there mean it was never written to the end.
      if (type === SHT_NULL) throw new NotALibrary(`section header ${index} is empty (SHT_NULL): the file was not written to the end, or is damaged`);
      if (type === SHT_DYNAMIC) dynamicSections.push(offset);
      if (type !== SHT_NOBITS && size > 0) file.within(offset, size, `section ${index} (bytes ${offset} to ${offset + size})`);
    }
  }

  const loads: Segment[] = [];
  let dynamic: Segment | null = null;
  for (let index = 0; index < phnum; index++) {
    const at = index * phentsize;
    const type = programHeaders.u32(at);
    const offset = programHeaders.word(at + (is64 ? 8 : 4), is64);
    const vaddr = programHeaders.word(at + (is64 ? 16 : 8), is64);
    const filesz = programHeaders.word(at + (is64 ? 32 : 16), is64);
    const memsz = programHeaders.word(at + (is64 ? 40 : 20), is64);
    const name = PT_NAMES[type] ?? `segment type 0x${type.toString(16)}`;
    if (filesz > 0) file.within(offset, filesz, `${name} segment ${index} (bytes ${offset} to ${offset + filesz})`);
    if (type === PT_LOAD) {
      if (filesz > memsz) throw new NotALibrary(`PT_LOAD segment ${index} has more bytes in the file (${filesz}) than in memory (${memsz})`);
      loads.push({ vaddr, offset, filesz, memsz });
    } else if (type === PT_DYNAMIC) {
      if (dynamic) throw new NotALibrary('two PT_DYNAMIC segments');
      dynamic = { vaddr, offset, filesz, memsz };
    }
  }
  if (loads.length === 0) throw new NotALibrary('no PT_LOAD segment: nothing for the loader to map');
  if (!dynamic || dynamic.filesz === 0) throw new NotALibrary('no dynamic section (PT_DYNAMIC): not a shared library the loader can link');
  if (dynamicSections !== null && !dynamicSections.includes(dynamic.offset)) {
    throw new NotALibrary(`the section headers describe no dynamic section at byte ${dynamic.offset}, where PT_DYNAMIC is: the headers are damaged`);
  }
  // No table lies in the ELF header, nor in the program header table when it follows the header (as it usually does).
  const headerBytes = header.u16(is64 ? 52 : 40);
  const headersEnd = phoff === headerBytes ? phoff + phnum * phentsize : headerBytes;
  checkDynamic(file, dynamic, loads, headersEnd, is64, little);
}

/**
 * The dynamic section ends with DT_NULL, has a symbol and a string table,
 * every table it names comes with its size (when the table has one), is
 * mapped from inside the file and does not overlap the ELF headers (where a
 * zeroed address, 0, points), and its entry sizes are the ELF ones: a
 * dynamic section partly zeroed usually fails one of these (a file zeroed
 * from some point on always fails the section header check in checkElf).
 */
function checkDynamic(file: FileReader, dynamic: Segment, loads: readonly Segment[], headersEnd: number, is64: boolean, little: boolean): void {
  const entryBytes = is64 ? 16 : 8;
  const wordBytes = entryBytes / 2;
  const entries = new Fields(file.read(dynamic.offset, dynamic.filesz, 'the dynamic section'), little);
  const values = new Map<bigint, number>();
  let terminated = false;
  for (let at = 0; at + entryBytes <= dynamic.filesz; at += entryBytes) {
    const tag = entries.i64(at, is64);
    if (tag === DT_NULL) {
      terminated = true;
      break;
    }
    if (!values.has(tag)) values.set(tag, entries.word(at + wordBytes, is64));
  }
  if (!terminated) throw new NotALibrary('the dynamic section has no DT_NULL terminator');
  if (!values.has(DT_SYMTAB) || !values.has(DT_STRTAB)) throw new NotALibrary('the dynamic section names no symbol or string table (DT_SYMTAB, DT_STRTAB): it is empty or zeroed');
  for (const [tag, sizeTag, name] of DT_TABLES) {
    const address = values.get(tag);
    if (address === undefined) continue;
    let size = 1;
    if (sizeTag !== null) {
      const given = values.get(sizeTag);
      if (given === undefined || given === 0) throw new NotALibrary(`${name} comes without its size (${DT_SIZE_NAMES.get(sizeTag)} is ${given === undefined ? 'absent' : '0'}): the dynamic section is damaged`);
      size = given;
    }
    const load = loads.find((segment) => address >= segment.vaddr && address < segment.vaddr + segment.memsz);
    if (!load) throw new NotALibrary(`${name} (address 0x${address.toString(16)}) lies in no PT_LOAD segment`);
    if (address + size > load.vaddr + load.filesz) {
      throw new NotALibrary(`${name} (address 0x${address.toString(16)}, ${size} bytes) runs past the bytes its PT_LOAD segment takes from the file`);
    }
    if (load.offset + (address - load.vaddr) < headersEnd) {
      throw new NotALibrary(`${name} (address 0x${address.toString(16)}) points into the ELF headers: the dynamic section is damaged`);
    }
  }
  for (const [tag, wanted, name] of [[DT_SYMENT, is64 ? 24 : 16, 'DT_SYMENT'], [DT_RELAENT, is64 ? 24 : 12, 'DT_RELAENT'], [DT_RELENT, is64 ? 16 : 8, 'DT_RELENT']] as const) {
    const value = values.get(tag);
    if (value !== undefined && value !== wanted) throw new NotALibrary(`${name} is ${value}, not ${wanted}: the dynamic section is damaged`);
  }
  const pltRel = values.get(DT_PLTREL);
  if (pltRel !== undefined && pltRel !== 7 && pltRel !== 17) throw new NotALibrary(`DT_PLTREL is ${pltRel}, neither DT_RELA (7) nor DT_REL (17): the dynamic section is damaged`);
}

// --- Mach-O ---------------------------------------------------------------

const MH_MAGIC = 0xfeedface;
const MH_MAGIC_64 = 0xfeedfacf;
const FAT_MAGIC = 0xcafebabe;
const MH_DYLIB = 6;
const MH_BUNDLE = 8;
const LC_SEGMENT = 0x1;
const LC_SEGMENT_64 = 0x19;
/** cputype for each process.arch (CPU_ARCH_ABI64 = 0x01000000). */
const MACHO_CPUS: Record<string, number> = { x64: 0x01000007, arm64: 0x0100000c, ia32: 7, arm: 12 };
const MACHO_CPU_NAMES: Record<number, string> = { 0x01000007: 'x86-64', 0x0100000c: 'arm64', 7: 'x86', 12: 'arm' };

/** One Mach-O image at `base` (a whole file, or a slice of a universal file `length` bytes long). */
function checkMachOImage(file: FileReader, base: number, length: number, target: LibraryTarget): void {
  const slice = `Mach-O${base === 0 ? '' : ` slice at byte ${base}`}`;
  const magicBytes = file.read(base, 4, `the ${slice} header`);
  const magicLE = magicBytes.readUInt32LE(0);
  const magicBE = magicBytes.readUInt32BE(0);
  const little = magicLE === MH_MAGIC || magicLE === MH_MAGIC_64;
  if (!little && magicBE !== MH_MAGIC && magicBE !== MH_MAGIC_64) throw new NotALibrary(`the ${slice} has no Mach-O magic`);
  if ((target.endianness === 'LE') !== little) throw new NotALibrary(`a ${little ? 'little' : 'big'}-endian Mach-O file; this process is ${target.endianness === 'LE' ? 'little' : 'big'}-endian`);
  const is64 = (little ? magicLE : magicBE) === MH_MAGIC_64;
  const headerBytes = is64 ? 32 : 28;
  if (headerBytes > length) throw new NotALibrary(`truncated: the ${slice} is ${length} bytes, shorter than its header`);
  const header = new Fields(file.read(base, headerBytes, `the ${slice} header`), little);
  const cpu = header.u32(4);
  const fileType = header.u32(12);
  const ncmds = header.u32(16);
  const sizeofcmds = header.u32(20);
  const wanted = MACHO_CPUS[target.arch];
  if (wanted !== undefined && cpu !== wanted) {
    throw new NotALibrary(`built for ${MACHO_CPU_NAMES[cpu] ?? `Mach-O CPU type 0x${cpu.toString(16)}`}; this process runs on ${MACHO_CPU_NAMES[wanted]} (${target.arch})`);
  }
  if (fileType !== MH_DYLIB && fileType !== MH_BUNDLE) throw new NotALibrary(`Mach-O file type ${fileType} is not a dynamic library (MH_DYLIB) or bundle (MH_BUNDLE)`);
  if (ncmds > COMMANDS_MAX) throw new NotALibrary(`${ncmds} load commands is more than a library plausibly has`);
  if (headerBytes + sizeofcmds > length) throw new NotALibrary(`truncated: the load commands end at byte ${base + headerBytes + sizeofcmds}, past the end of the ${slice}`);
  const commands = new Fields(file.read(base + headerBytes, sizeofcmds, `the ${slice} load commands (${sizeofcmds} bytes)`), little);
  let at = 0;
  for (let index = 0; index < ncmds; index++) {
    if (at + 8 > sizeofcmds) throw new NotALibrary(`load command ${index} starts past the ${sizeofcmds} bytes of load commands`);
    const cmd = commands.u32(at);
    const cmdsize = commands.u32(at + 4);
    if (cmdsize < 8 || cmdsize % 4 !== 0 || at + cmdsize > sizeofcmds) throw new NotALibrary(`load command ${index} has a size of ${cmdsize} bytes, which does not fit the load commands`);
    if (cmd === LC_SEGMENT_64 || cmd === LC_SEGMENT) {
      const wide = cmd === LC_SEGMENT_64;
      if (cmdsize < (wide ? 72 : 56)) throw new NotALibrary(`segment command ${index} is ${cmdsize} bytes, too short`);
      const fileoff = commands.word(at + (wide ? 40 : 32), wide);
      const filesize = commands.word(at + (wide ? 48 : 36), wide);
      const name = commands.buf.toString('latin1', at + 8, at + 24).replace(/\0.*$/s, '');
      if (filesize > 0 && (fileoff + filesize > length || !Number.isSafeInteger(fileoff + filesize))) {
        throw new NotALibrary(`truncated: segment ${name || index} ends at byte ${base + fileoff + filesize}, past the end of the ${slice} (${base + length})`);
      }
    }
    at += cmdsize;
  }
}

function checkMachO(file: FileReader, target: LibraryTarget): void {
  const magic = file.read(0, 4, 'the Mach-O header').readUInt32BE(0);
  if (magic !== FAT_MAGIC) {
    checkMachOImage(file, 0, file.size, target);
    return;
  }
  // A universal file: a big-endian table of slices, one per CPU.
  const count = file.read(4, 4, 'the universal header').readUInt32BE(0);
  if (count === 0 || count > 64) throw new NotALibrary(`a universal file with ${count} slices`);
  const table = file.read(8, count * 20, `the universal file's table of ${count} slices`);
  const wanted = MACHO_CPUS[target.arch];
  let found = false;
  for (let index = 0; index < count; index++) {
    const cpu = table.readUInt32BE(index * 20);
    const offset = table.readUInt32BE(index * 20 + 8);
    const size = table.readUInt32BE(index * 20 + 12);
    file.within(offset, size, `slice ${index} (${MACHO_CPU_NAMES[cpu] ?? `CPU type 0x${cpu.toString(16)}`}, bytes ${offset} to ${offset + size})`);
    if (wanted === undefined || cpu === wanted) {
      checkMachOImage(file, offset, size, target);
      found = true;
    }
  }
  if (!found) throw new NotALibrary(`a universal file with no slice for this process's CPU (${target.arch})`);
}

// --- PE -------------------------------------------------------------------

const PE_MACHINES: Record<string, number> = { x64: 0x8664, arm64: 0xaa64, ia32: 0x14c, arm: 0x1c4 };
const PE_MACHINE_NAMES: Record<number, string> = { 0x8664: 'x86-64', 0xaa64: 'ARM64', 0x14c: 'x86', 0x1c4: 'ARM' };
const IMAGE_FILE_DLL = 0x2000;

function checkPe(file: FileReader, target: LibraryTarget): void {
  const dos = file.read(0, 64, 'the MS-DOS header');
  const peOffset = dos.readUInt32LE(0x3c);
  const signature = file.read(peOffset, 24, `the PE header (at byte ${peOffset})`);
  if (signature.readUInt32LE(0) !== 0x00004550) throw new NotALibrary(`no PE signature at byte ${peOffset}: an MS-DOS program, not a DLL`);
  const coff = new Fields(signature, true);
  const machine = coff.u16(4);
  const sections = coff.u16(6);
  const optionalBytes = coff.u16(20);
  const characteristics = coff.u16(22);
  const wanted = PE_MACHINES[target.arch];
  if (wanted !== undefined && machine !== wanted) {
    throw new NotALibrary(`built for ${PE_MACHINE_NAMES[machine] ?? `PE machine 0x${machine.toString(16)}`}; this process runs on ${PE_MACHINE_NAMES[wanted]} (${target.arch})`);
  }
  if ((characteristics & IMAGE_FILE_DLL) === 0) throw new NotALibrary('a PE image that is not a DLL (IMAGE_FILE_DLL is not set)');
  if (optionalBytes < 2) throw new NotALibrary('a PE image without an optional header');
  const optional = file.read(peOffset + 24, optionalBytes, 'the PE optional header');
  const optionalMagic = optional.readUInt16LE(0);
  if (optionalMagic !== 0x10b && optionalMagic !== 0x20b) throw new NotALibrary(`PE optional header magic 0x${optionalMagic.toString(16)} is neither PE32 nor PE32+`);
  if (sections === 0 || sections > COMMANDS_MAX) throw new NotALibrary(`a PE image with ${sections} sections`);
  const tableOffset = peOffset + 24 + optionalBytes;
  const table = file.read(tableOffset, sections * 40, `the section table (${sections} sections at byte ${tableOffset})`);
  for (let index = 0; index < sections; index++) {
    const name = table.toString('latin1', index * 40, index * 40 + 8).replace(/\0.*$/s, '');
    const rawSize = table.readUInt32LE(index * 40 + 16);
    const rawOffset = table.readUInt32LE(index * 40 + 20);
    if (rawSize > 0) file.within(rawOffset, rawSize, `section ${name || index} (bytes ${rawOffset} to ${rawOffset + rawSize})`);
  }
}

// --- The check --------------------------------------------------------------

type Format = 'ELF' | 'Mach-O' | 'PE';

const PLATFORM_FORMATS: Partial<Record<NodeJS.Platform, Format>> = { darwin: 'Mach-O', win32: 'PE' };

function formatOf(head: Buffer): Format | null {
  if (head.length >= 4 && head.readUInt32BE(0) === 0x7f454c46) return 'ELF';
  if (head.length >= 2 && head[0] === 0x4d && head[1] === 0x5a) return 'PE';
  if (head.length >= 4) {
    const le = head.readUInt32LE(0);
    const be = head.readUInt32BE(0);
    if ([MH_MAGIC, MH_MAGIC_64].includes(le) || [MH_MAGIC, MH_MAGIC_64, FAT_MAGIC].includes(be)) return 'Mach-O';
  }
  return null;
}

/**
 * Throws SMTP_E_PLUGIN_NOT_LIBRARY, naming the file and what is wrong, when
 * `path` is not a whole shared library for `target` (this process by
 * default); SMTP_E_PLUGIN_NOT_FOUND when it cannot be opened or read. Call it
 * on the very path handed to koffi.load, just before.
 */
export function checkLibraryFile(path: string, target: LibraryTarget = currentLibraryTarget()): void {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (cause) {
    throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${path}: cannot be opened (${errorText(cause)})`, cause);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${path}: not a regular file`);
    const file = new FileReader(fd, stat.size);
    const expected = PLATFORM_FORMATS[target.platform] ?? 'ELF';
    const format = formatOf(file.read(0, Math.min(stat.size, 4), 'the file header'));
    if (format === null) throw new NotALibrary(stat.size === 0 ? 'an empty file' : `not a shared library: no ${expected} header`);
    if (format !== expected) throw new NotALibrary(`a ${format} file; ${target.platform} loads ${expected} libraries`);
    if (format === 'ELF') checkElf(file, target);
    else if (format === 'Mach-O') checkMachO(file, target);
    else checkPe(file, target);
  } catch (error) {
    if (isHostError(error)) throw error;
    if (error instanceof NotALibrary) throw hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${path}: ${error.message}`, error);
    if (error instanceof RangeError) throw hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${path}: malformed headers (${error.message})`, error);
    throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${path}: cannot be read (${errorText(error)})`, error);
  } finally {
    closeSync(fd);
  }
}

function errorText(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? (error as Error).message;
}
