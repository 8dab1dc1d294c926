import { once } from 'node:events';
import { mkdtempSync, readFileSync } from 'node:fs';
import type { AddressInfo, Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { ClientLimits } from '../../src/server/client-limits.js';
import { HookedSMTPServer, type CommandGate } from '../../src/server/hooked-smtp-server.js';
import { LineClient } from '../helpers/smtp-client.js';
import { selfSigned } from '../helpers/tls.js';

const LIMITS: ClientLimits = { commandTimeoutMs: 1500, dataTimeoutMs: 10_000, minDataRateBytesPerS: 500, maxClientsPerIp: 3, maxClientsPerIpExceptions: [] };
const OPEN_GATE: CommandGate = { active: () => false, check: async () => undefined };

async function listen(smtp: HookedSMTPServer): Promise<number> {
  smtp.on('error', () => undefined);
  smtp.listen(0, '127.0.0.1');
  const server = (smtp as unknown as { server: Server }).server;
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

describe('HookedSMTPServer: the smtp-server internals it relies on (pinned 3.21.6)', () => {
  it('still has the connection and parser methods it overrides or wraps', () => {
    const connection = SMTPConnection.prototype as unknown as Record<string, unknown>;
    for (const method of ['_onCommand', '_sendGreeting', '_createParser', '_onClose', 'close', 'send', '_redactCredentials', 'init', '_parseAddressCommand', '_getHandler']) {
      expect(typeof connection[method], method).toBe('function');
    }
    const parser = new SMTPStream() as unknown as Record<string, unknown>;
    for (const method of ['_write', '_endDataMode', 'continue', 'startDataMode']) expect(typeof parser[method], method).toBe('function');
    expect(parser._dataMode).toBe(false);
    expect(JSON.parse(readFileSync(new URL('../../node_modules/smtp-server/package.json', import.meta.url), 'utf8')).version).toBe('3.21.6');
  });

  it('keeps smtp-server\'s idle socketTimeout just past command_timeout_ms, so it never cuts first', () => {
    const smtp = new HookedSMTPServer({ logger: false, socketTimeout: 10 }, OPEN_GATE, LIMITS);
    expect((smtp as unknown as { options: { socketTimeout: number } }).options.socketTimeout).toBe(2500);
  });
});

describe('HookedSMTPServer with limits', () => {
  const servers: HookedSMTPServer[] = [];
  const clients: LineClient[] = [];
  afterEach(async () => {
    for (const client of clients.splice(0)) client.destroy();
    for (const smtp of servers.splice(0)) await new Promise<void>((done) => smtp.close(() => done()));
  });

  async function start(gate: CommandGate = OPEN_GATE, options: ConstructorParameters<typeof HookedSMTPServer>[0] = {}, limits: ClientLimits = LIMITS): Promise<{ smtp: HookedSMTPServer; port: number }> {
    const smtp = new HookedSMTPServer({ logger: false, disableReverseLookup: true, authOptional: true, ...options }, gate, limits);
    servers.push(smtp);
    return { smtp, port: await listen(smtp) };
  }

  it('passes commands through the gate, and a refused command still leaves the deadline running', async () => {
    const gate: CommandGate = { active: () => true, check: async (_session, command) => (command === 'VRFY' ? { code: 550, text: '5.7.1 No VRFY here' } : undefined) };
    const { port } = await start(gate);
    const client = await LineClient.open(port);
    clients.push(client);
    expect(await client.next()).toMatch(/^220 /);
    expect(await client.command('VRFY root')).toBe('550 5.7.1 No VRFY here');
    const refused = performance.now();
    expect(await client.command('NOOP')).toMatch(/^250/);
    expect(await client.next(4000)).toMatch(/^421 4\.4\.2 .* Error: timeout exceeded$/);
    expect((await client.closed()) - refused).toBeLessThan(3000);
  });

  it('looks command handlers up as smtp-server does: made-up and disabled commands refused, known ones served, addresses parsed', async () => {
    const { port } = await start(OPEN_GATE, { disabledCommands: ['STARTTLS'] });
    const client = await LineClient.open(port);
    clients.push(client);
    expect(await client.next()).toMatch(/^220 /);
    expect(await client.command('HELO client.example')).toMatch(/^250 /);
    // Made-up names, many of them: each is refused, and none turns into a handler later.
    for (const name of ['FOO', 'constructor', '__proto__', 'HANDLER_MAIL', 'MAIL2']) expect(await client.command(name)).toMatch(/^500 /);
    expect(await client.command('STARTTLS')).toMatch(/^500 /);
    expect(await client.command('MAIL FROM:<a..b@example.com>')).toMatch(/^501 /);
    expect(await client.command('MAIL FROM:<a@example.com>')).toMatch(/^250 /);
    expect(await client.command('RCPT TO:<b@xn--bcher-kva.example>')).toMatch(/^250 /);
    expect(await client.command('rcpt to:<c@Example.ORG>')).toMatch(/^250 /);
  });

  it('frees every per-IP slot when its connection ends, however it ends', async () => {
    const { smtp, port } = await start();
    const cut: string[] = [];
    smtp.on('limit', (event: { reason: string }) => cut.push(event.reason));
    const a = await LineClient.open(port);
    const b = await LineClient.open(port);
    const c = await LineClient.open(port);
    const d = await LineClient.open(port);
    clients.push(a, b, c, d);
    expect(await Promise.all([a, b, c].map((client) => client.next()))).toEqual(expect.arrayContaining([expect.stringMatching(/^220 /)]));
    expect(await d.next()).toBe('421 4.7.0 Too many connections from your address');
    expect(smtp.slots.held('127.0.0.1')).toBe(3);
    expect(await a.command('QUIT')).toMatch(/^221/); // QUIT
    b.destroy(); // reset by the client
    await Promise.all([a.closed(), b.closed(), c.closed(4000)]); // c: cut by the deadline
    for (let i = 0; i < 20 && smtp.slots.clients > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(smtp.slots.clients).toBe(0);
    expect(cut).toEqual(['max_clients_per_ip', 'command_timeout']);
  });

  it('does not cap clients in maxClientsPerIpExceptions, and caps the others', async () => {
    const { smtp, port } = await start(OPEN_GATE, {}, { ...LIMITS, maxClientsPerIpExceptions: ['127.0.0.1/32'] });
    const trusted = await Promise.all(Array.from({ length: 5 }, () => LineClient.open(port, '127.0.0.1')));
    const other = await Promise.all(Array.from({ length: 4 }, () => LineClient.open(port, '127.0.0.2')));
    clients.push(...trusted, ...other);
    expect(await Promise.all(trusted.map((client) => client.next()))).toEqual(Array(5).fill(expect.stringMatching(/^220 /)));
    const replies = await Promise.all(other.map((client) => client.next()));
    expect(replies.filter((reply) => reply.startsWith('220 '))).toHaveLength(3);
    expect(replies).toContain('421 4.7.0 Too many connections from your address');
    expect([smtp.slots.held('127.0.0.1'), smtp.slots.held('127.0.0.2')]).toEqual([0, 3]);
  });

  it('runs the deadlines on the parser STARTTLS installs: DATA at a good rate passes, the next command is due after the reply', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hooked-tls-'));
    const pem = selfSigned(dir);
    const { port } = await start(OPEN_GATE, { key: readFileSync(pem.key), cert: readFileSync(pem.cert) });
    const client = await LineClient.open(port);
    clients.push(client);
    expect(await client.next()).toMatch(/^220 /);
    expect(await client.command('EHLO tls.example')).toMatch(/STARTTLS/);
    expect(await client.command('STARTTLS')).toMatch(/^220/);
    client.socket.removeAllListeners('data');
    const secure = tlsConnect({ socket: client.socket, rejectUnauthorized: false });
    await once(secure, 'secureConnect');
    const started = performance.now();
    let received = '';
    secure.setEncoding('latin1');
    secure.on('data', (chunk: string) => (received += chunk));
    secure.on('error', () => undefined);
    const reply = async (pattern: RegExp, timeoutMs = 3000): Promise<void> => {
      for (let waited = 0; !pattern.test(received) && waited < timeoutMs; waited += 20) await new Promise((r) => setTimeout(r, 20));
      expect(received).toMatch(pattern);
    };
    secure.write('EHLO tls.example\r\nMAIL FROM:<a@tls.example>\r\nRCPT TO:<b@tls.example>\r\nDATA\r\n');
    await reply(/^354/m);
    // 3 s of DATA at 3.3 KB/s: twice command_timeout_ms, but fast enough, so it
    // must not be cut; only a deadline that sees these bytes lets it through.
    for (let i = 0; i < 10; i++) {
      secure.write(`${'x'.repeat(998)}\r\n`);
      await new Promise((r) => setTimeout(r, 300));
    }
    secure.write('.\r\n');
    await reply(/^250 .*\r\n/m);
    expect(received).not.toMatch(/421/);
    // After the reply the next command is due: a line trickled a byte every 700 ms is cut.
    const ready = performance.now();
    for (const byte of 'QUIT\r\n') {
      if (secure.destroyed || received.includes('421')) break;
      secure.write(byte);
      await new Promise((r) => setTimeout(r, 700));
    }
    await reply(/421 4\.4\.2 .* Error: timeout exceeded/);
    expect(performance.now() - ready).toBeLessThan(3000);
    expect(performance.now() - started).toBeGreaterThan(3000);
    secure.destroy();
  });
});
