import { describe, expect, it } from 'vitest';
import { formatNetwork, isLoopbackHost, networkMatcher, parseNetwork, type Network } from '../../src/config/networks.js';

const net = (text: string): Network => {
  const parsed = parseNetwork(text);
  if (typeof parsed === 'string') throw new Error(parsed);
  return parsed;
};

describe('networks', () => {
  it('parses IPv4 and IPv6 networks, a bare address as a host route', () => {
    expect(['127.0.0.0/8', '::1/128', '192.0.2.7', '2001:DB8::/32', '::ffff:10.0.0.0/104', '0.0.0.0/0', '::/0'].map((text) => formatNetwork(net(text)))).toEqual([
      '127.0.0.0/8', '::1/128', '192.0.2.7/32', '2001:db8::/32', '::ffff:10.0.0.0/104', '0.0.0.0/0', '::/0',
    ]);
  });

  it('refuses what is not a network, and host bits with the network meant', () => {
    expect(parseNetwork('10.1.2.3/8')).toBe('"10.1.2.3/8" has host bits set (did you mean "10.0.0.0/8"?)');
    expect(parseNetwork('2001:db8:0:0:1::/48')).toBe('"2001:db8:0:0:1::/48" has host bits set (did you mean "2001:db8::/48"?)');
    expect(parseNetwork('fe80::1%eth0/128')).toMatch(/zone index/);
    expect(parseNetwork('10.0.0.0/')).toMatch(/prefix length must be an integer from 0 to 32/);
    expect(parseNetwork('::/129')).toMatch(/prefix length must be an integer from 0 to 128/);
    expect(parseNetwork('10.0.0.0/8.5')).toMatch(/prefix length/);
    expect(parseNetwork('example.org/24')).toMatch(/is not an IPv4 or IPv6 network/);
  });

  it('matches IPv4 peers, IPv6 peers, and IPv4-mapped IPv6 peers (what Node reports) against IPv4 networks', () => {
    const relay = networkMatcher([net('127.0.0.0/8'), net('::1/128'), net('2001:db8::/32')]);
    expect(['127.0.0.1', '127.255.0.9', '::ffff:127.0.0.1', '::FFFF:7f00:1', '::1', '2001:db8:1::5'].map(relay)).toEqual([true, true, true, true, true, true]);
    expect(['128.0.0.1', '::ffff:10.0.0.1', '::2', '2001:db9::1', '', 'localhost', 'fe80::1%lo'].map(relay)).toEqual([false, false, false, false, false, false, false]);
  });

  it('knows a loopback listener', () => {
    expect(['127.0.0.1', '127.9.9.9', '::1', '::ffff:127.0.0.1', 'localhost', 'LOCALHOST'].every(isLoopbackHost)).toBe(true);
    expect(['0.0.0.0', '::', '192.0.2.1', 'localhost.example.org', '128.0.0.1'].some(isLoopbackHost)).toBe(false);
  });
});

describe('networkMatcher memory', () => {
  it('answers the same once its memory of client addresses has filled and started again', async () => {
    const { NETWORK_MATCHER_MEMO_ENTRIES_MAX } = await import('../../src/config/networks.js');
    const relay = networkMatcher([net('10.0.0.0/9')]);
    const addresses = Array.from({ length: NETWORK_MATCHER_MEMO_ENTRIES_MAX * 2 + 3 }, (_, i) => `10.${i % 256}.${(i >> 8) % 256}.1`);
    const first = addresses.map(relay);
    expect(first.filter(Boolean).length).toBe(addresses.filter((a) => Number(a.split('.')[1]) < 128).length);
    expect(addresses.map(relay)).toEqual(first);
  });
});
