/** A new buffer's size is rounded up to one of this many sizes per doubling (at most 1/16 = 6.25% more than asked). */
export const BUFFER_SIZES_PER_DOUBLING = 16;
/** ...and to a multiple of this (bytes). */
export const BUFFER_GRANULARITY_BYTES_MIN = 64 * 1024;

/**
 * The size a new body buffer gets for `bytes`: rounded up, so that a spare
 * serves the next message of about the same size. Exact sizes made a spare
 * useless for a message a few bytes longer (smtp-source's 20 MiB messages
 * differ by 4 bytes), and a second 20 MiB buffer was allocated while the
 * first sat in the spares.
 */
export function bufferSize(bytes: number): number {
  const granularity = Math.max(BUFFER_GRANULARITY_BYTES_MIN, 2 ** Math.floor(Math.log2(Math.max(bytes, 1))) / BUFFER_SIZES_PER_DOUBLING);
  return Math.ceil(bytes / granularity) * granularity;
}

/**
 * Bytes of message bodies the server may hold in memory at once for the
 * hooks that carry message_body. A large message is read back from its
 * spool file for those hooks only while the budget allows, so 20 clients
 * sending 20 MB each do not make the server hold 400 MB: the others wait
 * their turn (in arrival order). A message larger than the whole budget
 * runs alone.
 */
export class MemoryBudget {
  readonly bytesMax: number;
  #held = 0;
  /**
   * Buffers given back, kept for the next large body (at most bytesMax in
   * all): a fresh 20 MB Buffer per message would be freed only at the next
   * full GC, so RSS would carry several dead bodies at once.
   */
  readonly #spare: Buffer[] = [];
  #spareBytes = 0;
  readonly #waiting: { bytes: number; grant: () => void }[] = [];

  constructor(bytesMax: number) {
    this.bytesMax = bytesMax;
  }

  /** Bytes granted now. */
  get held(): number {
    return this.#held;
  }

  /** Resolves with the release function once `bytes` fit (at once when they do and nobody waits). */
  acquire(bytes: number): Promise<() => void> {
    const take = Math.min(bytes, this.bytesMax);
    return new Promise((resolve) => {
      const grant = (): void => {
        this.#held += take;
        let released = false;
        resolve(() => {
          if (released) return;
          released = true;
          this.#held -= take;
          this.#wake();
        });
      };
      if (this.#waiting.length === 0 && this.#held + take <= this.bytesMax) grant();
      else this.#waiting.push({ bytes: take, grant });
    });
  }

  /** A buffer of at least `bytes`: a spare one when one fits (the smallest such), else a new one of bufferSize(bytes). Use only while holding a grant. */
  buffer(bytes: number): Buffer {
    let best = -1;
    for (const [index, spare] of this.#spare.entries()) {
      if (spare.length >= bytes && (best < 0 || spare.length < this.#spare[best]!.length)) best = index;
    }
    if (best < 0) return Buffer.allocUnsafeSlow(bufferSize(bytes));
    const [taken] = this.#spare.splice(best, 1);
    this.#spareBytes -= taken!.length;
    return taken!;
  }

  /** Keeps a buffer from buffer() for reuse, dropping the smallest spares past bytesMax. */
  recycle(buffer: Buffer): void {
    if (buffer.length > this.bytesMax) return;
    this.#spare.push(buffer);
    this.#spareBytes += buffer.length;
    this.#spare.sort((a, b) => b.length - a.length);
    while (this.#spareBytes > this.bytesMax) this.#spareBytes -= this.#spare.pop()!.length;
  }

  #wake(): void {
    while (this.#waiting.length > 0 && this.#held + this.#waiting[0]!.bytes <= this.bytesMax) this.#waiting.shift()!.grant();
  }
}
