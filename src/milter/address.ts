/**
 * A milter's address as Postfix and Sendmail write it: `inet:HOST:PORT`,
 * `inet:PORT@HOST` (Sendmail's order), `inet6:[ADDR]:PORT` or `unix:/path`
 * (`local:` is Sendmail's name for `unix:`).
 */
import { hostError } from '../errors.js';

export type MilterAddress = { readonly kind: 'inet'; readonly host: string; readonly port: number } | { readonly kind: 'unix'; readonly path: string };

function port(text: string, address: string): number {
  const value = Number(text);
  if (!/^\d{1,5}$/.test(text) || value < 1 || value > 65_535) throw hostError('SMTP_E_CONFIG', `milter address "${address}": expected a port from 1 to 65535, got "${text}"`);
  return value;
}

export function parseMilterAddress(address: string): MilterAddress {
  const colon = address.indexOf(':');
  const scheme = colon < 0 ? '' : address.slice(0, colon);
  const rest = address.slice(colon + 1);
  if (scheme === 'unix' || scheme === 'local') {
    if (!rest.startsWith('/')) throw hostError('SMTP_E_CONFIG', `milter address "${address}": a unix socket needs an absolute path (unix:/run/milter.sock)`);
    return { kind: 'unix', path: rest };
  }
  if (scheme === 'inet' || scheme === 'inet6') {
    const at = rest.indexOf('@');
    if (at >= 0) return { kind: 'inet', host: rest.slice(at + 1).replace(/^\[(.*)\]$/, '$1'), port: port(rest.slice(0, at), address) };
    const last = rest.lastIndexOf(':');
    if (last > 0) return { kind: 'inet', host: rest.slice(0, last).replace(/^\[(.*)\]$/, '$1'), port: port(rest.slice(last + 1), address) };
  }
  throw hostError('SMTP_E_CONFIG', `milter address "${address}": expected inet:HOST:PORT, inet:PORT@HOST or unix:/path`);
}

/** The address written back as `inet:HOST:PORT` or `unix:/path`, for logs. */
export function formatMilterAddress(address: MilterAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return address.host.includes(':') ? `inet:[${address.host}]:${address.port}` : `inet:${address.host}:${address.port}`;
}

/** An envelope address as milters send it ("<a@b>", or bare), without its angle brackets. */
export function bareAddress(address: Buffer): string {
  return address.toString('utf8').trim().replace(/^<(.*)>$/, '$1');
}
