import { mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, hasCommand } from '../../helpers/server.js';
import { startService, type Service } from './process.js';

/** A RESP reply: integer, simple or bulk string, null, array, or a server error. */
export type RespValue = number | string | null | RespValue[] | RespError;

export class RespError extends Error {}

/** Replies bigger than this are refused: the tests read counters, not data. */
const REPLY_BYTES_MAX = 64 * 1024;

/** Parses one reply at `at`; undefined when `buf` holds only part of it. */
function parseReply(buf: Buffer, at: number): { value: RespValue; next: number } | undefined {
  const end = buf.indexOf('\r\n', at);
  if (end < 0) return undefined;
  const line = buf.toString('utf8', at + 1, end);
  const after = end + 2;
  switch (String.fromCharCode(buf[at]!)) {
    case ':':
      return { value: Number(line), next: after };
    case '+':
      return { value: line, next: after };
    case '-':
      return { value: new RespError(line), next: after };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, next: after };
      if (buf.length < after + length + 2) return undefined;
      return { value: buf.toString('utf8', after, after + length), next: after + length + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, next: after };
      const items: RespValue[] = [];
      let next = after;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, next);
        if (item === undefined) return undefined;
        items.push(item.value);
        next = item.next;
      }
      return { value: items, next };
    }
    default:
      throw new Error(`not a RESP reply: ${JSON.stringify(buf.toString('utf8', at, Math.min(buf.length, at + 40)))}`);
  }
}

function encodeCommand(args: readonly string[]): Buffer {
  const parts = [`*${args.length}\r\n`];
  for (const arg of args) parts.push(`$${Buffer.byteLength(arg)}\r\n${arg}\r\n`);
  return Buffer.from(parts.join(''));
}

/**
 * Sends one command to the Redis at 127.0.0.1:`port` on a connection of its
 * own and returns the reply (a server error comes back as a RespError value,
 * not thrown), bounded by `timeoutMs`.
 */
export function redisCommand(port: number, args: readonly string[], timeoutMs = 2_000): Promise<RespValue> {
  return new Promise((done, fail) => {
    const client = connect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    const finish = (error: Error | undefined, value?: RespValue): void => {
      clearTimeout(timer);
      client.destroy();
      if (error) fail(error);
      else done(value ?? null);
    };
    const timer = setTimeout(() => finish(new Error(`redis on port ${port} did not answer ${args[0]} within ${timeoutMs} ms`)), timeoutMs);
    client.on('connect', () => client.write(encodeCommand(args)));
    client.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > REPLY_BYTES_MAX) return finish(new Error(`redis reply to ${args[0]} is over ${REPLY_BYTES_MAX} bytes`));
      try {
        const reply = parseReply(buf, 0);
        if (reply !== undefined) finish(undefined, reply.value);
      } catch (error) {
        finish(error as Error);
      }
    });
    client.on('error', (error) => finish(error));
    client.on('end', () => finish(new Error(`redis closed the connection before answering ${args[0]}`)));
  });
}

export function redisAvailable(): boolean {
  return hasCommand('redis-server');
}

/**
 * A real redis-server on 127.0.0.1, in a temporary folder, persisting
 * nothing. It can be stopped and started again on the same port, to play a
 * Redis that goes down and comes back.
 */
export interface Redis {
  readonly port: number;
  /** "tcp:127.0.0.1:PORT": the plugin's `redis` setting and its allow_connect grant. */
  readonly address: string;
  readonly dir: string;
  readonly running: boolean;
  /** One command on a fresh connection (see redisCommand). */
  command(...args: string[]): Promise<RespValue>;
  /** Starts redis-server again on the same port (after stop); its data is gone. */
  start(): Promise<void>;
  /** SIGTERM by PID; resolves when the process has exited. */
  stop(): Promise<void>;
}

export async function startRedis(options: { port?: number } = {}): Promise<Redis> {
  const dir = mkdtempSync(join(tmpdir(), 'redis-'));
  const port = options.port ?? (await freePort());
  // Foreground (no --daemonize), nothing written to disk, loopback only.
  const args = ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir];
  let service: Service | undefined;
  const launch = async (): Promise<void> => {
    service = await startService('redis-server', args, async () => (await redisCommand(port, ['PING'], 500)) === 'PONG', { cwd: dir });
  };
  await launch();
  return {
    port,
    address: `tcp:127.0.0.1:${port}`,
    dir,
    get running() {
      return service !== undefined;
    },
    command: (...command) => redisCommand(port, command),
    async start() {
      if (service !== undefined) throw new Error('redis-server is already running');
      await launch();
    },
    async stop() {
      const running = service;
      service = undefined;
      await running?.stop();
    },
  };
}
