import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { AppConfig } from '../config/config.js';
import type { QueueEntry, QueueSelector } from '../delivery/delivery-queue.js';
import { HostError, hostError, isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import { LATENCY_INTERVAL_S, LatencyHistory } from '../ops/latency-history.js';
import type { ServerMetrics } from '../ops/metrics.js';
import { pluginMode } from '../ops/plugin-mode.js';
import { VERDICTS } from '../ops/plugin-call-stats.js';
import { PROJECT_ROOT } from '../paths.js';
import type { PluginInstance } from '../plugin/lifecycle.js';
import type { MailServer } from '../server/mail-server.js';
import { listenError } from '../server/listen-error.js';
import { SERVER_VERSION } from '../version.js';

/** A request body (a selector, a config to validate) is at most this large. */
export const ADMIN_BODY_BYTES_MAX = 1024 * 1024;
/** Connections the admin listener serves at once: it is for operators and one scraper, not for the public. */
export const ADMIN_CONNECTIONS_MAX = 64;
/** A request must arrive whole within this time. */
export const ADMIN_REQUEST_TIMEOUT_MS = 10_000;
/** Queue entries the status page shows. */
export const STATUS_QUEUE_ENTRIES_MAX = 50;
/** Queue entries one list call returns at most (the rest is counted, as postqueue -p does past its page). */
export const QUEUE_LIST_ENTRIES_MAX = 10_000;

const STATUS_PAGE_DIR = join(PROJECT_ROOT, 'src', 'admin', 'status-page');
const STATUS_PAGE_FILES: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/status.js': { file: 'status.js', type: 'text/javascript; charset=utf-8' },
  '/status.css': { file: 'status.css', type: 'text/css; charset=utf-8' },
};

/** What the admin listener needs from the process that runs the server. */
export interface AdminServerOptions {
  readonly server: MailServer;
  readonly token: string;
  readonly logger: Logger;
  /** Reloads config.toml from disk as SIGHUP does; resolves with the changed plugins, or throws the coded error. */
  readonly reloadConfig: () => Promise<readonly string[]>;
  /** Validates a config text (or, when null, the file on disk) as a reload would load it; throws the coded error. */
  readonly validateConfig: (text: string | null) => AppConfig;
  /**
   * Set in a worker of `[server] workers = N` (docs/scale-out.md): what this
   * listener reads (metrics, plugins, queue) is this worker's alone, and
   * actions on plugins or queued messages, which would reach this worker
   * only, are refused (a config reload reaches every worker).
   */
  readonly worker?: { readonly index: number; readonly count: number };
}

/** A failure the API answers with an HTTP status and a coded JSON error. */
class ApiError extends Error {
  readonly status: number;
  readonly error: HostError;
  constructor(status: number, error: HostError) {
    super(error.message);
    this.status = status;
    this.error = error;
  }
}

const notFound = (what: string): ApiError => new ApiError(404, hostError('SMTP_E_ADMIN_REQUEST', `no such ${what}`));
const badRequest = (message: string): ApiError => new ApiError(400, hostError('SMTP_E_ADMIN_REQUEST', message));

/** The HTTP status a coded error of an operation gets. */
function statusOf(error: HostError): number {
  switch (error.code) {
    case 'SMTP_E_PLUGIN_UNKNOWN':
      return 404;
    case 'SMTP_E_PLUGIN_DEPENDENCY':
    case 'SMTP_E_PLUGIN_STATE':
      return 409;
    case 'SMTP_E_CONFIG':
    case 'SMTP_E_PLUGIN_CONFIG':
    case 'SMTP_E_PLUGIN_OPTIONS':
      return 422;
    default:
      return 500;
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** The config as the API shows it: the admin token never leaves the server. */
function shownConfig(config: AppConfig): unknown {
  return { ...config, admin: { listen: config.admin.listen, token: config.admin.token === null ? null : '(set)' } };
}

function queueEntryJson(entry: QueueEntry): Record<string, unknown> {
  return {
    id: entry.id,
    received_at: entry.receivedAt,
    age_s: entry.ageSeconds,
    sender: entry.sender,
    recipients: entry.recipients,
    pending: entry.pending,
    size: entry.size,
    state: entry.state,
    attempts: entry.attempts,
    last_error: entry.lastError,
    next_attempt_at: entry.nextAttemptAt,
  };
}

/**
 * The admin listener: Prometheus metrics at /metrics, the status page at /,
 * and the JSON API under /api/ (docs/admin-api.md). Reading is open to
 * whoever reaches the listener (it defaults to loopback), except the config;
 * every call that changes state needs the bearer token.
 */
export class AdminServer {
  readonly #options: AdminServerOptions;
  readonly #metrics: ServerMetrics;
  readonly #tokenHash: Buffer;
  readonly #history: LatencyHistory;
  readonly #startedAt = new Date();
  #http: Server | null = null;
  #port = 0;

  constructor(options: AdminServerOptions) {
    const metrics = options.server.metrics;
    if (metrics === null) throw hostError('SMTP_E_CONFIG', 'the admin listener needs a server that counts metrics');
    this.#options = options;
    this.#metrics = metrics;
    this.#tokenHash = sha256(options.token);
    this.#history = new LatencyHistory(metrics.calls, () => options.server.manager.list().map((instance) => instance.name));
  }

  get port(): number {
    return this.#port;
  }

  async listen(host: string, port: number): Promise<number> {
    const http = createServer((request, response) => {
      this.#handle(request, response).catch((error: unknown) => this.#fail(response, error));
    });
    http.maxConnections = ADMIN_CONNECTIONS_MAX;
    http.requestTimeout = ADMIN_REQUEST_TIMEOUT_MS;
    http.headersTimeout = ADMIN_REQUEST_TIMEOUT_MS;
    await new Promise<void>((resolve, reject) => {
      http.once('error', (error) => reject(listenError(error, host, port)));
      http.listen(port, host, () => resolve());
    });
    http.on('error', (error) => this.#options.logger.error({ err: error.message }, 'admin listener error'));
    this.#http = http;
    this.#port = (http.address() as AddressInfo).port;
    this.#history.start();
    this.#options.logger.info({ host, port: this.#port }, 'admin listener: metrics, API and status page');
    return this.#port;
  }

  async close(): Promise<void> {
    this.#history.stop();
    const http = this.#http;
    this.#http = null;
    if (http === null) return;
    http.closeAllConnections();
    await new Promise<void>((resolve) => http.close(() => resolve()));
  }

  async #handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://admin');
    const method = request.method ?? 'GET';
    const path = url.pathname.replace(/\/+$/, '') || '/';
    if (method === 'GET' && STATUS_PAGE_FILES[path] !== undefined) return this.#page(response, STATUS_PAGE_FILES[path]!);
    if (method === 'GET' && path === '/metrics') {
      response.writeHead(200, { 'content-type': this.#metrics.contentType });
      response.end(await this.#metrics.text());
      return;
    }
    if (!path.startsWith('/api/')) throw notFound(`path ${path}`);
    const parts = path.slice('/api/'.length).split('/').map(decodeURIComponent);
    const route = `${method} ${parts[0]}`;
    switch (route) {
      case 'GET status':
        return this.#json(response, 200, this.#status());
      case 'GET plugins':
        if (parts.length === 1) {
          const lastMinute = this.#history.lastMinute();
          return this.#json(response, 200, { plugins: this.#options.server.manager.list().map((instance) => this.#pluginJson(instance, lastMinute)) });
        }
        return this.#json(response, 200, this.#pluginJson(this.#plugin(parts[1]!), this.#history.lastMinute()));
      case 'POST plugins':
        this.#authorize(request);
        this.#refuseInWorkerMode('plugin actions');
        return this.#json(response, 200, await this.#pluginAction(parts[1], parts[2], url.searchParams));
      case 'GET config':
        this.#authorize(request);
        return this.#json(response, 200, { config: shownConfig(this.#options.server.config) });
      case 'POST config':
        this.#authorize(request);
        return this.#json(response, 200, await this.#configAction(parts[1], request));
      case 'GET queue':
        return this.#json(response, 200, this.#queueList(this.#selectorOf(url.searchParams, true)));
      case 'POST queue':
        this.#authorize(request);
        this.#refuseInWorkerMode('queue actions');
        return this.#json(response, 200, await this.#queueAction(parts[1], await this.#body(request)));
      default:
        throw new ApiError(parts[0] !== undefined && ['status', 'plugins', 'config', 'queue'].includes(parts[0]) ? 405 : 404, hostError('SMTP_E_ADMIN_REQUEST', `${method} ${path} is not an admin API call (docs/admin-api.md)`));
    }
  }

  #authorize(request: IncomingMessage): void {
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    // Hashes of equal length, compared in constant time: the token's length and prefix do not leak.
    if (match === null || !timingSafeEqual(sha256(match[1]!), this.#tokenHash)) {
      throw new ApiError(401, hostError('SMTP_E_ADMIN_AUTH', 'this call needs the admin bearer token ([admin] token or token_file): Authorization: Bearer <token>'));
    }
  }

  #refuseInWorkerMode(what: string): void {
    const { worker } = this.#options;
    if (worker === undefined) return;
    throw new ApiError(409, hostError('SMTP_E_ADMIN_REQUEST', `${what} would reach worker ${worker.index} of ${worker.count} only ([server] workers): change the config and reload it (POST /api/config/reload reaches every worker), see docs/scale-out.md`));
  }

  async #body(request: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const chunk of request as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      if (bytes > ADMIN_BODY_BYTES_MAX) throw new ApiError(413, hostError('SMTP_E_ADMIN_REQUEST', `the request body is over ${ADMIN_BODY_BYTES_MAX} bytes`));
      chunks.push(chunk);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  #plugin(name: string): PluginInstance {
    const instance = this.#options.server.manager.get(name);
    if (instance === undefined) throw new ApiError(404, hostError('SMTP_E_PLUGIN_UNKNOWN', `no loaded plugin is named "${name}"`));
    return instance;
  }

  #pluginJson(instance: PluginInstance, lastMinute: ReadonlyMap<string, number | null>): Record<string, unknown> {
    const { calls } = this.#metrics;
    const totals = calls.totals(instance.name);
    const verdicts: Record<string, number> = { continue: 0, stop: 0, cancel: 0 };
    const errors: Record<string, number> = {};
    for (const stats of calls.all()) {
      if (stats.plugin !== instance.name) continue;
      VERDICTS.forEach((verdict, index) => (verdicts[verdict]! += stats.verdicts[index]!));
      for (const [code, count] of stats.errors) errors[code] = (errors[code] ?? 0) + count;
    }
    const runtime = instance.plugin.runtimeStats?.();
    return {
      name: instance.name,
      version: instance.plugin.metadata.version,
      mode: pluginMode(instance.plugin),
      state: instance.state,
      file: instance.plugin.path,
      calls: totals.calls,
      verdicts,
      errors,
      latency_us_mean: totals.calls === 0 ? null : Math.round((totals.seconds / totals.calls) * 1e7) / 10,
      latency_us_last_minute: lastMinute.get(instance.name) ?? null,
      refusals: this.#metrics.refusals.byPlugin()[instance.name] ?? 0,
      restarts: runtime?.restarts ?? null,
      memory_bytes: runtime?.memoryBytes ?? null,
      disables: calls.disables().get(instance.name) ?? { failures: 0, admin: 0, dependency: 0 },
    };
  }

  async #pluginAction(name: string | undefined, action: string | undefined, query: URLSearchParams): Promise<Record<string, unknown>> {
    if (name === undefined || action === undefined) throw badRequest('expected POST /api/plugins/<name>/(enable|disable|reload)');
    const { manager } = this.#options.server;
    this.#plugin(name);
    const log = (extra: object): void => this.#options.logger.info({ plugin: name, action, ...extra }, 'admin: plugin action');
    switch (action) {
      case 'enable':
        await manager.enablePlugin(name);
        log({});
        return { plugin: name, state: this.#plugin(name).state };
      case 'disable': {
        const disabled = await manager.disablePlugin(name, { cascade: query.get('cascade') === 'true', reason: 'admin' });
        log({ disabled });
        return { plugin: name, disabled };
      }
      case 'reload': {
        const next = await manager.replacePlugin(name);
        log({ version: next.plugin.metadata.version });
        return { plugin: name, version: next.plugin.metadata.version, state: next.state };
      }
      default:
        throw badRequest(`unknown plugin action "${action}" (enable, disable, reload)`);
    }
  }

  async #configAction(action: string | undefined, request: IncomingMessage): Promise<Record<string, unknown>> {
    switch (action) {
      case 'validate': {
        const text = await this.#body(request);
        const config = this.#options.validateConfig(text.trim() === '' ? null : text);
        return { valid: true, file: config.file, plugins: config.plugins.plugins.filter((entry) => entry.enabled).map((entry) => entry.name) };
      }
      case 'reload':
        return { reloaded: true, changed_plugins: await this.#options.reloadConfig() };
      default:
        throw badRequest(`unknown config action "${String(action)}" (validate, reload)`);
    }
  }

  /** A selector from query parameters (GET) or a JSON body (POST); `listing` allows the empty one (everything). */
  #selectorOf(query: URLSearchParams, listing: boolean): QueueSelector {
    const ids = query.getAll('id');
    const selector: QueueSelector = {
      ...(ids.length > 0 ? { ids } : {}),
      ...(query.get('all') === 'true' ? { all: true } : {}),
      ...(query.has('sender') ? { sender: query.get('sender')! } : {}),
      ...(query.has('recipient') ? { recipient: query.get('recipient')! } : {}),
    };
    return listing && Object.keys(selector).length === 0 ? { all: true } : selector;
  }

  #queue() {
    const { queue } = this.#options.server;
    if (queue === null) throw new ApiError(404, hostError('SMTP_E_ADMIN_REQUEST', 'this server keeps no queue ([storage] spool = "none")'));
    return queue;
  }

  #queueList(selector: QueueSelector): Record<string, unknown> {
    const entries = this.#queue().list(selector);
    return { total: entries.length, entries: entries.slice(0, QUEUE_LIST_ENTRIES_MAX).map(queueEntryJson) };
  }

  async #queueAction(action: string | undefined, body: string): Promise<Record<string, unknown>> {
    let parsed: unknown;
    try {
      parsed = body.trim() === '' ? {} : JSON.parse(body);
    } catch (cause) {
      throw badRequest(`the body is not JSON (${(cause as Error).message})`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw badRequest('expected a JSON object: {"ids": [...]} or {"all": true} or {"sender": ...} or {"recipient": ...}');
    const raw = parsed as Record<string, unknown>;
    const unknown = Object.keys(raw).filter((key) => !['ids', 'all', 'sender', 'recipient'].includes(key));
    if (unknown.length > 0) throw badRequest(`unknown selector keys: ${unknown.join(', ')} (ids, all, sender, recipient)`);
    if (raw.ids !== undefined && (!Array.isArray(raw.ids) || raw.ids.some((id) => typeof id !== 'string'))) throw badRequest('ids: expected an array of queue ids');
    if (raw.all !== undefined && typeof raw.all !== 'boolean') throw badRequest('all: expected true or false');
    for (const key of ['sender', 'recipient'] as const) if (raw[key] !== undefined && (typeof raw[key] !== 'string' || raw[key] === '')) throw badRequest(`${key}: expected an address or a domain`);
    const selector = raw as QueueSelector;
    if (!(selector.all === true) && (selector.ids ?? []).length === 0 && selector.sender === undefined && selector.recipient === undefined) {
      throw badRequest('an empty selector matches nothing: give ids, sender, recipient, or all = true');
    }
    const queue = this.#queue();
    let result: { ids: readonly string[]; busy: readonly string[] };
    switch (action) {
      case 'flush':
        result = queue.flush(selector);
        break;
      case 'hold':
        result = await queue.hold(selector);
        break;
      case 'release':
        result = await queue.release(selector);
        break;
      case 'delete':
        result = await queue.delete(selector);
        break;
      default:
        throw badRequest(`unknown queue action "${String(action)}" (flush, hold, release, delete)`);
    }
    this.#options.logger.info({ action, ids: result.ids.length, busy: result.busy.length }, 'admin: queue action');
    return { action, ids: result.ids, busy: result.busy };
  }

  #status(): Record<string, unknown> {
    const { server } = this.#options;
    const lastMinute = this.#history.lastMinute();
    const byPlugin = this.#metrics.refusals.byPlugin();
    const queue = server.queue;
    const summary = queue?.summary() ?? null;
    const entries = queue === null ? [] : queue.list({ all: true }).slice(0, STATUS_QUEUE_ENTRIES_MAX);
    return {
      server: {
        hostname: server.config.server.hostname,
        version: SERVER_VERSION,
        started_at: this.#startedAt.toISOString(),
        uptime_s: Math.round((Date.now() - this.#startedAt.getTime()) / 100) / 10,
        smtp_port: server.port,
        ...(this.#options.worker === undefined ? {} : { worker: this.#options.worker.index, workers: this.#options.worker.count }),
      },
      plugins: server.manager.list().map((instance) => {
        const totals = this.#metrics.calls.totals(instance.name);
        return {
          name: instance.name,
          version: instance.plugin.metadata.version,
          mode: pluginMode(instance.plugin),
          state: instance.state,
          calls: totals.calls,
          errors: totals.errors,
          refusals: byPlugin[instance.name] ?? 0,
          latency_us_last_minute: lastMinute.get(instance.name) ?? null,
        };
      }),
      latency_history: { interval_s: LATENCY_INTERVAL_S, points: this.#history.points() },
      queue: {
        depth: summary?.depth ?? 0,
        held: summary?.held ?? 0,
        deferred: summary?.deferred ?? 0,
        oldest_age_s: summary?.oldestReceivedAt == null ? null : Math.round((Date.now() - Date.parse(summary.oldestReceivedAt)) / 100) / 10,
        entries: entries.map((entry) => ({ id: entry.id, age_s: Math.round(entry.ageSeconds * 10) / 10, sender: entry.sender, recipients: entry.recipients.length, state: entry.state, attempts: entry.attempts, last_error: entry.lastError })),
      },
      refusals: { by_plugin: byPlugin, recent: this.#metrics.refusals.recent() },
    };
  }

  #page(response: ServerResponse, page: { file: string; type: string }): void {
    let body: Buffer;
    try {
      body = readFileSync(join(STATUS_PAGE_DIR, page.file));
    } catch {
      throw notFound(`file ${page.file}`);
    }
    // The page loads nothing from elsewhere and runs only its own script.
    response.writeHead(200, { 'content-type': page.type, 'content-security-policy': "default-src 'self'; img-src 'self' data:", 'cache-control': 'no-store' });
    response.end(body);
  }

  #json(response: ServerResponse, status: number, body: unknown): void {
    response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
    response.end(`${JSON.stringify(body)}\n`);
  }

  #fail(response: ServerResponse, error: unknown): void {
    const [status, coded] =
      error instanceof ApiError ? [error.status, error.error] : isHostError(error) ? [statusOf(error), error] : [500, hostError('SMTP_E_ADMIN_REQUEST', `internal error: ${String(error)}`)];
    if (status >= 500) this.#options.logger.error({ code: coded.code, err: coded.message }, 'admin API call failed');
    if (response.headersSent) {
      response.destroy();
      return;
    }
    const headers: Record<string, string> = status === 401 ? { 'www-authenticate': 'Bearer realm="smtp-plugin-host admin"' } : {};
    response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers });
    response.end(`${JSON.stringify({ error: { code: coded.code, message: coded.message } })}\n`);
  }
}
