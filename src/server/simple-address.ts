/**
 * The common MAIL FROM / RCPT TO line, `MAIL FROM:<local@domain>` with no
 * parameters and a plain ASCII domain, parsed without smtp-server's general
 * parser (`_parseAddressCommand`), which splits and joins the line, runs
 * five regular expressions and converts the domain with punycode: under
 * smtp-source it was the engine's costliest frame: 8.8 us, and 3.6 more in
 * punycode, of 200 busy per message (CPU profile of bare smtp-server,
 * docs/benchmarks.md).
 *
 * Only lines whose result is certain are taken: the answer is exactly what
 * smtp-server 3.21.6 gives for them (test/server/simple-address.test.ts
 * compares the two on a corpus and on random lines). Every other line
 * (parameters, source routes, quoted or non-ASCII local parts, IP literals,
 * IDN or `xn--` domains, the bare postmaster, anything smtp-server would
 * refuse) returns undefined and goes to smtp-server's parser.
 */

/** The parser's result for a simple line: smtp-server's shape, with no ESMTP parameters. */
export interface SimpleAddress {
  readonly address: string;
  readonly args: false;
}

/** RFC 5322 atext and dots in the local part; LDH labels joined by single dots in the domain. */
const SIMPLE_LINE = /^(MAIL FROM|RCPT TO):<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>$/i;

/** smtp-server's path limit: local part, '@' and domain (RFC 5321 4.5.3.1.3). */
const PATH_CHARS_MAX = 253;

/**
 * `name` is smtp-server's ('mail from' or 'rcpt to'), `line` the command
 * line as received. Undefined: not a simple line, ask smtp-server.
 */
export function parseSimpleAddress(name: string, line: string): SimpleAddress | undefined {
  const match = SIMPLE_LINE.exec(line);
  if (match === null || match[1]!.toLowerCase() !== name) return undefined;
  const local = match[2]!;
  const domain = match[3]!;
  if (local.charCodeAt(0) === 0x2e || local.charCodeAt(local.length - 1) === 0x2e || local.includes('..')) return undefined;
  // punycode would decode an xn-- label; '-.' and '.-' smtp-server refuses.
  if (domain.includes('-.') || domain.includes('.-') || /xn--/i.test(domain)) return undefined;
  if (local.length + 1 + domain.length > PATH_CHARS_MAX) return undefined;
  return { address: `${local}@${domain}`, args: false };
}
