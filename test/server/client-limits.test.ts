import { readdirSync } from 'node:fs';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { ClientSlots, ConnectionDeadline, type ClientLimits, type DeadlineReason } from '../../src/server/client-limits.js';
import { MailServer } from '../../src/server/mail-server.js';
import { serverRoot } from '../helpers/server.js';
import { LineClient } from '../helpers/smtp-client.js';

const LIMITS: ClientLimits = { commandTimeoutMs: 4000, dataTimeoutMs: 60_000, minDataRateBytesPerS: 500, maxClientsPerIp: 5, maxClientsPerIpExceptions: [] };

describe('ClientSlots', () => {
  it('counts connections per IP, refuses past the cap and frees a slot once', () => {
    const slots = new ClientSlots(2);
    const a = slots.acquire('127.0.0.1')!;
    const b = slots.acquire('127.0.0.1')!;
    expect(slots.acquire('127.0.0.1')).toBeNull();
    expect(slots.acquire('127.0.0.2')).not.toBeNull();
    a();
    a();
    expect(slots.held('127.0.0.1')).toBe(1);
    expect(slots.acquire('127.0.0.1')).not.toBeNull();
    b();
    expect(slots.clients).toBe(2);
    expect(() => new ClientSlots(0)).toThrow(RangeError);
  });
});

describe('ConnectionDeadline', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  function deadline(limits: Partial<ClientLimits> = {}): { deadline: ConnectionDeadline; expired: DeadlineReason[] } {
    vi.useFakeTimers();
    const expired: DeadlineReason[] = [];
    return { deadline: new ConnectionDeadline({ ...LIMITS, ...limits }, (reason) => expired.push(reason), () => Date.now()), expired };
  }

  it('cuts a command line that is not complete within command_timeout_ms, however it trickles', () => {
    const { deadline: d, expired } = deadline();
    d.awaitCommand();
    vi.advanceTimersByTime(3999);
    expect(expired).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(expired).toEqual(['command_timeout']);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('runs no deadline while the server works, and restarts it for the next command', () => {
    const { deadline: d, expired } = deadline();
    d.awaitCommand();
    vi.advanceTimersByTime(3000);
    d.commandReceived();
    vi.advanceTimersByTime(60_000);
    d.awaitCommand();
    vi.advanceTimersByTime(3999);
    expect(expired).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(expired).toEqual(['command_timeout']);
  });

  it('in DATA, lets bytes buy time at min_data_rate, never more than command_timeout_ms ahead', () => {
    const { deadline: d, expired } = deadline();
    d.awaitData();
    // One byte every 3 s buys 2 ms each: cut at about 4 s.
    for (let i = 0; i < 5 && expired.length === 0; i++) {
      vi.advanceTimersByTime(3000);
      d.dataReceived(1);
    }
    expect(expired).toEqual(['data_too_slow']);

    const fast = deadline();
    fast.deadline.awaitData();
    // 10 kB at once buys 20 s, but the deadline stays within 4 s of now.
    fast.deadline.dataReceived(10_000);
    vi.advanceTimersByTime(4000);
    expect(fast.expired).toEqual(['data_too_slow']);
  });

  it('cuts DATA at data_timeout_ms even at a good rate, and ends with the final dot', () => {
    const { deadline: d, expired } = deadline({ dataTimeoutMs: 10_000 });
    d.awaitData();
    for (let i = 0; i < 30 && expired.length === 0; i++) {
      vi.advanceTimersByTime(1000);
      d.dataReceived(1000);
    }
    expect(expired).toEqual(['data_timeout']);
    expect(vi.getTimerCount()).toBe(0);

    const done = deadline();
    done.deadline.awaitData();
    done.deadline.dataReceived(100);
    done.deadline.dataEnded();
    vi.advanceTimersByTime(120_000);
    expect(done.expired).toEqual([]);
  });

  it('with a rate of 0, allows command_timeout_ms between reads', () => {
    const { deadline: d, expired } = deadline({ minDataRateBytesPerS: 0 });
    d.awaitData();
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(3900);
      d.dataReceived(1);
    }
    expect(expired).toEqual([]);
    vi.advanceTimersByTime(4000);
    expect(expired).toEqual(['data_too_slow']);
  });

  it('stops for good when disposed, leaving no timer behind', () => {
    const { deadline: d, expired } = deadline();
    d.awaitCommand();
    d.dispose();
    d.awaitCommand();
    d.awaitData();
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(120_000);
    expect(expired).toEqual([]);
    expect(d.phase).toBe('closed');
  });
});

/** A MailServer on a free loopback port with `server` appended to [server]. */
async function startServer(server: string): Promise<{ server: MailServer; port: number; root: ReturnType<typeof serverRoot>; logs: string[] }> {
  const root = serverRoot({ server: `max_clients = 100\n${server}` });
  const logs: string[] = [];
  const mail = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void logs.push(line) }));
  const port = await mail.start();
  return { server: mail, port, root, logs };
}

/** A client that completes a whole transaction, as a well-behaved peer would. */
async function transaction(port: number, localAddress = '127.0.0.1'): Promise<string> {
  const client = await LineClient.open(port, localAddress);
  try {
    expect(await client.next()).toMatch(/^220 /);
    expect(await client.command('EHLO good.example')).toMatch(/^250/);
    expect(await client.command('MAIL FROM:<a@good.example>')).toMatch(/^250/);
    expect(await client.command('RCPT TO:<b@mx.test>')).toMatch(/^250/);
    expect(await client.command('DATA')).toMatch(/^354/);
    return await client.command('Subject: hi\r\n\r\nhello\r\n.');
  } finally {
    client.destroy();
  }
}

/**
 * Opens a connection from `localAddress` until it is greeted: a slot is freed
 * when the server sees the socket close, a moment after the client does.
 * Bounded: 20 tries, 100 ms apart.
 */
async function greeted(port: number, localAddress: string): Promise<LineClient> {
  for (let attempt = 0; ; attempt++) {
    const client = await LineClient.open(port, localAddress);
    const reply = await client.next();
    if (reply.startsWith('220 ')) return client;
    client.destroy();
    if (attempt >= 20) throw new Error(`still refused after ${attempt} tries: ${reply}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Sends `text` one byte every `intervalMs` until the connection closes (bounded by the text). */
async function trickle(client: LineClient, text: string, intervalMs: number): Promise<void> {
  for (const byte of text) {
    if (client.isClosed) return;
    client.write(byte);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

describe('slow clients against a real server (command_timeout_ms = 4000, 500 B/s, 5 per IP, loopback not exempt)', () => {
  let running: Awaited<ReturnType<typeof startServer>>;
  const clients: LineClient[] = [];

  beforeAll(async () => {
    // Loopback is in relay_networks, which the cap exempts by default (as Postfix exempts $mynetworks): not here.
    running = await startServer('command_timeout_ms = 4000\ndata_timeout_ms = 60000\nmin_data_rate_bytes_per_s = 500\nmax_clients_per_ip = 5\nmax_clients_per_ip_exceptions = []\n');
  });
  afterEach(() => {
    for (const client of clients.splice(0)) client.destroy();
  });
  afterAll(async () => {
    await running?.server.stop();
  });

  it('cuts a client trickling a command one byte every 3 s within the limit, while another gets 250', async () => {
    const slow = await LineClient.open(running.port);
    clients.push(slow);
    expect(await slow.next()).toMatch(/^220 /);
    const greeted = performance.now();
    const trickling = trickle(slow, 'EHLO slow.example\r\n', 3000);
    expect(await transaction(running.port)).toMatch(/^250 2\.0\.0 Ok: queued as /);
    expect(await slow.next(8000)).toBe('421 4.4.2 mx.test Error: timeout exceeded');
    const closedAt = await slow.closed(7000);
    const cutAfter = closedAt - greeted;
    // 4 s limit: cut at 4 s (never at 3 s, the next byte's time, nor at 60 s, smtp-server's idle default).
    expect(cutAfter).toBeGreaterThan(3900);
    expect(cutAfter).toBeLessThan(5500);
    await trickling;
    expect(running.logs.join('')).toMatch(/"reason":"command_timeout","remote_ip":"127\.0\.0\.1".*client limit: connection refused or cut/);
  });

  it('cuts a message trickling one byte every 3 s after the 354, and keeps nothing of it', async () => {
    const slow = await LineClient.open(running.port);
    clients.push(slow);
    expect(await slow.next()).toMatch(/^220 /);
    await slow.command('EHLO slow.example');
    await slow.command('MAIL FROM:<slow@slow.example>');
    await slow.command('RCPT TO:<b@mx.test>');
    expect(await slow.command('DATA')).toMatch(/^354/);
    const started = performance.now();
    const spooled = readdirSync(running.root.spool).length;
    const trickling = trickle(slow, 'Subject: slow\r\n\r\nthis will never end\r\n.\r\n', 3000);
    expect(await slow.next(8000)).toBe('421 4.4.2 mx.test Error: timeout exceeded');
    const cutAfter = (await slow.closed(7000)) - started;
    // 4 s, plus 2 ms per byte sent at 500 B/s.
    expect(cutAfter).toBeGreaterThan(3900);
    expect(cutAfter).toBeLessThan(5500);
    await trickling;
    expect(readdirSync(running.root.spool).length).toBe(spooled);
    expect(running.logs.join('')).toMatch(/"reason":"data_too_slow"/);
  });

  it('answers the sixth connection from one IP 421 4.7.0, does not lock out another IP, and frees slots as connections end', async () => {
    const flood: LineClient[] = [];
    for (let i = 0; i < 20; i++) flood.push(await LineClient.open(running.port, '127.0.0.1'));
    clients.push(...flood);
    const first = await Promise.all(flood.map((client) => client.next(5000)));
    expect(first.filter((reply) => reply.startsWith('220 '))).toHaveLength(5);
    expect(first.filter((reply) => reply === '421 4.7.0 Too many connections from your address')).toHaveLength(15);
    const admitted = flood.filter((_, i) => first[i]!.startsWith('220 '));
    await Promise.all(flood.filter((client) => !admitted.includes(client)).map((client) => client.closed(7000)));
    // The five held slots keep 127.0.0.1 out, but 127.0.0.2 is another client.
    expect(await (await LineClient.open(running.port, '127.0.0.1').then((c) => (clients.push(c), c))).next()).toBe('421 4.7.0 Too many connections from your address');
    expect(await transaction(running.port, '127.0.0.2')).toMatch(/^250 2\.0\.0 Ok: queued as /);
    // A client that goes away frees its slot...
    admitted[0]!.destroy();
    await admitted[0]!.closed();
    clients.push(await greeted(running.port, '127.0.0.1'));
    // ...and so does one the deadline cuts (they send nothing: 4 s after the greeting).
    await Promise.all(admitted.slice(1).map((client) => client.closed(8000)));
    const after = await greeted(running.port, '127.0.0.1');
    clients.push(after);
    expect(await after.command('EHLO good.example')).toMatch(/^250/);
    expect(running.logs.join('')).toMatch(/"reason":"max_clients_per_ip","remote_ip":"127\.0\.0\.1"/);
  });
});

describe('data_timeout_ms against a real server', () => {
  let running: Awaited<ReturnType<typeof startServer>>;
  afterAll(async () => {
    await running?.server.stop();
  });

  it('cuts a message that keeps a good rate but does not end within data_timeout_ms', async () => {
    running = await startServer('command_timeout_ms = 2000\ndata_timeout_ms = 3000\nmin_data_rate_bytes_per_s = 500\n');
    const client = await LineClient.open(running.port);
    try {
      expect(await client.next()).toMatch(/^220 /);
      await client.command('EHLO steady.example');
      await client.command('MAIL FROM:<a@steady.example>');
      await client.command('RCPT TO:<b@mx.test>');
      expect(await client.command('DATA')).toMatch(/^354/);
      const started = performance.now();
      // 1000 bytes every 500 ms: 2000 B/s, four times the minimum rate, for at most 10 s.
      for (let i = 0; i < 20 && !client.isClosed; i++) {
        client.write(`${'x'.repeat(998)}\r\n`);
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(await client.next(1000)).toBe('421 4.4.2 mx.test Error: timeout exceeded');
      const cutAfter = (await client.closed(7000)) - started;
      expect(cutAfter).toBeGreaterThan(2900);
      expect(cutAfter).toBeLessThan(4500);
      expect(running.logs.join('')).toMatch(/"reason":"data_timeout"/);
    } finally {
      client.destroy();
    }
  });
});
