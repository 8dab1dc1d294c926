import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { describe, expect, it } from 'vitest';
import { parseSimpleAddress } from '../../src/server/simple-address.js';

/** smtp-server's own parser, as a connection with default options calls it. */
const engine = SMTPConnection.prototype._parseAddressCommand;
const connection = { id: 'test', session: {}, _server: { options: {}, logger: { error: () => undefined } } };
const smtpServer = (name: string, line: string): unknown => engine.call(connection as unknown as SMTPConnection, name, Buffer.from(line, 'utf8'));

const TAKEN = [
  'MAIL FROM:<foo@example.com>',
  'mail from:<Foo.Bar+tag@Sub.Example.COM>',
  'RCPT TO:<a@b>',
  "RCPT TO:<!#$%&'*+/=?^_`{|}~-@x-y.z9>",
  `MAIL FROM:<${'l'.repeat(64)}@${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(59)}>`,
];

const LEFT_TO_THE_ENGINE = [
  'MAIL FROM:<>',
  'MAIL FROM:<foo@example.com> SIZE=100',
  'MAIL FROM: <foo@example.com>',
  'MAIL  FROM:<foo@example.com>',
  'RCPT TO:<postmaster>',
  'RCPT TO:<@relay.example:foo@example.com>',
  'RCPT TO:<"quoted"@example.com>',
  'RCPT TO:<foo@[127.0.0.1]>',
  'RCPT TO:<foo@xn--bcher-kva.example>',
  'RCPT TO:<foo@XN--bcher-kva.example>',
  'RCPT TO:<foo@bücher.example>',
  'RCPT TO:<.foo@example.com>',
  'RCPT TO:<foo.@example.com>',
  'RCPT TO:<fo..o@example.com>',
  'RCPT TO:<foo@exa-.mple.com>',
  'RCPT TO:<foo@exa.-mple.com>',
  'RCPT TO:<foo@example.com.>',
  'RCPT TO:<foo@@example.com>',
  'RCPT TO:foo@example.com',
  'MAIL FROM:<foo@example.com>',
  `MAIL FROM:<${'l'.repeat(64)}@${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(61)}>`,
  'RCPT TO:<ſ@example.com>',
  'RCPT TO:<foo@\u212Aelvin.example>',
];

describe('parseSimpleAddress', () => {
  it('answers the simple lines exactly as smtp-server does', () => {
    for (const line of TAKEN) {
      const name = line.startsWith('R') || line.startsWith('r') ? 'rcpt to' : 'mail from';
      const simple = parseSimpleAddress(name, line);
      expect(simple, line).toBeDefined();
      expect(simple, line).toEqual(smtpServer(name, line));
    }
  });

  it('leaves every other line to smtp-server (parameters, routes, literals, IDN, what it refuses)', () => {
    for (const line of LEFT_TO_THE_ENGINE) {
      const name = line.startsWith('MAIL FROM:<foo@example.com>') ? 'rcpt to' : line.startsWith('R') ? 'rcpt to' : 'mail from';
      expect(parseSimpleAddress(name, line), line).toBeUndefined();
    }
  });

  it('agrees with smtp-server on 50,000 random lines wherever it answers', () => {
    // A small alphabet, so that random lines often come close to an address: every near miss must be left to the engine or agree with it.
    const alphabet = ['a', 'Z', '0', '.', '-', '@', '<', '>', ':', ' ', '+', '"', '[', ']', 'x', 'n', '--', 'xn--', 'ü', '\u212A', '\0', '=', '_'];
    let seed = 12345;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    let answered = 0;
    for (let i = 0; i < 50_000; i++) {
      const name = random(2) === 0 ? 'mail from' : 'rcpt to';
      const prefix = ['MAIL FROM:<', 'RCPT TO:<', 'mail from:<', 'RCPT TO: <'][random(4)]!;
      let local = '';
      let domain = '';
      for (let j = 0, n = 1 + random(6); j < n; j++) local += alphabet[random(alphabet.length)];
      for (let j = 0, n = 1 + random(8); j < n; j++) domain += alphabet[random(alphabet.length)];
      const line = `${prefix}${local}@${domain}>${random(10) === 0 ? ' SIZE=1' : ''}`;
      const simple = parseSimpleAddress(name, line);
      if (simple === undefined) continue;
      answered++;
      expect(simple, line).toEqual(smtpServer(name, line));
    }
    // The walk must reach the fast path often, or it proves nothing.
    expect(answered).toBeGreaterThan(1_000);
  });
});
