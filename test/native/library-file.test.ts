import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkLibraryFile, currentLibraryTarget, type LibraryTarget } from '../../src/native/library-file.js';
import { PROJECT_ROOT, RUNTIME_LIBRARY } from '../../src/paths.js';
import { PINNED_ZIG_VERSION, findZig, zigEnv } from '../../src/toolchain/zig.js';
import { expectCode } from '../helpers/expect-code.js';
import { fixture } from '../helpers/fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'library-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Libraries this process could load: one built by gcc, one by Zig (1.4 MB), and the host runtime. */
const VALID = { gcc: fixture('c_spam_filter'), zig: fixture('spam_filter'), runtime: RUNTIME_LIBRARY };
const TRUNCATIONS = [100, 4000, 12_000] as const;

function copy(source: string, name: string, length?: number): string {
  const path = join(dir, name);
  copyFileSync(source, path);
  if (length !== undefined) truncateSync(path, length);
  return path;
}

function sizeOf(path: string): number {
  return readFileSync(path).length;
}

/** Builds `export fn f` into a shared library for another target with Zig (a few seconds each, then cached). */
function crossBuild(source: string, target: string): Promise<string> {
  const out = join(dir, 'cross', target, 'libtiny');
  mkdirSync(join(dir, 'cross', target), { recursive: true });
  return new Promise((done, fail) => {
    const child = spawn(findZig(PINNED_ZIG_VERSION), ['build-lib', '-dynamic', '-O', 'ReleaseSmall', '-target', target, source, `-femit-bin=${out}`], { env: zigEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (status) => (status === 0 ? done(out) : fail(new Error(`zig ${target}: ${stderr}`))));
  });
}

describe('checkLibraryFile on this platform (ELF, x86-64 Linux)', () => {
  it('accepts whole libraries built by gcc and by Zig, and the host runtime', () => {
    for (const path of Object.values(VALID)) expect(() => checkLibraryFile(path), path).not.toThrow();
  });

  it('refuses copies truncated at 100 B, 4 KB, 12 KB and one byte short, naming what is cut', () => {
    for (const [name, source] of Object.entries(VALID)) {
      const size = sizeOf(source);
      for (const length of [...TRUNCATIONS, size - 1]) {
        const path = copy(source, `${name}-${length}.so`, length);
        expectCode(() => checkLibraryFile(path), 'SMTP_E_PLUGIN_NOT_LIBRARY');
        expect(() => checkLibraryFile(path), `${name} at ${length}`).toThrow(new RegExp(`^${path}: truncated: .+ ends at byte \\d+, the file has ${length} bytes$`));
      }
    }
    // What is cut, in the gcc build (16 KB): headers, then a segment, then the section headers at the very end.
    const gcc = sizeOf(VALID.gcc);
    expect(() => checkLibraryFile(copy(VALID.gcc, 'gcc-100b.so', 100))).toThrow(/the program header table/);
    expect(() => checkLibraryFile(copy(VALID.gcc, 'gcc-4k.so', 4000))).toThrow(/the section header table|PT_LOAD segment|section \d+/);
    expect(() => checkLibraryFile(copy(VALID.gcc, 'gcc-short.so', gcc - 1))).toThrow(/the section header table \(\d+ entries at byte \d+\) ends at byte \d+/);
  });

  it('refuses a half-written file that stops at half its size', () => {
    for (const [name, source] of Object.entries(VALID)) {
      const half = Math.floor(sizeOf(source) / 2);
      expectCode(() => checkLibraryFile(copy(source, `${name}-half.so`, half)), 'SMTP_E_PLUGIN_NOT_LIBRARY', 'truncated: ');
    }
  });

  it('refuses a text file, an empty file, an object file and an executable', () => {
    const text = join(dir, 'text.so');
    writeFileSync(text, 'this is text, not an ELF file\n');
    expect(() => checkLibraryFile(text)).toThrow(`${text}: not a shared library: no ELF header`);
    const empty = join(dir, 'empty.so');
    writeFileSync(empty, '');
    expect(() => checkLibraryFile(empty)).toThrow(`${empty}: an empty file`);
    const zig = findZig(PINNED_ZIG_VERSION);
    const source = join(dir, 'main.zig');
    writeFileSync(source, 'pub fn main() void {}\n');
    const object = join(dir, 'main.o');
    const exe = join(dir, 'main');
    for (const [kind, out] of [['build-obj', object], ['build-exe', exe]] as const) {
      const run = spawnSync(zig, [kind, '-O', 'ReleaseSmall', source, `-femit-bin=${out}`], { env: zigEnv(), encoding: 'utf8' });
      expect(run.status, run.stderr).toBe(0);
    }
    expect(() => checkLibraryFile(object)).toThrow(/ELF type 1 is not a shared object \(ET_DYN, 3\): an object file/);
    expect(() => checkLibraryFile(exe)).toThrow(/ELF type 2 is not a shared object \(ET_DYN, 3\): an executable/);
    for (const path of [text, empty, object, exe]) expectCode(() => checkLibraryFile(path), 'SMTP_E_PLUGIN_NOT_LIBRARY');
  });

  it('is SMTP_E_PLUGIN_NOT_FOUND when the file cannot be read', () => {
    expect(() => checkLibraryFile(join(dir, 'absent.so'))).toThrow(`${join(dir, 'absent.so')}: cannot be opened (ENOENT)`);
    expectCode(() => checkLibraryFile(join(dir, 'absent.so')), 'SMTP_E_PLUGIN_NOT_FOUND');
    expectCode(() => checkLibraryFile(dir), 'SMTP_E_PLUGIN_NOT_FOUND');
  });
});

describe('checkLibraryFile on libraries for other CPUs and systems (built with Zig)', () => {
  const built: Record<string, string> = {};
  beforeAll(async () => {
    const targets = ['aarch64-linux', 'x86-linux', 'x86_64-macos', 'aarch64-macos', 'x86_64-windows', 'aarch64-windows'];
    const source = join(dir, 'tiny.zig');
    writeFileSync(source, 'export fn f(x: i32) i32 {\n    return x + 1;\n}\n');
    const outputs = await Promise.all(targets.map((target) => crossBuild(source, target)));
    targets.forEach((target, index) => (built[target] = outputs[index]!));
  });

  const linux = currentLibraryTarget();
  const as = (platform: NodeJS.Platform, arch: string): LibraryTarget => ({ platform, arch, endianness: 'LE' });

  it('refuses an ELF library of another machine or word size on this process', () => {
    expect(linux).toMatchObject({ platform: 'linux', arch: 'x64', endianness: 'LE' });
    expect(() => checkLibraryFile(built['aarch64-linux']!)).toThrow(/built for AArch64; this process runs on x86-64 \(x64\)$/);
    expect(() => checkLibraryFile(built['x86-linux']!)).toThrow(/a 32-bit ELF file; this process \(x64\) loads 64-bit libraries$/);
    expect(() => checkLibraryFile(built['x86_64-macos']!)).toThrow(/a Mach-O file; linux loads ELF libraries$/);
    expect(() => checkLibraryFile(built['x86_64-windows']!)).toThrow(/a PE file; linux loads ELF libraries$/);
    // The same files pass for the process they were built for.
    expect(() => checkLibraryFile(built['aarch64-linux']!, as('linux', 'arm64'))).not.toThrow();
    expect(() => checkLibraryFile(built['x86-linux']!, as('linux', 'ia32'))).not.toThrow();
  });

  it('checks Mach-O: magic, CPU, file type, load commands and segments inside the file', () => {
    for (const [target, arch, other] of [['x86_64-macos', 'x64', 'arm64'], ['aarch64-macos', 'arm64', 'x64']] as const) {
      const path = built[target]!;
      expect(() => checkLibraryFile(path, as('darwin', arch)), target).not.toThrow();
      expect(() => checkLibraryFile(path, as('darwin', other))).toThrow(/built for (x86-64|arm64); this process runs on/);
      for (const length of [20, 100, sizeOf(path) - 1]) {
        const cut = copy(path, `${target}-${length}.dylib`, length);
        expect(() => checkLibraryFile(cut, as('darwin', arch)), `${target} at ${length}`).toThrow(/truncated: /);
      }
    }
    expect(() => checkLibraryFile(built['aarch64-linux']!, as('darwin', 'arm64'))).toThrow(/a ELF file; darwin loads Mach-O libraries$/);
  });

  it('checks PE: MZ, the PE header, machine, DLL flag and sections inside the file', () => {
    for (const [target, arch, other] of [['x86_64-windows', 'x64', 'arm64'], ['aarch64-windows', 'arm64', 'x64']] as const) {
      const path = built[target]!;
      expect(() => checkLibraryFile(path, as('win32', arch)), target).not.toThrow();
      expect(() => checkLibraryFile(path, as('win32', other))).toThrow(/built for (x86-64|ARM64); this process runs on/);
      for (const length of [100, 400, sizeOf(path) - 1]) {
        const cut = copy(path, `${target}-${length}.dll`, length);
        expect(() => checkLibraryFile(cut, as('win32', arch)), `${target} at ${length}`).toThrow(/truncated: /);
      }
    }
    const dos = join(dir, 'dos.dll');
    writeFileSync(dos, Buffer.concat([Buffer.from('MZ'), Buffer.alloc(126)]));
    expect(() => checkLibraryFile(dos, as('win32', 'x64'))).toThrow(/no PE signature at byte 0: an MS-DOS program, not a DLL$/);
  });
});

describe('checkLibraryFile before koffi.load, in a child process', () => {
  /** Runs check-then-load (or load alone) on `path` in a fresh node (the check from dist/: npm run build first); reports how it ended. */
  function loadInChild(path: string, check: boolean): { signal: NodeJS.Signals | null; status: number | null; stdout: string } {
    const script = `
      import koffi from 'koffi';
      import { checkLibraryFile } from ${JSON.stringify(join(PROJECT_ROOT, 'dist', 'src', 'native', 'library-file.js'))};
      const path = process.argv[1];
      try {
        if (${check}) checkLibraryFile(path);
        koffi.load(path);
        console.log('loaded');
      } catch (error) {
        console.log(error.code ?? 'koffi: ' + error.message);
      }`;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script, path], { cwd: PROJECT_ROOT, encoding: 'utf8', timeout: 30_000 });
    return { signal: run.signal, status: run.status, stdout: run.stdout.trim() };
  }

  it('gives the coded error, never a signal, for every truncated copy', () => {
    const crashedWithout: string[] = [];
    for (const [name, source] of Object.entries(VALID)) {
      for (const length of [...TRUNCATIONS, sizeOf(source) - 1]) {
        const path = copy(source, `child-${name}-${length}.so`, length);
        const checked = loadInChild(path, true);
        expect(checked, `${name} at ${length}`).toEqual({ signal: null, status: 0, stdout: 'SMTP_E_PLUGIN_NOT_LIBRARY' });
        if (loadInChild(path, false).signal !== null) crashedWithout.push(`${name}@${length}`);
      }
    }
    // Without the check, dlopen itself dies on some of them (SIGBUS here): the reason the check exists.
    expect(crashedWithout.length).toBeGreaterThan(0);
    expect(loadInChild(VALID.gcc, true)).toEqual({ signal: null, status: 0, stdout: 'loaded' });
  });

  it('refuses a half-written file of full size (the rest still zeros), where dlopen may crash', () => {
    for (const [name, source] of Object.entries(VALID)) {
      const bytes = readFileSync(source);
      for (const part of [0.25, 0.5, 0.75]) {
        const written = Math.floor(bytes.length * part);
        const path = join(dir, `zero-filled-${name}-${part}.so`);
        writeFileSync(path, Buffer.concat([bytes.subarray(0, written), Buffer.alloc(bytes.length - written)]));
        // The section headers come last: still zeros, they give the file away.
        expect(loadInChild(path, true), `${name} ${part}`).toEqual({ signal: null, status: 0, stdout: 'SMTP_E_PLUGIN_NOT_LIBRARY' });
      }
    }
    expect(() => checkLibraryFile(join(dir, 'zero-filled-zig-0.75.so'))).toThrow(/section header 1 is empty \(SHT_NULL\): the file was not written to the end, or is damaged$/);
    // The gcc build keeps its dynamic section in the second half: dlopen alone crashes on it.
    expect(loadInChild(join(dir, 'zero-filled-gcc-0.5.so'), false).signal).not.toBeNull();
  });
});
