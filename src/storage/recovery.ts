/**
 * Reading the spool back at open: every segment scanned in order, each
 * record's CRC checked, a segment's scan stopped at its first bad or torn
 * record (a torn tail was never acknowledged: its batch's fsync had not
 * returned). The result is the set of live messages: stored, minus done,
 * with their delivery progress.
 */
import { readFd } from './fs-raw.js';
import type { Envelope } from './incoming.js';
import {
  BodyKind,
  FORMAT_VERSION,
  HEADER_BYTES,
  RecordFormatError,
  RecordType,
  crcMatches,
  decodeDelivered,
  decodeDone,
  decodeSegment,
  decodeStore,
  readHeader,
} from './record.js';

/** Bytes read from a segment at a time; a bigger record grows the buffer to its size. */
const SCAN_CHUNK_BYTES = 2 ** 20;

/** A live message in the index. */
export interface Entry {
  readonly id: string;
  readonly envelope: Envelope;
  readonly size: number;
  readonly receivedAt: string;
  readonly extra: Readonly<Record<string, string>>;
  delivered: string[];
  /** large/<id>.eml for a message with its own file; undefined for an inline one. */
  readonly path: string | undefined;
  /** Its current STORE record: segment, offset and bytes. */
  sequence: number;
  offset: number;
  bytes: number;
}

/** Something recovery passed over, logged with a code. */
export interface Skipped {
  readonly segment: string;
  readonly offset: number;
  /** torn_tail | corrupt_record | bad_segment_header | undecodable_record | unknown_record_type */
  readonly reason: string;
  readonly detail: string;
  /** Bytes after the bad record that the scan did not read. */
  readonly bytesSkipped: number;
}

export interface ScannedSegment {
  readonly sequence: number;
  readonly fd: number;
  /** Bytes of whole, valid records from the start. */
  readonly validBytes: number;
  /** False when its first record is not its SEGMENT record: nothing in it was read. */
  readonly usable: boolean;
  /** A record in it could not be read and bytes follow it: more than a torn tail. */
  readonly damaged: boolean;
  /** Nothing but zeros: a segment zero-filled ahead (segment-log.ts) whose SEGMENT record never reached the disk. */
  readonly blank: boolean;
}

/**
 * Whether the file holds only zeros from `from` to `fileBytes`: space a
 * segment zero-filled ahead of its records (segment-log.ts) that no record
 * reached. A torn batch leaves bytes that are not all zeros, or a record
 * whose CRC fails.
 */
async function zerosFrom(fd: number, from: number, fileBytes: number): Promise<boolean> {
  const chunk = Buffer.allocUnsafe(Math.min(SCAN_CHUNK_BYTES, Math.max(fileBytes - from, 1)));
  const zeros = Buffer.alloc(chunk.length);
  for (let at = from; at < fileBytes; ) {
    const read = await readFd(fd, chunk, 0, Math.min(chunk.length, fileBytes - at), at);
    if (read === 0) return false;
    if (!chunk.subarray(0, read).equals(zeros.subarray(0, read))) return false;
    at += read;
  }
  return true;
}

/** Applies records, segment after segment, to the index of live messages. */
export class IndexBuilder {
  readonly entries = new Map<string, Entry>();
  readonly skipped: Skipped[] = [];
  records = 0;
  /**
   * DELIVERED records met before their message's STORE. Compaction copies
   * a STORE forward with the progress it knew when it queued the copy; a
   * DELIVERED queued just before that copy is older in the log but not in
   * the copy, and its message's first STORE may be in a segment already
   * deleted. Kept here until the STORE comes (or a DONE says it never will).
   */
  readonly #earlyDelivered = new Map<string, Set<string>>();
  readonly #largePath: (id: string) => string;

  constructor(largePath: (id: string) => string) {
    this.#largePath = largePath;
  }

  /** Scans one segment file; returns how far its valid records go. */
  async scan(sequence: number, fd: number, name: string, fileBytes: number): Promise<ScannedSegment> {
    let buffer = Buffer.allocUnsafe(Math.min(SCAN_CHUNK_BYTES, Math.max(fileBytes, HEADER_BYTES)));
    /** File offset of buffer[0], and bytes valid in the buffer. */
    let base = 0;
    let filled = 0;
    let offset = 0;
    let first = true;
    let damaged = false;

    const fill = async (need: number): Promise<boolean> => {
      // Keep the bytes from `offset` on, then read until `need` of them are in.
      if (offset + need > fileBytes) return false;
      if (offset - base + need <= filled) return true;
      const keep = filled - (offset - base);
      if (need > buffer.length) {
        const bigger = Buffer.allocUnsafe(need);
        buffer.copy(bigger, 0, offset - base, filled);
        buffer = bigger;
      } else {
        buffer.copy(buffer, 0, offset - base, filled);
      }
      base = offset;
      filled = keep;
      while (filled < need) {
        const read = await readFd(fd, buffer, filled, Math.min(buffer.length - filled, fileBytes - (base + filled)), base + filled);
        if (read === 0) return false;
        filled += read;
      }
      return true;
    };

    const stop = (reason: string, detail: string): void => {
      if (reason !== 'torn_tail') damaged = true;
      this.skipped.push({ segment: name, offset, reason, detail, bytesSkipped: fileBytes - offset });
    };

    while (offset < fileBytes) {
      if (!(await fill(HEADER_BYTES))) {
        stop('torn_tail', `${fileBytes - offset} bytes, less than a record header`);
        break;
      }
      const at = offset - base;
      const header = readHeader(buffer, at);
      if (header === null) {
        // Zeros to the end: space filled ahead that no record reached, the segment's clean end.
        if (await zerosFrom(fd, offset, fileBytes)) {
          if (first) return { sequence, fd, validBytes: 0, usable: false, damaged: false, blank: true };
          break;
        }
        // Only zeros after the header's 16 bytes: a header cut short in space filled ahead, the last batch's.
        const torn = await zerosFrom(fd, offset + HEADER_BYTES, fileBytes);
        stop(torn ? 'torn_tail' : 'corrupt_record', 'no record header here (bad magic, reserved bits or length)');
        break;
      }
      const recordBytes = HEADER_BYTES + header.payloadBytes;
      if (!(await fill(recordBytes))) {
        stop('torn_tail', `a record of ${recordBytes} bytes, ${fileBytes - offset} left in the file`);
        break;
      }
      const start = offset - base;
      if (!crcMatches(buffer, start, header)) {
        // Only zeros after it: the last batch, cut short in space filled ahead, is a torn tail too.
        const torn = offset + recordBytes >= fileBytes || (await zerosFrom(fd, offset + recordBytes, fileBytes));
        stop(torn ? 'torn_tail' : 'corrupt_record', 'CRC mismatch');
        break;
      }
      const payloadStart = start + HEADER_BYTES;
      const payloadEnd = payloadStart + header.payloadBytes;
      if (first) {
        first = false;
        const segment = header.type === RecordType.SEGMENT ? safely(() => decodeSegment(buffer, payloadStart, payloadEnd)) : null;
        if (segment === null || segment.sequence !== sequence || segment.version > FORMAT_VERSION) {
          stop('bad_segment_header', segment === null ? 'the first record is not a SEGMENT record' : `SEGMENT record says sequence ${segment.sequence}, format ${segment.version}`);
          return { sequence, fd, validBytes: 0, usable: false, damaged: true, blank: false };
        }
      } else {
        this.records++;
        try {
          this.#apply(header.type, buffer, payloadStart, payloadEnd, sequence, offset, recordBytes);
        } catch (error) {
          if (!(error instanceof RecordFormatError)) throw error;
          // Its CRC is good, so it is what was written: a newer format, or a bug. The rest of the segment is still sound.
          damaged = true;
          this.skipped.push({ segment: name, offset, reason: 'undecodable_record', detail: error.message, bytesSkipped: recordBytes });
        }
      }
      offset += recordBytes;
    }
    if (first) return { sequence, fd, validBytes: 0, usable: false, damaged, blank: false };
    return { sequence, fd, validBytes: offset, usable: true, damaged, blank: false };
  }

  #apply(type: number, buffer: Buffer, start: number, end: number, sequence: number, offset: number, bytes: number): void {
    switch (type) {
      case RecordType.STORE: {
        const s = decodeStore(buffer, start, end);
        const previous = this.entries.get(s.id);
        // A second STORE for a live id is a compaction copy: it takes the place of the first, and progress only grows.
        const delivered = new Set([...(previous?.delivered ?? []), ...s.delivered, ...(this.#earlyDelivered.get(s.id) ?? [])]);
        this.#earlyDelivered.delete(s.id);
        this.entries.set(s.id, {
          id: s.id,
          envelope: { from: s.from, to: s.to },
          size: s.size,
          receivedAt: s.receivedAt,
          extra: s.extra,
          delivered: [...delivered],
          path: s.bodyKind === BodyKind.FILE ? this.#largePath(s.id) : undefined,
          sequence,
          offset,
          bytes,
        });
        return;
      }
      case RecordType.DELIVERED: {
        const { id, recipients } = decodeDelivered(buffer, start, end);
        const entry = this.entries.get(id);
        if (entry !== undefined) {
          for (const r of recipients) if (!entry.delivered.includes(r)) entry.delivered.push(r);
        } else {
          const early = this.#earlyDelivered.get(id) ?? new Set<string>();
          for (const r of recipients) early.add(r);
          this.#earlyDelivered.set(id, early);
        }
        return;
      }
      case RecordType.DONE: {
        const id = decodeDone(buffer, start, end);
        this.entries.delete(id);
        this.#earlyDelivered.delete(id);
        return;
      }
      default:
        throw new RecordFormatError(`unknown record type ${type}`);
    }
  }
}

function safely<T>(read: () => T): T | null {
  try {
    return read();
  } catch (error) {
    if (error instanceof RecordFormatError) return null;
    throw error;
  }
}
