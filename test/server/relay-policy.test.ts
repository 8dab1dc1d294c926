import { appendFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type PolicyConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { decideRecipient, mayRelay, type RecipientQuery } from '../../src/server/relay-policy.js';
import { recipientRefused } from '../../src/server/reply-policy.js';
import { fixture } from '../helpers/fixtures.js';
import { serverRoot } from '../helpers/server.js';
import { LineClient } from '../helpers/smtp-client.js';

const DEFAULT_POLICY: PolicyConfig = Object.freeze({
  localDomains: Object.freeze(['mx.example.org', 'localhost']),
  relayNetworks: Object.freeze(['127.0.0.0/8', '::1/128']),
  maxRecipients: 100,
  localRecipients: null,
});

const ask = (policy: PolicyConfig, query: Partial<RecipientQuery> & { recipient: string }) =>
  decideRecipient(policy, { clientIp: '192.0.2.10', authenticated: false, recipientCount: 0, ...query });

const RELAY_DENIED = (address: string) => ({ accept: false, refusal: 'relay-denied', recipient: address });

describe('decideRecipient', () => {
  it('accepts mail for a local domain from anyone, case-insensitively', () => {
    for (const recipient of ['alice@mx.example.org', 'Alice@MX.Example.ORG', 'root@localhost', 'bob@mx.example.org.']) {
      expect(ask(DEFAULT_POLICY, { recipient }), recipient).toEqual({ accept: true, local: true });
    }
  });

  it('relays to another domain only for relay_networks and authenticated clients', () => {
    expect(ask(DEFAULT_POLICY, { recipient: 'you@example.net' })).toEqual(RELAY_DENIED('you@example.net'));
    for (const clientIp of ['127.0.0.1', '127.0.0.2', '::1', '::ffff:127.0.0.1']) {
      expect(ask(DEFAULT_POLICY, { clientIp, recipient: 'you@example.net' }), clientIp).toEqual({ accept: true, local: false });
    }
    expect(ask(DEFAULT_POLICY, { authenticated: true, recipient: 'you@example.net' })).toEqual({ accept: true, local: false });
    expect(mayRelay(DEFAULT_POLICY, '::ffff:192.0.2.10', false)).toBe(false);
    // A subdomain of a local domain is another domain.
    expect(ask(DEFAULT_POLICY, { recipient: 'a@sub.mx.example.org' }).accept).toBe(false);
    expect(recipientRefused('relay-denied', 'you@example.net')).toEqual({ code: 554, text: '5.7.1 <you@example.net>: Relay access denied' });
  });

  it('matches IPv6 networks and IPv4-mapped peers against IPv4 ones', () => {
    const policy: PolicyConfig = { ...DEFAULT_POLICY, relayNetworks: ['10.0.0.0/8', '2001:db8::/32'] };
    expect(ask(policy, { clientIp: '::ffff:10.1.2.3', recipient: 'x@example.net' }).accept).toBe(true);
    expect(ask(policy, { clientIp: '2001:db8:5::1', recipient: 'x@example.net' }).accept).toBe(true);
    expect(ask(policy, { clientIp: '127.0.0.1', recipient: 'x@example.net' }).accept).toBe(false);
    expect(ask(policy, { clientIp: 'not-an-ip', recipient: 'x@example.net' }).accept).toBe(false);
  });

  it('refuses sender-specified routing through a local domain from untrusted clients', () => {
    for (const recipient of ['you%example.net@mx.example.org', 'host!you@mx.example.org', '"you@example.net"@mx.example.org']) {
      expect(ask(DEFAULT_POLICY, { recipient }), recipient).toEqual(RELAY_DENIED(recipient));
      expect(ask(DEFAULT_POLICY, { recipient, clientIp: '127.0.0.1' }).accept, recipient).toBe(true);
    }
  });

  it('gives 452 4.5.3 from the recipient after max_recipients, before anything else', () => {
    expect(ask(DEFAULT_POLICY, { recipient: 'a@localhost', recipientCount: 99 })).toEqual({ accept: true, local: true });
    for (const recipientCount of [100, 101, 500]) {
      expect(ask(DEFAULT_POLICY, { recipient: 'a@example.net', recipientCount })).toEqual({ accept: false, refusal: 'too-many-recipients', recipient: 'a@example.net' });
      expect(recipientRefused('too-many-recipients', 'a@example.net')).toEqual({ code: 452, text: '4.5.3 Too many recipients' });
    }
    expect(ask({ ...DEFAULT_POLICY, maxRecipients: 1 }, { recipient: 'a@localhost', recipientCount: 1 }).accept).toBe(false);
  });

  it('refuses unknown local users where local_recipients says so, and never postmaster', () => {
    const policy: PolicyConfig = { ...DEFAULT_POLICY, localDomains: ['mx.example.org', 'lists.example.org', 'localhost'], localRecipients: ['alice', 'bob@mx.example.org', '@lists.example.org'] };
    const accepted = ['alice@mx.example.org', 'ALICE@localhost', 'Bob@mx.example.org', 'anyone@lists.example.org', 'postmaster@mx.example.org', 'PostMaster@localhost', 'postmaster'];
    for (const recipient of accepted) expect(ask(policy, { recipient }), recipient).toEqual({ accept: true, local: true });
    for (const recipient of ['bob@localhost', 'carol@mx.example.org']) {
      expect(ask(policy, { recipient }), recipient).toEqual({ accept: false, refusal: 'unknown-user', recipient });
      expect(recipientRefused('unknown-user', recipient).code).toBe(550);
      // Trusted clients too: the table is about the mailbox, not the client.
      expect(ask(policy, { recipient, authenticated: true }).accept, recipient).toBe(false);
    }
    // Mail for other domains is not looked up in the local table.
    expect(ask(policy, { recipient: 'carol@example.net', clientIp: '127.0.0.1' }).accept).toBe(true);
  });

  it('treats no local domains as "everything is relayed", and no relay networks as "only after AUTH"', () => {
    const relayOnly: PolicyConfig = { ...DEFAULT_POLICY, localDomains: [], relayNetworks: [] };
    expect(ask(relayOnly, { recipient: 'a@localhost', clientIp: '127.0.0.1' })).toEqual(RELAY_DENIED('a@localhost'));
    expect(ask(relayOnly, { recipient: 'postmaster', clientIp: '127.0.0.1' }).accept).toBe(false);
    expect(ask(relayOnly, { recipient: 'a@localhost', authenticated: true })).toEqual({ accept: true, local: false });
  });
});

describe('the relay policy in a running MailServer, real clients from 127.0.0.1 and 127.0.0.2', () => {
  let running: { server: MailServer; port: number } | undefined;
  const clients: LineClient[] = [];

  beforeAll(async () => {
    // relay_networks holds 127.0.0.1 only: 127.0.0.2 is "the internet" here. The
    // test plugin approves alice/secret at auth_started.
    const root = serverRoot({
      server: 'auth = true\nauth_insecure = true\n',
      plugins: '[plugins]\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nauthenticator = true\n',
    });
    appendFileSync(root.config, '\n[policy]\nrelay_networks = ["127.0.0.1/32"]\nlocal_recipients = ["alice", "bob"]\n');
    copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
    const server = new MailServer(loadConfig(root.config), pino({ level: 'silent' }));
    running = { server, port: await server.start() };
  });
  afterAll(async () => {
    for (const client of clients.splice(0)) client.destroy();
    await running?.server.stop();
  });

  async function session(localAddress: string): Promise<LineClient> {
    const client = await LineClient.open(running!.port, localAddress);
    clients.push(client);
    expect(await client.next()).toMatch(/^220 /);
    expect(await client.command('EHLO client.example')).toMatch(/^250/);
    expect(await client.command('MAIL FROM:<someone@client.example>')).toMatch(/^250/);
    return client;
  }

  it('refuses relay from a client outside relay_networks with 554 5.7.1, accepts its mail for local users', async () => {
    const outside = await session('127.0.0.2');
    expect(await outside.command('RCPT TO:<you@example.org>')).toBe('554 5.7.1 <you@example.org>: Relay access denied');
    expect(await outside.command('RCPT TO:<you%example.org@mx.test>')).toBe('554 5.7.1 <you%example.org@mx.test>: Relay access denied');
    expect(await outside.command('RCPT TO:<Alice@MX.test>')).toMatch(/^250 /);
    expect(await outside.command('RCPT TO:<carol@mx.test>')).toBe('550 5.1.1 <carol@mx.test>: Recipient address rejected: User unknown in local recipient table');
    expect(await outside.command('RCPT TO:<postmaster@localhost>')).toMatch(/^250 /);
    expect(await outside.command('DATA')).toMatch(/^354/);
    expect(await outside.command('Subject: hi\r\n\r\nhello\r\n.')).toMatch(/^250 2\.0\.0 Ok: queued as /);
  });

  it('relays for relay_networks and for an authenticated client', async () => {
    const inside = await session('127.0.0.1');
    expect(await inside.command('RCPT TO:<you@example.org>')).toMatch(/^250 /);
    const client = await LineClient.open(running!.port, '127.0.0.2');
    clients.push(client);
    await client.next();
    await client.command('EHLO client.example');
    expect(await client.command(`AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}`)).toMatch(/^235 /);
    expect(await client.command('MAIL FROM:<alice@client.example>')).toMatch(/^250/);
    expect(await client.command('RCPT TO:<you@example.org>')).toMatch(/^250 /);
  });

  it('answers the 101st RCPT and later 452 4.5.3, pipelined', async () => {
    const client = await session('127.0.0.1');
    client.write(Array.from({ length: 102 }, (_, i) => `RCPT TO:<r${i}@example.org>\r\n`).join(''));
    const replies: string[] = [];
    for (let i = 0; i < 102; i++) replies.push(await client.next());
    expect(replies.slice(0, 100).every((reply) => reply.startsWith('250 '))).toBe(true);
    expect(replies.slice(100)).toEqual(['452 4.5.3 Too many recipients', '452 4.5.3 Too many recipients']);
    expect(await client.command('RSET')).toMatch(/^250/);
  });
});
