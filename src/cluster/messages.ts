/**
 * What the primary and its workers say to each other over the cluster IPC
 * channel. Every message carries `smtpHost` so that it is told apart from
 * anything else on the channel, and is checked on arrival.
 */

/** The worker's index (0..count-1), given by the primary at fork; its spool directory is named after it. */
export const WORKER_INDEX_ENV = 'SMTP_PLUGIN_HOST_WORKER_INDEX';
/** How many workers the primary runs (the worker's config may have changed on disk since). */
export const WORKER_COUNT_ENV = 'SMTP_PLUGIN_HOST_WORKERS';

/** One worker's answer to a reload. */
export interface WorkerReload {
  readonly worker: number;
  readonly pid: number;
  readonly ok: boolean;
  readonly changed: readonly string[];
  /** When not ok: the coded error, as the worker's reload threw it. */
  readonly code?: string;
  readonly message?: string;
}

export type ToPrimary =
  /** The server listens (and, on worker 0, the admin listener). */
  | { readonly smtpHost: 'ready'; readonly worker: number; readonly port: number }
  /** Worker 0's admin API asked for a reload: the primary reloads every worker and answers with 'reloaded-all'. */
  | { readonly smtpHost: 'reload-all'; readonly id: string; readonly why: string }
  /** A worker's answer to 'reload'. */
  | { readonly smtpHost: 'reloaded'; readonly id: string; readonly result: WorkerReload };

export type ToWorker =
  | { readonly smtpHost: 'reload'; readonly id: string; readonly why: string }
  | { readonly smtpHost: 'reloaded-all'; readonly id: string; readonly results: readonly WorkerReload[] };

function kindOf(value: unknown): string | null {
  if (typeof value !== 'object' || value === null) return null;
  const kind = (value as { smtpHost?: unknown }).smtpHost;
  return typeof kind === 'string' ? kind : null;
}

const isReload = (value: unknown): value is WorkerReload => {
  const r = value as Partial<WorkerReload> | null;
  return typeof r === 'object' && r !== null && typeof r.worker === 'number' && typeof r.pid === 'number' && typeof r.ok === 'boolean' && Array.isArray(r.changed);
};

export function asToPrimary(value: unknown): ToPrimary | null {
  const m = value as Record<string, unknown>;
  switch (kindOf(value)) {
    case 'ready':
      return typeof m.worker === 'number' && typeof m.port === 'number' ? (value as ToPrimary) : null;
    case 'reload-all':
      return typeof m.id === 'string' && typeof m.why === 'string' ? (value as ToPrimary) : null;
    case 'reloaded':
      return typeof m.id === 'string' && isReload(m.result) ? (value as ToPrimary) : null;
    default:
      return null;
  }
}

export function asToWorker(value: unknown): ToWorker | null {
  const m = value as Record<string, unknown>;
  switch (kindOf(value)) {
    case 'reload':
      return typeof m.id === 'string' && typeof m.why === 'string' ? (value as ToWorker) : null;
    case 'reloaded-all':
      return typeof m.id === 'string' && Array.isArray(m.results) && m.results.every(isReload) ? (value as ToWorker) : null;
    default:
      return null;
  }
}
