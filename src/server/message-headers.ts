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

export function checkHeaders(raw: Buffer): HeaderCheck {
  const end = endOfHeaders(raw);
  const fields: Record<string, string> = {};
  const result = (problem: string | null): HeaderCheck => ({
    problem,
    messageId: fields['message-id']?.trim() || null,
    subject: fields.subject?.trim() ?? null,
    from: fields.from?.trim() ?? null,
  });
  // A message that does not start with a header field has none (its text is all body).
  const firstLineEnd = raw.indexOf('\n');
  const firstLine = raw.toString('latin1', 0, Math.min(firstLineEnd < 0 ? raw.length : firstLineEnd, HEADER_LINE_BYTES_MAX + 1));
  if (!FIELD.test(firstLine)) return result(null);
  if (end > HEADER_SECTION_BYTES_MAX) return result(`header section over ${HEADER_SECTION_BYTES_MAX} bytes`);
  const lines = raw.toString('latin1', 0, end).split(/\r?\n/);
  let current: string | null = null;
  for (const [index, line] of lines.entries()) {
    if (line.length > HEADER_LINE_BYTES_MAX) return result(`header line ${index + 1} is over ${HEADER_LINE_BYTES_MAX} characters`);
    if (line.includes('\0')) return result(`header line ${index + 1} holds a NUL byte`);
    if (/^[ \t]/.test(line)) {
      if (current === null) return result(`header line ${index + 1} continues nothing`);
      fields[current] += ` ${line.trim()}`;
      continue;
    }
    if (!FIELD.test(line)) return result(`header line ${index + 1} is not "Name: value"`);
    const colon = line.indexOf(':');
    current = line.slice(0, colon).toLowerCase();
    // The first occurrence wins, as for Message-ID in practice.
    if (fields[current] !== undefined) current = `${current}\0${index}`;
    fields[current] = line.slice(colon + 1);
  }
  return result(null);
}
