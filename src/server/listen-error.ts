import { isIPv6 } from 'node:net';
import { hostError, type HostError } from '../errors.js';

/** What an operator should read for the errors listen() gives, by errno code. */
const REASONS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'the address is already in use (another server listens there)',
  EACCES: 'permission denied (ports below 1024 need privileges)',
  EPERM: 'permission denied',
  EADDRNOTAVAIL: 'no interface of this machine has that address',
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name could not be resolved now (DNS failure)',
  EAI_FAIL: 'the host name could not be resolved (DNS failure)',
  EAFNOSUPPORT: 'this machine does not support that address family',
  EINVAL: 'the address is not valid for listening',
};

/** host:port, with IPv6 literals bracketed. */
export function listenAddress(host: string, port: number): string {
  return `${isIPv6(host) ? `[${host}]` : host}:${port}`;
}

/**
 * Turns what net.Server emits on a failed listen() into SMTP_E_LISTEN, naming
 * the address the config asked for (the errno message alone names neither
 * the config key nor, for a name that does not resolve, the port).
 */
export function listenError(error: unknown, host: string, port: number): HostError {
  const errno = (error as NodeJS.ErrnoException | null)?.code;
  const known = errno === undefined ? undefined : REASONS[errno];
  const reason = known === undefined ? String((error as Error | null)?.message ?? error) : `${known} (${errno})`;
  return hostError('SMTP_E_LISTEN', `the server could not listen on ${listenAddress(host, port)}: ${reason}`, error);
}
