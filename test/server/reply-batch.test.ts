import { createServer, connect, type Socket, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ReplyBatch } from '../../src/server/reply-batch.js';

/** A loopback pair: `server` is the accepted socket (the one replies are written to), `chunks` what the client read. */
async function pair(): Promise<{ listener: Server; server: Socket; client: Socket; chunks: string[] }> {
  const listener = createServer();
  await new Promise<void>((done) => listener.listen(0, '127.0.0.1', done));
  const accepted = new Promise<Socket>((done) => listener.once('connection', done));
  const client = connect((listener.address() as { port: number }).port, '127.0.0.1');
  const chunks: string[] = [];
  client.on('data', (chunk: Buffer) => chunks.push(chunk.toString()));
  await new Promise((done) => client.once('connect', done));
  return { listener, server: await accepted, client, chunks };
}

const turn = (): Promise<void> => new Promise((done) => setImmediate(done));
async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((done) => setTimeout(done, 5));
}

const opened: Array<{ listener: Server; server: Socket; client: Socket }> = [];

/** A loopback pair closed after the test, and a batch to hold its replies. */
async function batched(): Promise<Awaited<ReturnType<typeof pair>> & { batch: ReplyBatch }> {
  const p = await pair();
  opened.push(p);
  return { ...p, batch: new ReplyBatch() };
}
afterEach(() => {
  for (const { listener, server, client } of opened.splice(0)) {
    client.destroy();
    server.destroy();
    listener.close();
  }
});

describe('ReplyBatch', () => {
  it('writes the replies of one turn together at its end, and nothing before', async () => {
    const p = await batched();
    const { batch } = p;
    batch.hold(p.server);
    p.server.write('250 2.1.0 Accepted\r\n');
    batch.hold(p.server);
    p.server.write('250 2.1.5 Accepted\r\n');
    expect(p.server.writableLength).toBe(40); // held in the socket, not yet given to the kernel
    expect(batch.size).toBe(1);
    await turn();
    expect(batch.size).toBe(0);
    expect(p.server.writableCorked).toBe(0);
    await until(() => p.chunks.join('').length === 40);
    // One write: the client read both lines in one chunk.
    expect(p.chunks).toEqual(['250 2.1.0 Accepted\r\n250 2.1.5 Accepted\r\n']);
  });

  it('release writes at once (before STARTTLS hands the socket over); end() writes what is held', async () => {
    const p = await batched();
    const { batch } = p;
    batch.hold(p.server);
    p.server.write('220 2.0.0 Ready to start TLS\r\n');
    batch.release(p.server);
    expect(p.server.writableCorked).toBe(0);
    expect(batch.size).toBe(0);
    await until(() => p.chunks.length > 0);
    expect(p.chunks.join('')).toBe('220 2.0.0 Ready to start TLS\r\n');

    batch.hold(p.server);
    p.server.write('221 2.0.0 Bye\r\n');
    p.server.end();
    await until(() => p.chunks.join('').includes('221'));
    expect(p.chunks.join('')).toBe('220 2.0.0 Ready to start TLS\r\n221 2.0.0 Bye\r\n');
    await turn(); // the scheduled flush finds the ended socket and leaves it alone
    expect(batch.size).toBe(0);
  });

  it('a socket destroyed while holding replies is dropped from the batch without an error', async () => {
    const p = await batched();
    const { batch } = p;
    batch.hold(p.server);
    p.server.write('250 2.0.0 Ok\r\n');
    p.server.destroy();
    await turn();
    expect(batch.size).toBe(0);
    expect(p.chunks).toEqual([]);
  });
});
