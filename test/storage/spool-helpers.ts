// Shared by the storage tests: temporary spools on the real disk (real
// fsync), a logger that keeps its lines, and segment file helpers.
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { HEADER_BYTES, readHeader } from '../../src/storage/record.js';
import { Spool, type Envelope, type SpoolOptions } from '../../src/storage/spool.js';

export const ENVELOPE: Envelope = { from: 'alice@example.org', to: ['bob@example.net', 'carol@example.net'] };

export function spoolDir(prefix = 'spool-'): string {
  return join(mkdtempSync(join(tmpdir(), prefix)), 'spool');
}

export async function openSpool(options: Partial<SpoolOptions> = {}): Promise<Spool> {
  const spool = new Spool({ dir: spoolDir(), fsync: true, ...options });
  await spool.open();
  return spool;
}

/** Closes `spool` and opens a new instance on its directory, as a restart does. */
export async function reopen(spool: Spool, options: Partial<SpoolOptions> = {}): Promise<Spool> {
  await spool.close();
  const again = new Spool({ dir: spool.dir, fsync: true, ...options });
  await again.open();
  return again;
}

export function segmentFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((name) => /^\d{16}\.seg$/.test(name))
    .sort();
}

/** Where a segment file's records end: with fsync the spool zero-fills ahead of them, so the file is longer. */
export function recordsEnd(path: string): number {
  const bytes = readFileSync(path);
  let at = 0;
  for (;;) {
    const header = at + HEADER_BYTES <= bytes.length ? readHeader(bytes, at) : null;
    if (header === null) return at;
    at += HEADER_BYTES + header.payloadBytes;
  }
}

export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [key: string]: unknown;
}

/** A pino logger whose lines land in `lines`, parsed. */
export function capturingLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  return { logger, lines };
}

/** A message body of `size` bytes that says which one it is, so a mix-up shows. */
export function messageBytes(tag: string, size: number): Buffer {
  const head = Buffer.from(`Subject: ${tag}\r\n\r\n`);
  const body = Buffer.alloc(Math.max(0, size - head.length));
  for (let i = 0; i < body.length; i++) body[i] = 97 + ((i * 31 + tag.length * 7) % 26);
  return Buffer.concat([head, body]).subarray(0, Math.max(size, head.length));
}

/** Byte equality without vitest's element-by-element diff, which takes most of a second on a few hundred KiB. */
export function sameBytes(actual: Buffer, expected: Buffer): boolean {
  if (actual.equals(expected)) return true;
  let at = 0;
  while (at < Math.min(actual.length, expected.length) && actual[at] === expected[at]) at++;
  throw new Error(`bytes differ: ${actual.length} vs ${expected.length} bytes, first difference at ${at}`);
}
