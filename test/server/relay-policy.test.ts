import { describe, expect, it } from 'vitest';
import type { PolicyConfig } from '../../src/config/config.js';
import { decideRecipient, mayRelay, replyText, type RecipientQuery } from '../../src/server/relay-policy.js';

const DEFAULT_POLICY: PolicyConfig = Object.freeze({
  localDomains: Object.freeze(['mx.example.org', 'localhost']),
  relayNetworks: Object.freeze(['127.0.0.0/8', '::1/128']),
  maxRecipients: 100,
  localRecipients: null,
});

const ask = (policy: PolicyConfig, query: Partial<RecipientQuery> & { recipient: string }) =>
  decideRecipient(policy, { clientIp: '192.0.2.10', authenticated: false, recipientCount: 0, ...query });

const RELAY_DENIED = (address: string) => ({ accept: false, code: 554, enhanced: '5.7.1', text: `<${address}>: Relay access denied` });

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
    expect(replyText(ask(DEFAULT_POLICY, { recipient: 'you@example.net' }) as { code: number; enhanced: string; text: string })).toBe('5.7.1 <you@example.net>: Relay access denied');
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
      expect(ask(DEFAULT_POLICY, { recipient: 'a@example.net', recipientCount })).toEqual({ accept: false, code: 452, enhanced: '4.5.3', text: 'Too many recipients' });
    }
    expect(ask({ ...DEFAULT_POLICY, maxRecipients: 1 }, { recipient: 'a@localhost', recipientCount: 1 }).accept).toBe(false);
  });

  it('refuses unknown local users where local_recipients says so, and never postmaster', () => {
    const policy: PolicyConfig = { ...DEFAULT_POLICY, localDomains: ['mx.example.org', 'lists.example.org', 'localhost'], localRecipients: ['alice', 'bob@mx.example.org', '@lists.example.org'] };
    const accepted = ['alice@mx.example.org', 'ALICE@localhost', 'Bob@mx.example.org', 'anyone@lists.example.org', 'postmaster@mx.example.org', 'PostMaster@localhost', 'postmaster'];
    for (const recipient of accepted) expect(ask(policy, { recipient }), recipient).toEqual({ accept: true, local: true });
    for (const recipient of ['bob@localhost', 'carol@mx.example.org']) {
      expect(ask(policy, { recipient }), recipient).toEqual({ accept: false, code: 550, enhanced: '5.1.1', text: `<${recipient}>: Recipient address rejected: User unknown in local recipient table` });
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
