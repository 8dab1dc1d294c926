import type { SMTPServerSession } from 'smtp-server';
import { encodeFields, type EncodedMetadata, type MetadataFields } from '../plugin/metadata-wire.js';

/** The domain of an address, lower case ('' without one). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

/** The keys every hook of a session carries (hook-table.ts SESSION_KEYS), once known. */
export function sessionFields(session: SMTPServerSession): { session_id: string; remote_ip: string; client_hostname: string | undefined; helo: string | undefined; username: string | undefined } {
  return {
    session_id: session.id,
    remote_ip: session.remoteAddress,
    client_hostname: session.clientHostname,
    helo: session.hostNameAppearsAs || undefined,
    username: typeof session.user === 'string' ? session.user : undefined,
  };
}

interface CachedSession {
  readonly helo: string | undefined;
  readonly username: string | undefined;
  readonly encoded: EncodedMetadata;
}

/** Each session's keys, encoded once (again when HELO or the login changes). */
const encodedSessions = new WeakMap<SMTPServerSession, CachedSession>();

/** A session's keys, encoded: the prefix of every hook event of the session. */
export function sessionEncoding(session: SMTPServerSession): EncodedMetadata {
  const helo = session.hostNameAppearsAs || undefined;
  const username = typeof session.user === 'string' ? session.user : undefined;
  const cached = encodedSessions.get(session);
  if (cached !== undefined && cached.helo === helo && cached.username === username) return cached.encoded;
  const encoded = encodeFields(sessionFields(session));
  encodedSessions.set(session, { helo, username, encoded });
  return encoded;
}

/** A session hook event: the session's keys (encoded once per session), then `fields` (which must not repeat them). */
export function sessionEvent(session: SMTPServerSession, fields: MetadataFields, tailKey?: string): EncodedMetadata {
  return encodeFields(fields, tailKey, sessionEncoding(session));
}
