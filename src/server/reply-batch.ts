import type { Socket } from 'node:net';

/**
 * Holds the SMTP replies decided during one turn of the event loop and writes
 * them back to back at its end (setImmediate runs after the poll phase that
 * read the commands), as Redis writes its replies before it sleeps.
 *
 * Why: on a loopback or a virtual machine most of the cost of a reply's
 * write(2) is waking the client that sleeps on it. Written between the
 * commands of other connections, every reply woke a client that had gone back
 * to sleep; written together, the first wakes it and the rest find it awake.
 * Measured with smtp-source (20 connections, 1 KiB): the server's system time
 * per message with the native chain fell from 44-51 to 31-34 us (docs/benchmarks.md). A client that
 * pipelines gets its replies in one segment.
 *
 * Nothing is held past the turn: a reply waits at most for the other
 * connections' commands read in the same turn. end() writes held replies
 * first (Writable.end uncorks), and `release` writes them at once where the
 * socket is about to change hands (STARTTLS).
 */
export class ReplyBatch {
  /**
   * The sockets corked this turn. An array, and cork() itself says whether a
   * socket is held (nothing else corks these sockets): a Set cleared every
   * turn hashed each socket and made a new table, about 1.1 us per message
   * under smtp-source (CPU profile of the native chain).
   */
  #held: Socket[] = [];
  #scheduled = false;
  readonly #flush = (): void => {
    this.#scheduled = false;
    // A reply written while flushing (none today) holds its socket again for the next turn.
    const sockets = this.#held;
    this.#held = [];
    for (const socket of sockets) uncorkFully(socket);
  };

  /** Call before writing a reply to `socket`: the write is kept until the end of this turn. */
  hold(socket: Socket): void {
    if (socket.writableCorked > 0) return;
    socket.cork();
    this.#held.push(socket);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#flush);
    }
  }

  /** Writes what `socket` holds now (before a TLS upgrade takes its handle). */
  release(socket: Socket): void {
    const at = this.#held.indexOf(socket);
    if (at < 0) return;
    this.#held.splice(at, 1);
    uncorkFully(socket);
  }

  /** Sockets holding replies now (for tests). */
  get size(): number {
    return this.#held.length;
  }
}

function uncorkFully(socket: Socket): void {
  // Bounded: cork() was called once per hold, and nothing else corks these sockets.
  while (socket.writableCorked > 0) socket.uncork();
}
