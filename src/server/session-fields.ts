import type { SMTPServerSession } from 'smtp-server';

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
