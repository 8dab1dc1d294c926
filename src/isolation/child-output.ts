import type { Readable } from 'node:stream';
import type { Logger } from '../log.js';

/** A line longer than this is logged in pieces of this many bytes. */
export const OUTPUT_LINE_BYTES_MAX = 4096;
/** Lines logged per stream and second; the rest are counted and the count is logged. */
export const OUTPUT_LINES_PER_SECOND_MAX = 100;
const WINDOW_MS = 1000;
const NEWLINE = 0x0a;

/**
 * Logs what a plugin's child process writes to stdout or stderr (a C
 * plugin's printf, a Zig plugin's std.debug.print), one log record per
 * line, bounded: long lines are split, and a plugin that prints in a loop
 * is cut to OUTPUT_LINES_PER_SECOND_MAX lines a second, with a record of
 * how many were dropped.
 */
export function logChildOutput(stream: Readable, logger: Logger, name: 'stdout' | 'stderr', now: () => number = Date.now): void {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let windowStart = 0;
  let inWindow = 0;
  let dropped = 0;
  const level = name === 'stdout' ? 'info' : 'warn';
  const emit = (line: Buffer): void => {
    const at = now();
    if (at - windowStart >= WINDOW_MS) {
      if (dropped > 0) logger.warn({ stream: name, dropped_lines: dropped }, 'plugin output over its rate: lines dropped');
      windowStart = at;
      inWindow = 0;
      dropped = 0;
    }
    if (inWindow >= OUTPUT_LINES_PER_SECOND_MAX) {
      dropped++;
      return;
    }
    inWindow++;
    const text = line.toString('utf8');
    logger[level]({ stream: name }, text.endsWith('\r') ? text.slice(0, -1) : text);
  };
  const flushPending = (): void => {
    if (pendingBytes === 0) return;
    emit(Buffer.concat(pending, pendingBytes));
    pending = [];
    pendingBytes = 0;
  };
  stream.on('data', (chunk: Buffer) => {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(NEWLINE, start);
      const end = newline < 0 ? chunk.length : newline;
      let piece = chunk.subarray(start, end);
      // Fill the partial line up to the bound; whatever overflows becomes lines of its own.
      while (pendingBytes + piece.length > OUTPUT_LINE_BYTES_MAX) {
        const room = OUTPUT_LINE_BYTES_MAX - pendingBytes;
        pending.push(piece.subarray(0, room));
        pendingBytes += room;
        flushPending();
        piece = piece.subarray(room);
      }
      if (piece.length > 0) {
        pending.push(Buffer.from(piece));
        pendingBytes += piece.length;
      }
      if (newline < 0) break;
      if (pendingBytes > 0) flushPending();
      else emit(Buffer.alloc(0));
      start = newline + 1;
    }
  });
  stream.on('end', () => {
    flushPending();
    if (dropped > 0) logger.warn({ stream: name, dropped_lines: dropped }, 'plugin output over its rate: lines dropped');
  });
}
