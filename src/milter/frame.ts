import { MILTER_FRAME_BYTES_MAX, MILTER_LENGTH_BYTES, describeCode, milterProtocolError } from './protocol.js';

/**
 * Milter framing: every message, both ways, is
 *
 *   uint32 length   big-endian; counts the command byte and the data
 *   char   command  an SMFIC_* or SMFIR_* code
 *   char   data[length - 1]
 *
 * (the "LINK/PACKET PROTOCOL" section of milter-protocol.txt). This file
 * cuts a byte stream into frames and puts frames on it; codec.ts gives the
 * data of each command its meaning.
 */

export interface MilterFrame {
  /** The command or reply code (SMFIC_* / SMFIR_*). */
  readonly command: number;
  /** The data after the command byte. Owned by the receiver: the decoder never touches it again. */
  readonly data: Buffer;
}

/** The smallest length field: a command byte with no data. Zero would leave no command (Postfix: "bad packet length"). */
const FRAME_BYTES_MIN = 1;

function checkFrameBytesMax(frameBytesMax: number): void {
  if (!Number.isSafeInteger(frameBytesMax) || frameBytesMax < FRAME_BYTES_MIN || frameBytesMax > MILTER_FRAME_BYTES_MAX) {
    throw milterProtocolError(`a frame bound must be an integer from ${FRAME_BYTES_MIN} to ${MILTER_FRAME_BYTES_MAX} bytes, not ${String(frameBytesMax)}`);
  }
}

/**
 * One frame: the length, `command`, then `parts` back to back (one
 * allocation, whatever the number of parts). Refuses a frame whose length
 * field would exceed `frameBytesMax`: the peer would drop the connection
 * (libmilter answers an oversize frame by aborting), so it is better never
 * sent. Pass the negotiated bound (frameBytesMaxFor) once it is known.
 */
export function encodeFrame(command: number, parts: readonly Uint8Array[] = [], frameBytesMax: number = MILTER_FRAME_BYTES_MAX): Buffer {
  checkFrameBytesMax(frameBytesMax);
  // mfdef.h: "commands: don't use anything smaller than ' '"; above 0x7e is no code either side defines.
  if (!Number.isInteger(command) || command < 0x20 || command > 0x7e) throw milterProtocolError(`a command code must be a printable ASCII byte, not ${String(command)}`);
  let dataBytes = 0;
  for (const part of parts) dataBytes += part.length;
  const frameBytes = 1 + dataBytes;
  if (frameBytes > frameBytesMax) throw milterProtocolError(`a ${describeCode(command)} frame of ${frameBytes} bytes is over the ${frameBytesMax}-byte bound`);
  const frame = Buffer.allocUnsafe(MILTER_LENGTH_BYTES + frameBytes);
  frame.writeUInt32BE(frameBytes, 0);
  frame[MILTER_LENGTH_BYTES] = command;
  let at = MILTER_LENGTH_BYTES + 1;
  for (const part of parts) {
    frame.set(part, at);
    at += part.length;
  }
  return frame;
}

/**
 * Cuts a byte stream into frames, however the stream splits them: a chunk
 * may hold many frames, or a piece of one, down to a single byte of a
 * length field.
 *
 * Memory is bounded by one frame: a frame's buffer is allocated once its
 * length field has been read and checked against `frameBytesMax`, so a
 * peer announcing a 4 GiB frame is refused after 4 bytes, before anything
 * is buffered. After an error the stream is out of step for good (the
 * next length field cannot be found), so every later push throws the same
 * error, and frames completed earlier in the failing chunk are dropped
 * with it; the owner closes the connection.
 */
export class FrameDecoder {
  #frameBytesMax: number;
  /** The length field being read: bytes of it seen so far live here. */
  readonly #lengthField = Buffer.alloc(MILTER_LENGTH_BYTES);
  #lengthFilled = 0;
  /** The frame being filled (command byte + data), once its length is known and accepted. */
  #frame: Buffer | null = null;
  #frameFilled = 0;
  #failure: Error | null = null;

  constructor(frameBytesMax: number = MILTER_FRAME_BYTES_MAX) {
    checkFrameBytesMax(frameBytesMax);
    this.#frameBytesMax = frameBytesMax;
  }

  /** The largest length field accepted, in bytes. */
  get frameBytesMax(): number {
    return this.#frameBytesMax;
  }

  /**
   * Changes the bound, typically to the negotiated one (frameBytesMaxFor)
   * after SMFIC_OPTNEG. A frame already being filled keeps the bound it was
   * accepted under.
   */
  setFrameBytesMax(frameBytesMax: number): void {
    checkFrameBytesMax(frameBytesMax);
    this.#frameBytesMax = frameBytesMax;
  }

  /** Bytes held for a frame not complete yet (at most 4 + frameBytesMax). */
  get bufferedBytes(): number {
    return this.#lengthFilled + this.#frameFilled;
  }

  /** True between frames: the stream may end here without losing anything. */
  get atBoundary(): boolean {
    return this.#lengthFilled === 0 && this.#frame === null;
  }

  /** Takes the next bytes of the stream; returns the frames they complete, in order (often none or one). */
  push(chunk: Uint8Array): MilterFrame[] {
    if (this.#failure !== null) throw this.#failure;
    const frames: MilterFrame[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.#frame === null) {
        const take = Math.min(MILTER_LENGTH_BYTES - this.#lengthFilled, chunk.length - at);
        this.#lengthField.set(chunk.subarray(at, at + take), this.#lengthFilled);
        this.#lengthFilled += take;
        at += take;
        if (this.#lengthFilled < MILTER_LENGTH_BYTES) break;
        this.#startFrame(this.#lengthField.readUInt32BE(0));
        continue;
      }
      const frame = this.#frame;
      const take = Math.min(frame.length - this.#frameFilled, chunk.length - at);
      frame.set(chunk.subarray(at, at + take), this.#frameFilled);
      this.#frameFilled += take;
      at += take;
      if (this.#frameFilled === frame.length) {
        frames.push({ command: frame[0]!, data: frame.subarray(1) });
        this.#frame = null;
        this.#frameFilled = 0;
        this.#lengthFilled = 0;
      }
    }
    return frames;
  }

  /** The peer closed the stream: throws when that cut a frame short. */
  end(): void {
    if (this.#failure !== null) throw this.#failure;
    if (!this.atBoundary) {
      const expected = this.#frame === null ? 'its 4-byte length field' : `${this.#frame.length} bytes`;
      this.#fail(`the stream ended ${this.bufferedBytes} bytes into a frame (expected ${expected})`);
    }
  }

  #startFrame(frameBytes: number): void {
    if (frameBytes < FRAME_BYTES_MIN) this.#fail('a frame of length 0 has no command byte');
    // Refused before any allocation: the bound is what keeps a peer from making us buffer 4 GiB.
    if (frameBytes > this.#frameBytesMax) this.#fail(`a frame of ${frameBytes} bytes is over the ${this.#frameBytesMax}-byte bound`);
    this.#frame = Buffer.allocUnsafe(frameBytes);
    this.#frameFilled = 0;
  }

  #fail(message: string): never {
    this.#failure = milterProtocolError(message);
    this.#frame = null;
    throw this.#failure;
  }
}
