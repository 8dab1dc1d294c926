/**
 * The header checks behind message_validated: a message's header section must
 * be well formed (RFC 5322 field syntax and line length) and bounded. It also
 * yields the fields the hooks expose (Message-ID, Subject, From).
 */

/** RFC 5322 2.1.1: a line is at most 998 characters, CRLF excluded. */
export const HEADER_LINE_BYTES_MAX = 998;
/** The whole header section; a larger one is refused rather than parsed. */
export const HEADER_SECTION_BYTES_MAX = 256 * 1024;

export interface HeaderCheck {
  /** Set when the headers are malformed: what is wrong. */
  readonly problem: string | null;
  readonly messageId: string | null;
  readonly subject: string | null;
  readonly from: string | null;
}

const FIELD = /^[\x21-\x39\x3b-\x7e]+:/;

function endOfHeaders(raw: Buffer): number {
  const crlf = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  if (crlf < 0) return lf < 0 ? raw.length : lf;
  return lf < 0 ? crlf : Math.min(crlf, lf);
}

/** The fields checkHeaders yields, by lower-case name: all others are checked and not kept. */
const KEPT_FIELDS: ReadonlyMap<string, 'messageId' | 'subject' | 'from'> = new Map([
  ['message-id', 'messageId'],
  ['subject', 'subject'],
  ['from', 'from'],
]);

/**
 * Checks the header section line by line (one scan of a latin1 string, no
 * split, no object per field: this runs for every message) and keeps the
 * first occurrence of each field it yields, continuation lines unfolded.
 */
export function checkHeaders(raw: Buffer): HeaderCheck {
  const end = endOfHeaders(raw);
  const kept = { messageId: undefined as string | undefined, subject: undefined as string | undefined, from: undefined as string | undefined };
  const result = (problem: string | null): HeaderCheck => ({
    problem,
    messageId: kept.messageId?.trim() || null,
    subject: kept.subject?.trim() ?? null,
    from: kept.from?.trim() ?? null,
  });
  // A message that does not start with a header field has none (its text is all body).
  const firstLineEnd = raw.indexOf(10);
  const firstLine = raw.toString('latin1', 0, Math.min(firstLineEnd < 0 ? raw.length : firstLineEnd, HEADER_LINE_BYTES_MAX + 1));
  if (!FIELD.test(firstLine)) return result(null);
  if (end > HEADER_SECTION_BYTES_MAX) return result(`header section over ${HEADER_SECTION_BYTES_MAX} bytes`);
  const text = raw.toString('latin1', 0, end);
  // The field continuation lines add to: one of KEPT_FIELDS, null for any other field, undefined before the first.
  let current: 'messageId' | 'subject' | 'from' | null | undefined;
  let index = 0;
  for (let start = 0; start <= text.length; index++) {
    let stop = text.indexOf('\n', start);
    if (stop < 0) stop = text.length;
    const next = stop + 1;
    if (stop > start && text.charCodeAt(stop - 1) === 13) stop--;
    const line = text.slice(start, stop);
    start = next;
    if (line.length > HEADER_LINE_BYTES_MAX) return result(`header line ${index + 1} is over ${HEADER_LINE_BYTES_MAX} characters`);
    if (line.includes('\0')) return result(`header line ${index + 1} holds a NUL byte`);
    const first = line.charCodeAt(0);
    if (first === 32 || first === 9) {
      if (current === undefined) return result(`header line ${index + 1} continues nothing`);
      if (current !== null) kept[current] += ` ${line.trim()}`;
      continue;
    }
    if (!FIELD.test(line)) return result(`header line ${index + 1} is not "Name: value"`);
    const colon = line.indexOf(':');
    const name = KEPT_FIELDS.get(line.slice(0, colon).toLowerCase());
    // The first occurrence wins, as for Message-ID in practice.
    current = name === undefined || kept[name] !== undefined ? null : name;
    if (current !== null) kept[current] = line.slice(colon + 1);
  }
  return result(null);
}
