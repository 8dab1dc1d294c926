import { BlockList, isIPv4, isIPv6 } from 'node:net';

/**
 * IP networks as the config writes them (Postfix's mynetworks syntax without
 * its brackets): "127.0.0.0/8", "::1/128", or a bare address meaning /32 or
 * /128. Parsing is strict: a network with host bits set is almost always a
 * typo for a wider or narrower one, so it is refused with the network meant.
 */

export interface Network {
  readonly family: 'ipv4' | 'ipv6';
  /** The network address as written (lower-cased). */
  readonly address: string;
  readonly prefix: number;
}

function ipv4Bytes(text: string): number[] {
  return text.split('.').map(Number);
}

/** The 16 bytes of a valid IPv6 literal (net.isIPv6 has checked its shape), embedded IPv4 included. */
function ipv6Bytes(text: string): number[] {
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    for (const group of part.split(':')) {
      if (group.includes('.')) {
        const [a, b, c, d] = ipv4Bytes(group);
        out.push((a! << 8) | b!, (c! << 8) | d!);
      } else {
        out.push(parseInt(group, 16));
      }
    }
    return out;
  };
  const [head = '', tail] = text.split('::');
  const before = groups(head);
  const after = tail === undefined ? [] : groups(tail);
  const words = [...before, ...new Array<number>(8 - before.length - after.length).fill(0), ...after];
  return words.flatMap((word) => [word >> 8, word & 0xff]);
}

function bytesOf(family: 'ipv4' | 'ipv6', address: string): number[] {
  return family === 'ipv4' ? ipv4Bytes(address) : ipv6Bytes(address);
}

function formatBytes(family: 'ipv4' | 'ipv6', bytes: readonly number[]): string {
  if (family === 'ipv4') return bytes.join('.');
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  // The longest run of two or more zero words becomes "::" (RFC 5952).
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === '0') j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  if (bestStart < 0) return words.join(':');
  return `${words.slice(0, bestStart).join(':')}::${words.slice(bestStart + bestLength).join(':')}`;
}

/** Parses one network; returns what was expected instead when it is not one. */
export function parseNetwork(text: string): Network | string {
  const slash = text.indexOf('/');
  const address = (slash < 0 ? text : text.slice(0, slash)).trim().toLowerCase();
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
  if (family === null) return `"${text}" is not an IPv4 or IPv6 network (expected for example "192.0.2.0/24" or "2001:db8::/32")`;
  if (address.includes('%')) return `"${text}": a zone index (%...) has no place in a network`;
  const bits = family === 'ipv4' ? 32 : 128;
  const prefixText = slash < 0 ? String(bits) : text.slice(slash + 1).trim();
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix >= 0 && prefix <= bits)) return `"${text}": the prefix length must be an integer from 0 to ${bits}`;
  const bytes = bytesOf(family, address);
  const masked = bytes.map((byte, i) => {
    const keep = Math.max(0, Math.min(8, prefix - i * 8));
    return byte & ((0xff << (8 - keep)) & 0xff);
  });
  if (masked.some((byte, i) => byte !== bytes[i])) return `"${text}" has host bits set (did you mean "${formatBytes(family, masked)}/${prefix}"?)`;
  return Object.freeze({ family, address, prefix });
}

export function formatNetwork(network: Network): string {
  return `${network.address}/${network.prefix}`;
}

/**
 * Client addresses a matcher remembers. A lookup in node:net's BlockList
 * builds a SocketAddress each time (about 4 us, measured in the SMTP
 * benchmark's profile, once per RCPT); clients come back, so the answer is
 * kept. Past this many the memory starts again from empty.
 */
export const NETWORK_MATCHER_MEMO_ENTRIES_MAX = 4096;

/** A matcher over networks. IPv4-mapped IPv6 peers (::ffff:a.b.c.d, as Node reports them) match IPv4 networks. */
export function networkMatcher(networks: readonly Network[]): (ip: string) => boolean {
  const list = new BlockList();
  for (const network of networks) list.addSubnet(network.address, network.prefix, network.family);
  const check = (ip: string): boolean => {
    const address = ip.trim().toLowerCase();
    if (isIPv4(address)) return list.check(address, 'ipv4');
    if (isIPv6(address) && !address.includes('%')) return list.check(address, 'ipv6');
    return false;
  };
  const memo = new Map<string, boolean>();
  return (ip: string): boolean => {
    let matched = memo.get(ip);
    if (matched === undefined) {
      matched = check(ip);
      if (memo.size >= NETWORK_MATCHER_MEMO_ENTRIES_MAX) memo.clear();
      memo.set(ip, matched);
    }
    return matched;
  };
}

const LOOPBACK = networkMatcher([parseNetwork('127.0.0.0/8') as Network, parseNetwork('::1/128') as Network]);

/** True for a listen host that only this machine can reach: 127.0.0.0/8, ::1, ::ffff:127.x.y.z or "localhost". */
export function isLoopbackHost(host: string): boolean {
  return host.toLowerCase() === 'localhost' || LOOPBACK(host);
}
