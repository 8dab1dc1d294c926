import { connect, type Socket } from 'node:net';

/**
 * A raw SMTP client on a Node socket, for tests that need what nodemailer
 * will not do: bind a chosen local address (127.0.0.2), trickle bytes, or
 * pipeline a hundred RCPTs. Every wait is bounded.
 */
export class LineClient {
  readonly socket: Socket;
  readonly #replies: string[] = [];
  readonly #waiters: ((reply: string) => void)[] = [];
  #partial = '';
  #lines: string[] = [];
  #closedAt: number | null = null;
  readonly #closed: Promise<number>;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', () => undefined);
    this.#closed = new Promise((done) =>
      socket.once('close', () => {
        this.#closedAt = performance.now();
        done(this.#closedAt);
        // Anyone still waiting learns the connection is gone.
        for (const waiter of this.#waiters.splice(0)) waiter('CLOSED');
      }),
    );
  }

  /** Connects from `localAddress` (any 127.x.y.z is loopback on Linux). */
  static async open(port: number, localAddress = '127.0.0.1'): Promise<LineClient> {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    await new Promise<void>((done, fail) => {
      socket.once('connect', done);
      socket.once('error', fail);
    });
    return new LineClient(socket);
  }

  #onData(chunk: string): void {
    const text = this.#partial + chunk;
    const lines = text.split('\r\n');
    this.#partial = lines.pop()!;
    for (const line of lines) {
      this.#lines.push(line);
      // "250-..." continues a reply, "250 ..." ends it.
      if (/^\d{3}(?: |$)/.test(line)) {
        const reply = this.#lines.join('\n');
        this.#lines = [];
        const waiter = this.#waiters.shift();
        if (waiter) waiter(reply);
        else this.#replies.push(reply);
      }
    }
  }

  /** The next complete reply, "CLOSED" when the server closed first, or a rejection after `timeoutMs`. */
  next(timeoutMs = 10_000): Promise<string> {
    const queued = this.#replies.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.#closedAt !== null) return Promise.resolve('CLOSED');
    return new Promise((done, fail) => {
      const timer = setTimeout(() => {
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        fail(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (reply: string): void => {
        clearTimeout(timer);
        done(reply);
      };
      this.#waiters.push(waiter);
    });
  }

  /** Sends a command line and returns its reply. */
  async command(line: string, timeoutMs?: number): Promise<string> {
    this.socket.write(`${line}\r\n`);
    return this.next(timeoutMs);
  }

  write(raw: string): void {
    if (!this.socket.destroyed) this.socket.write(raw);
  }

  get isClosed(): boolean {
    return this.#closedAt !== null;
  }

  /** Resolves with performance.now() at close, or rejects after `timeoutMs`. */
  closed(timeoutMs = 15_000): Promise<number> {
    return Promise.race([this.#closed, new Promise<number>((_, fail) => setTimeout(() => fail(new Error(`still open after ${timeoutMs} ms`)), timeoutMs).unref())]);
  }

  destroy(): void {
    this.socket.destroy();
  }
}
