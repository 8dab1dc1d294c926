import type { Readable } from 'node:stream';
import type { IncomingMessage } from '../storage/spool.js';
import { HEADER_SECTION_BYTES_MAX } from './message-headers.js';

/**
 * Reads one DATA stream as it arrives: into the spool's IncomingMessage
 * (which keeps a small message in memory and streams a large one to its own
 * file), or, without a spool, into memory. The first bytes are kept apart
 * for the header checks, so a 20 MB message never has to sit in memory whole
 * just to be checked and stored.
 */

/** Bytes kept for the header checks: the largest header section allowed and its blank line. */
export const HEAD_BYTES_MAX = HEADER_SECTION_BYTES_MAX + 4;

export interface ReceivedData {
  /** The first min(size, HEAD_BYTES_MAX) bytes. */
  readonly head: Buffer;
  readonly size: number;
  /** The whole message in memory: without a spool only (with one, ask the IncomingMessage). */
  readonly body: Buffer | null;
}

/** What smtp-server's DATA stream carries besides the bytes. */
export type DataStream = Readable & { sizeExceeded?: boolean };

/**
 * Resolves once the final dot was read: with the data, or null when the
 * message went over the size limit (smtp-server answers that itself).
 * Rejects when the client went away mid-message or the spool could not
 * write; either way `incoming` is left for the caller to discard.
 */
export function receiveData(stream: DataStream, incoming: IncomingMessage | null): Promise<ReceivedData | null> {
  const headChunks: Buffer[] = [];
  let headBytes = 0;
  const chunks: Buffer[] | null = incoming === null ? [] : null;
  let size = 0;
  let writeError: Error | null = null;
  return new Promise((resolve, reject) => {
    stream.on('data', (chunk: Buffer) => {
      if (stream.sizeExceeded || writeError !== null) return;
      size += chunk.length;
      if (headBytes < HEAD_BYTES_MAX) {
        const part = chunk.length <= HEAD_BYTES_MAX - headBytes ? chunk : chunk.subarray(0, HEAD_BYTES_MAX - headBytes);
        headChunks.push(part);
        headBytes += part.length;
      }
      if (chunks !== null) {
        chunks.push(chunk);
        return;
      }
      const wait = incoming!.write(chunk);
      if (wait === undefined) return;
      // The message's file is behind: stop reading the socket until it catches up.
      stream.pause();
      wait.then(
        () => stream.resume(),
        (error: unknown) => {
          // Keep reading to the final dot (the client is owed a reply), writing nothing more.
          writeError = error as Error;
          stream.resume();
        },
      );
    });
    stream.once('error', reject);
    stream.once('end', () => {
      if (writeError !== null) return reject(writeError);
      if (stream.sizeExceeded) return resolve(null);
      const head = headChunks.length === 1 ? headChunks[0]! : Buffer.concat(headChunks, headBytes);
      resolve({ head, size, body: chunks === null ? null : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size) });
    });
  });
}
