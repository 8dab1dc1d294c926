import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../config/config.js';
import { HostError, hostError } from '../errors.js';
import { PROJECT_ROOT } from '../paths.js';

/** How long the CLI waits for the running server's answer. */
export const ADMIN_CLIENT_TIMEOUT_MS = 30_000;

/** Where the running server's admin listener is, and the token for it. */
export interface AdminTarget {
  readonly url: string;
  readonly token: string | null;
}

/** The options every admin CLI command takes. */
export const ADMIN_OPTIONS = { config: { type: 'string' }, admin: { type: 'string' } } as const;

/**
 * The admin listener the CLI talks to: --admin URL (or SMTP_ADMIN_URL), else
 * [admin] listen of the config (--config, or the repository's config.toml).
 * The token: SMTP_ADMIN_TOKEN, else the config's token or token_file; never
 * a command-line flag (other users see a process's arguments).
 */
export function adminTarget(values: { config?: string; admin?: string }): AdminTarget {
  const envToken = process.env.SMTP_ADMIN_TOKEN;
  const explicit = values.admin ?? process.env.SMTP_ADMIN_URL;
  const bundled = join(PROJECT_ROOT, 'config.toml');
  const configPath = values.config ?? (existsSync(bundled) ? bundled : null);
  const config = configPath === null || (explicit !== undefined && envToken !== undefined) ? null : loadConfig(configPath);
  const token = envToken ?? config?.admin.token ?? null;
  if (explicit !== undefined) return { url: explicit.replace(/\/+$/, ''), token };
  const listen = config?.admin.listen ?? null;
  if (listen === null) {
    throw hostError('SMTP_E_ADMIN_UNREACHABLE', `no admin listener to talk to: ${configPath ?? 'no config file'} has no [admin] listen (or give --admin http://HOST:PORT)`);
  }
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host;
  return { url: `http://${host}:${listen.port}`, token };
}

/** One admin API call; the parsed JSON answer, or the server's coded error as a HostError. */
export async function adminCall(target: AdminTarget, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> {
  let response: Response;
  try {
    response = await fetch(`${target.url}${path}`, {
      method,
      headers: {
        ...(target.token === null ? {} : { authorization: `Bearer ${target.token}` }),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(ADMIN_CLIENT_TIMEOUT_MS),
    });
  } catch (cause) {
    const why = cause instanceof Error && cause.cause instanceof Error ? cause.cause.message : String(cause);
    throw hostError('SMTP_E_ADMIN_UNREACHABLE', `cannot reach the admin listener at ${target.url}: ${why}`, cause);
  }
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw hostError('SMTP_E_ADMIN_REQUEST', `${target.url}${path} answered HTTP ${response.status} with something else than the admin API's JSON`);
  }
  const answer = parsed as Record<string, unknown> & { error?: { code?: string; message?: string } };
  if (!response.ok) {
    const code = answer.error?.code ?? 'SMTP_E_ADMIN_REQUEST';
    const message = answer.error?.message ?? `HTTP ${response.status}`;
    // The server's code, unchanged: the CLI prints it as the server gave it.
    throw new HostError(code, message);
  }
  return answer;
}
