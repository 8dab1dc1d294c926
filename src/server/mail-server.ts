import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerSession } from 'smtp-server';
import { handlesHook, type HookName } from '../abi/hooks.js';
import type { AppConfig } from '../config/config.js';
import type { PluginEntryConfig } from '../config/plugins-config.js';
import { DeliveryQueue } from '../delivery/delivery-queue.js';
import { HostError, isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import { HotReloader } from '../manager/hot-reload.js';
import { PluginManager, pluginSpec, type LoadFailure } from '../manager/plugin-manager.js';
import type { EncodedMetadata, MetadataFields } from '../plugin/metadata-wire.js';
import type { PluginInstance } from '../plugin/lifecycle.js';
import { DEFAULT_SANDBOX_LIMITS } from '../plugin/options.js';
import { ServerMetrics } from '../ops/metrics.js';
import { Tracing } from '../ops/tracing.js';
import { configureHostCounters } from '../runtime/counters.js';
import { Spool, type SpooledMessage } from '../storage/spool.js';
import { SERVER_VERSION } from '../version.js';
import { BODY_HOOKS } from './hook-table.js';
import { HookRunner, andThen } from './hook-runner.js';
import { HookedSMTPServer } from './hooked-smtp-server.js';
import { listenError } from './listen-error.js';
import { MessagePipeline } from './message-pipeline.js';
import { decideRecipient } from './relay-policy.js';
import { REPLIES, errorReply, recipientRefused, replyError, type Refusal } from './reply-policy.js';
import { domainOf, sessionEncoding, sessionEvent, sessionFields } from './session-fields.js';

/**
 * Sandbox memory per byte of the largest message: the encoded copy and the
 * guest's own copy live side by side while loading, and the guest allocator
 * rounds large blocks up to a power of two (measured: a 25 MiB message needs
 * more than 64 MiB and fits in 128 MiB).
 */
const SANDBOX_MEMORY_PER_MESSAGE_BYTE = 4;

/** How long stop() lets open sessions finish before closing them. */
export const CLOSE_TIMEOUT_MS = 5000;

type Callback<T> = (err?: Error | null, result?: T) => void;

/** The error that stops start-up or a reload: the first required plugin's own coded error, naming the others. */
export function requiredPluginsFailed(failures: readonly LoadFailure[]): HostError {
  const [first, ...others] = failures;
  const rest = others.length === 0 ? '' : ` (also failed: ${others.map((failure) => failure.name ?? failure.path).join(', ')})`;
  const error = new HostError(first!.error.code, `${first!.error.message}${rest}; a configured plugin that cannot run stops the server unless its entry says optional = true`, { cause: first!.error });
  return error;
}

/**
 * The mail server: smtp-server with every one of the guide's 19 hooks fired
 * where its name says (src/server/hook-table.ts), a durable spool before the
 * 250 reply, and delivery. Sessions answer smtp-server's callbacks; the
 * message itself goes through the MessagePipeline. See docs/hooks.md.
 */
export class MailServer {
  #config: AppConfig;
  readonly #logger: Logger;
  readonly #manager: PluginManager;
  readonly #hooks: HookRunner;
  readonly #spool: Spool | null;
  readonly #queue: DeliveryQueue | null;
  readonly #pipeline: MessagePipeline;
  #smtp: HookedSMTPServer | null = null;
  readonly #reloader: HotReloader | null;
  readonly #metrics: ServerMetrics | null;
  readonly #tracing: Tracing | null;
  #port = 0;

  /** `withMetrics` (default: when [admin] listens) counts sessions, messages, plugin calls and deliveries for /metrics. */
  constructor(config: AppConfig, logger: Logger, options: { withMetrics?: boolean } = {}) {
    this.#config = config;
    this.#logger = logger;
    this.#metrics = options.withMetrics ?? config.admin.listen !== null
      ? new ServerMetrics({ plugins: () => this.#manager.list(), queue: () => this.#queue?.summary() ?? null })
      : null;
    this.#tracing = config.tracing === null ? null : new Tracing(config.tracing);
    this.#manager = new PluginManager({
      directory: config.plugins.directory,
      wasmDirectory: config.plugins.wasmDirectory,
      logger,
      traceHooks: config.server.logHookCalls,
      ...(this.#metrics === null ? {} : { callStats: this.#metrics.calls }),
      ...(this.#tracing === null ? {} : { tracer: this.#tracing }),
    });
    this.#reloader = config.plugins.hotReload ? new HotReloader(this.#manager, logger) : null;
    this.#hooks = new HookRunner(this.#manager, logger, config.server.logHookCalls);
    const { storage } = config;
    this.#spool = storage.spool === 'disk' ? new Spool({ dir: storage.spoolDir, fsync: storage.fsync, groupCommitMs: storage.groupCommitMs, logger }) : null;
    this.#queue = this.#spool === null ? null : this.deliveryQueueFor(this.#spool);
    this.#pipeline = new MessagePipeline({
      hostname: config.server.hostname,
      quarantineDir: storage.quarantineDir,
      hooks: this.#hooks,
      logger,
      spool: this.#spool,
      queue: this.#queue,
      metrics: this.#metrics,
    });
  }

  get manager(): PluginManager {
    return this.#manager;
  }

  /**
   * A delivery queue for `spool` as this server delivers: its [delivery]
   * settings, message_delivered fired per recipient, bounces logged, the
   * metrics observer. Its own spool's queue, and a spool it took over from a
   * worker that died (src/cluster/spool-adopter.ts).
   */
  deliveryQueueFor(spool: Spool): DeliveryQueue {
    const { delivery, storage, server } = this.#config;
    return new DeliveryQueue({
      spool,
      mode: delivery.mode,
      maildirRoot: delivery.maildirRoot,
      relay: { host: delivery.relayHost, port: delivery.relayPort, name: server.hostname },
      fsync: storage.fsync,
      retryInitialMs: delivery.retryInitialMs,
      retryMaxMs: delivery.retryMaxMs,
      maxAttempts: delivery.maxAttempts,
      logger: this.#logger,
      onDelivered: (message, recipient, detail) => this.#delivered(message, recipient, detail),
      onBounced: (message, reason) => {
        this.#logger.error({ spool_id: message.id, reason }, 'message bounced');
      },
      ...(this.#metrics === null ? {} : { observer: this.#metrics }),
    });
  }

  /** The delivery queue (null without a spool): what the admin API lists and steers. */
  get queue(): DeliveryQueue | null {
    return this.#queue;
  }

  /** The metrics (null unless counted: see the constructor). */
  get metrics(): ServerMetrics | null {
    return this.#metrics;
  }

  get config(): AppConfig {
    return this.#config;
  }

  /** The port listened on (after start). */
  get port(): number {
    return this.#port;
  }

  #serverFields(): MetadataFields {
    const { server } = this.#config;
    return { hostname: server.hostname, host: server.host, port: String(this.#port || server.port), version: SERVER_VERSION };
  }

  /** Runs a notification hook and waits for it (start, stop, reload). */
  async #fire(hook: HookName, fields: () => MetadataFields): Promise<void> {
    await this.#hooks.run(hook, fields);
  }

  /**
   * A sandboxed plugin at a message stage gets the whole message copied in:
   * over metadata_value_bytes_max, or beyond what memory_mb can hold, the
   * call fails before the plugin runs and on_error answers (451 by default).
   * Said once at start, so the operator is not left to find it per message.
   */
  #warnSmallSandboxes(loaded: readonly PluginInstance[]): void {
    const messageBytes = this.#config.server.maxMessageBytes;
    for (const instance of loaded) {
      if ((instance.plugin.kind !== 'wasm' && instance.plugin.kind !== 'component') || !BODY_HOOKS.some((hook) => handlesHook(instance.plugin.metadata.handledHooks, hook))) continue;
      const entry = this.#config.plugins.plugins.find((each) => each.name === instance.name);
      const limits = entry?.options.limits ?? DEFAULT_SANDBOX_LIMITS;
      const memoryNeeded = Math.ceil((SANDBOX_MEMORY_PER_MESSAGE_BYTE * messageBytes) / 2 ** 20);
      if (limits.metadataValueBytesMax < messageBytes || limits.memoryMb < memoryNeeded) {
        this.#logger.warn(
          { plugin: instance.name, max_message_bytes: messageBytes, metadata_value_bytes_max: limits.metadataValueBytesMax, memory_mb: limits.memoryMb, memory_mb_advised: memoryNeeded },
          'sandboxed plugin cannot take the largest messages the server accepts: raise its limits (docs/sandbox.md), or such messages get its on_error reply',
        );
      }
    }
  }

  async start(): Promise<number> {
    // The plugins' counters (ABI 1.2) count where [cluster] says: Redis, or this process's memory.
    await configureHostCounters({ ...this.#config.cluster, logger: this.#logger });
    const { loaded, failed } = await this.#manager.loadFromConfig(this.#config.plugins);
    this.#logger.info({ loaded: loaded.map((p) => `${p.name}@${p.plugin.metadata.version} (${p.plugin.kind})`), failed: failed.length }, 'plugins loaded');
    const required = failed.filter((failure) => !failure.optional);
    if (required.length > 0) {
      // Fail closed: a configured plugin (a virus scanner, an auth check) that cannot run must not be silently missing.
      await this.#manager.deinit();
      throw requiredPluginsFailed(required);
    }
    this.#warnSmallSandboxes(loaded);
    try {
      this.#reloader?.start();
      await this.#fire('config_loaded', () => ({ config_path: this.#config.file ?? '(embedded default)' }));
      await this.#fire('server_starting', () => this.#serverFields());
      if (this.#spool) {
        await this.#spool.open();
        const recovered = await this.#queue!.recover();
        if (recovered > 0) this.#logger.info({ messages: recovered }, 'delivering what the spool held at start');
      }
      const smtp = new HookedSMTPServer(this.#smtpOptions(), {
        active: () => this.#hooks.wants('command_received'),
        check: (session, command, line) => this.#commandReceived(session, command, line),
      }, this.#config.server);
      smtp.on('error', (err: Error) => this.#logger.warn({ err: err.message }, 'smtp session error'));
      smtp.on('limit', (event: { reason: string }) => {
        this.#logger.info(event, 'client limit: connection refused or cut');
        this.#metrics?.connectionsRefused.inc({ reason: event.reason });
      });
      this.#smtp = smtp;
      this.#updateAuthOffer();
      smtp.listen(this.#config.server.port, this.#config.server.host);
      const server = (smtp as unknown as { server: import('node:net').Server }).server;
      // once() rejects on 'error' too, so either promise may carry the listen error.
      await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => Promise.reject(err))]).catch((err: unknown) => Promise.reject(listenError(err, this.#config.server.host, this.#config.server.port)));
      this.#port = (server.address() as AddressInfo).port;
      this.#logger.info({ host: this.#config.server.host, port: this.#port, test_mode: this.#config.testMode }, 'listening');
      await this.#fire('server_started', () => this.#serverFields());
    } catch (error) {
      // A port in use or a spool it cannot open: nothing started may outlive the refusal (the reloader's watcher would keep the process alive).
      await this.#abandonStart();
      throw error;
    }
    return this.#port;
  }

  async #abandonStart(): Promise<void> {
    const smtp = this.#smtp;
    this.#smtp = null;
    if (smtp) await new Promise<void>((done) => smtp.close(() => done()));
    await this.#queue?.stop();
    await this.#spool?.close();
    await this.#reloader?.stop();
    await this.#manager.deinit();
    await this.#tracing?.shutdown();
  }

  /** What stop() is doing now (for a shutdown that must give up waiting: it names what did not finish); null before stop(). */
  get stopStage(): string | null {
    return this.#stopStage;
  }

  #stopStage: string | null = null;

  /** Stops accepting, lets sessions in flight finish, then tears down. */
  async stop(): Promise<void> {
    this.#stopStage = 'running the server_stopping hook';
    await this.#fire('server_stopping', () => this.#serverFields());
    const smtp = this.#smtp;
    this.#smtp = null;
    this.#stopStage = `closing SMTP sessions (each gets up to ${CLOSE_TIMEOUT_MS} ms to finish)`;
    if (smtp) await new Promise<void>((done) => smtp.close(() => done()));
    this.#stopStage = 'stopping delivery';
    await this.#queue?.stop();
    this.#stopStage = 'closing the spool';
    await this.#spool?.close();
    this.#stopStage = 'stopping hot reload';
    await this.#reloader?.stop();
    this.#stopStage = 'running the server_stopped hook';
    await this.#fire('server_stopped', () => this.#serverFields());
    this.#stopStage = 'shutting plugins down';
    await this.#manager.deinit();
    this.#stopStage = 'sending the last trace spans';
    await this.#tracing?.shutdown();
    this.#stopStage = 'stopped';
    this.#logger.info('stopped');
  }

  /**
   * Applies a new config: plugins added, removed, or whose file, config or
   * options changed are loaded beside the running ones and swapped in; the
   * others keep running with their state. When a plugin the new config
   * requires (not `optional`) cannot be loaded, initialised or enabled, or
   * the swap would leave a running plugin without a dependency, nothing
   * changes and the coded error is thrown. Settings outside [plugins] need
   * a restart and are reported.
   */
  async reload(next: AppConfig): Promise<string[]> {
    const before = new Map(this.#config.plugins.plugins.map((entry) => [entry.name, entry]));
    const after = new Map(next.plugins.plugins.map((entry) => [entry.name, entry]));
    const same = (a: PluginEntryConfig | undefined, b: PluginEntryConfig | undefined): boolean => a !== undefined && b !== undefined && JSON.stringify(a) === JSON.stringify(b);
    // Turning [plugins] enabled on or off changes every entry.
    const toggled = next.plugins.enabled !== this.#config.plugins.enabled;
    const changed = [...new Set([...before.keys(), ...after.keys()])].filter((name) => toggled || !same(before.get(name), after.get(name)));
    const wanted = changed.map((name) => after.get(name)).filter((entry): entry is PluginEntryConfig => entry !== undefined && entry.enabled && next.plugins.enabled);
    const replacing = new Set(wanted.map((entry) => entry.name).filter((name) => this.#manager.get(name) !== undefined));
    const removing = new Set(changed.filter((name) => this.#manager.get(name) !== undefined && !replacing.has(name)));
    const staged = await this.#manager.stage(wanted.map(pluginSpec), replacing);
    const required = staged.failed.filter((failure) => !failure.optional);
    try {
      if (required.length > 0) throw requiredPluginsFailed(required);
      await this.#manager.commit(staged, removing);
    } catch (error) {
      await this.#manager.abort(staged);
      throw error;
    }
    for (const section of ['server', 'storage', 'delivery', 'admin', 'tracing', 'cluster'] as const) {
      if (JSON.stringify(this.#config[section]) !== JSON.stringify(next[section])) {
        this.#logger.warn({ section }, `[${section}] changed: it takes effect at the next restart`);
      }
    }
    this.#config = Object.freeze({ ...next, server: this.#config.server, storage: this.#config.storage, delivery: this.#config.delivery, admin: this.#config.admin, tracing: this.#config.tracing, cluster: this.#config.cluster });
    this.#updateAuthOffer();
    await this.#fire('config_changed', () => ({ config_path: next.file ?? '(embedded default)', changed_plugins: changed.join(',') }));
    this.#logger.info({ changed_plugins: changed }, 'config reloaded');
    return changed;
  }

  /** AUTH is offered only when it is on and some enabled authenticator can approve a login. */
  #authOffered(): boolean {
    return this.#config.server.auth && this.#hooks.handles('auth_started', 'authenticators');
  }

  /** Says why AUTH is off although configured, and keeps the live server's command list in step (after a reload). */
  #updateAuthOffer(): void {
    const offered = this.#authOffered();
    if (this.#config.server.auth && !offered) {
      this.#logger.warn('AUTH is not offered: [server] auth = true, but no enabled plugin is configured with authenticator = true (docs/configuration.md)');
    }
    const disabled = (this.#smtp as unknown as { options?: { disabledCommands?: string[] } } | null)?.options?.disabledCommands;
    if (disabled === undefined) return;
    const at = disabled.indexOf('AUTH');
    if (offered && at >= 0) disabled.splice(at, 1);
    if (!offered && at < 0) disabled.push('AUTH');
  }

  #smtpOptions(): ConstructorParameters<typeof HookedSMTPServer>[0] {
    const { server } = this.#config;
    const tls = server.tlsKey !== null && server.tlsCert !== null;
    const disabled = [...(tls ? [] : ['STARTTLS']), ...(this.#authOffered() ? [] : ['AUTH'])];
    const hooks = this.#hooks;
    return {
      name: server.hostname,
      banner: 'smtp-plugin-host',
      size: server.maxMessageBytes,
      maxClients: server.maxClients,
      closeTimeout: CLOSE_TIMEOUT_MS,
      logger: false,
      disabledCommands: disabled,
      hideSTARTTLS: !tls,
      ...(tls ? { key: readFileSync(server.tlsKey!), cert: readFileSync(server.tlsCert!) } : {}),
      authMethods: [...server.authMethods],
      authOptional: !server.authRequired,
      allowInsecureAuth: server.authInsecure,
      // A hook no plugin handles answers at once; one whose plugins all answer at once, too.
      onConnect: (session, callback) => {
        this.#metrics?.connects.inc();
        this.#tracing?.sessionOpened(session);
        return hooks.wants('connection_opened') ? this.#answer(() => this.#connectionOpened(session), callback) : callback();
      },
      onSecure: (socket, session, callback) => {
        if (this.#metrics !== null) {
          const tls = socket as { getProtocol?(): string | null; getCipher?(): { name: string } };
          this.#metrics.tlsConnections.inc({ protocol: tls.getProtocol?.() ?? 'unknown', cipher: tls.getCipher?.().name ?? 'unknown' });
        }
        return hooks.wants('connection_upgraded') ? this.#answer(() => this.#connectionUpgraded(socket, session), callback) : callback();
      },
      onAuth: (auth, session, callback) => this.#answer(() => this.#authenticate(auth, session), callback),
      onMailFrom: (address, session, callback) => {
        // smtp-server answers 530 itself only while AUTH is offered; with no
        // authenticator enabled it is not, and auth_required must still hold.
        if (server.authRequired && !session.user) {
          this.#metrics?.refused('auth', REPLIES.authRequired, undefined);
          return callback(replyError(REPLIES.authRequired));
        }
        return hooks.wants('command_validated') ? this.#answer(() => this.#validated(session, 'MAIL', address), callback) : callback();
      },
      onRcptTo: (address, session, callback) => {
        const verdict = decideRecipient(this.#config.policy, { clientIp: session.remoteAddress, authenticated: session.user !== undefined && session.user !== false, recipient: address.address, recipientCount: session.envelope.rcptTo.length });
        if (!verdict.accept) {
          const refused = recipientRefused(verdict.refusal, verdict.recipient);
          this.#logger.info({ session: session.id, remote_ip: session.remoteAddress, recipient: address.address, code: refused.code }, `recipient refused by [policy]: ${refused.text}`);
          this.#metrics?.refused('policy', refused, undefined);
          return callback(replyError(refused));
        }
        return hooks.wants('command_validated') ? this.#answer(() => this.#validated(session, 'RCPT', address), callback) : callback();
      },
      onData: (stream, session, callback) => {
        if (this.#tracing === null) return this.#answer(() => this.#pipeline.receive(stream, session), callback);
        const tracing = this.#tracing;
        tracing.messageStarted(session);
        return this.#answer(() => this.#pipeline.receive(stream, session), (error, text) => {
          const reply = error as (Error & { responseCode?: number }) | null | undefined;
          tracing.messageEnded(session.id, reply ? (reply.responseCode ?? 451) : 250, reply ? reply.message : (text ?? ''));
          callback(error, text);
        });
      },
      onClose: (session) => {
        this.#metrics?.disconnects.inc();
        this.#tracing?.sessionClosed(session);
        if (hooks.wants('connection_closed')) hooks.notify('connection_closed', () => sessionEncoding(session));
      },
    };
  }

  /**
   * Answers smtp-server's callback with what `work` gives: at once when it
   * needs no promise, else when it settles. A refusal becomes its reply; any
   * other failure is logged and answered by the reply policy.
   */
  #answer<T>(work: () => T | Promise<T>, callback: Callback<T>): void {
    const failed = (error: unknown): void => {
      if (error instanceof Error && 'responseCode' in error) return callback(error);
      this.#logger.error({ err: String(error), code: isHostError(error) ? error.code : undefined }, 'internal error in a session');
      const reply = errorReply(error);
      this.#metrics?.refused('error', reply, undefined);
      callback(replyError(reply));
    };
    let result: T | Promise<T>;
    try {
      result = work();
    } catch (error) {
      return failed(error);
    }
    if (result instanceof Promise) result.then((settled) => callback(null, settled), failed);
    else callback(null, result);
  }

  #refuse(hook: HookName, refusal: Refusal, session: { id: string }): never {
    this.#logger.info({ hook, plugin: refusal.plugin, reason: refusal.reason, code: refusal.code, session: session.id }, 'refused');
    this.#metrics?.refused(hook, refusal, refusal.plugin);
    throw replyError(refusal);
  }

  #connectionOpened(session: SMTPServerSession): void | Promise<void> {
    return andThen(this.#hooks.run('connection_opened', () => sessionEvent(session, { remote_port: String(session.remotePort) })), ({ refusal }) => {
      if (!refusal) return;
      this.#metrics?.connectionsRefused.inc({ reason: 'plugin' });
      this.#tracing?.sessionRefused(session.id, refusal.code);
      this.#refuse('connection_opened', refusal, session);
    });
  }

  #connectionUpgraded(socket: unknown, session: SMTPServerSession): void | Promise<void> {
    const tls = socket as { getProtocol?(): string | null; getCipher?(): { name: string } };
    return andThen(
      this.#hooks.run('connection_upgraded', () => sessionEvent(session, { tls_protocol: tls.getProtocol?.() ?? undefined, tls_cipher: tls.getCipher?.().name })),
      () => undefined,
    );
  }

  async #commandReceived(session: { id: string; remoteAddress: string }, command: string, line: string): Promise<{ code: number; text: string } | undefined> {
    const { refusal } = await this.#hooks.run('command_received', () => ({ session_id: session.id, remote_ip: session.remoteAddress, command, line }));
    if (refusal) {
      this.#logger.info({ hook: 'command_received', plugin: refusal.plugin, command, code: refusal.code }, 'refused');
      this.#metrics?.refused('command_received', refusal, refusal.plugin);
    }
    return refusal ?? undefined;
  }

  /**
   * A login succeeds only when a plugin the config names an authenticator
   * approved it (ran auth_started and continued) and no plugin refused. The
   * other plugins run auth_started first, without the password: they may
   * refuse a login (a rate limit), never approve one.
   */
  async #authenticate(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<{ user: string }> {
    const base = { ...sessionFields(session), method: auth.method, username: auth.username ?? '' };
    const failed = async (reason: string, refusal: Refusal): Promise<never> => {
      this.#metrics?.authFailures.inc({ reason });
      await this.#fire('auth_failed', () => ({ ...base, reason }));
      this.#refuse('auth_started', refusal, session);
    };
    if (!this.#hooks.handles('auth_started', 'authenticators')) {
      this.#logger.warn({ session: session.id }, 'AUTH refused: no enabled authenticator plugin handles auth_started');
      return failed('no authentication plugin', { ...REPLIES.authInvalid, plugin: undefined, reason: 'error' });
    }
    const others = await this.#hooks.run('auth_started', () => base, undefined, 'others');
    if (others.refusal) return failed(others.refusal.reason, others.refusal);
    const { outcome, refusal } = await this.#hooks.run('auth_started', () => ({ ...base, password: auth.password ?? '' }), undefined, 'authenticators');
    if (refusal) return failed(refusal.reason, refusal);
    // An authenticator that failed cannot have approved the password, whatever its on_error.
    if (outcome.skipped !== undefined) return failed('error', { ...REPLIES.authTemporary, plugin: outcome.skipped[0], reason: 'error' });
    // The only authenticators may have been disabled while the others ran: nobody approved.
    if (!(outcome.answered! > 0)) {
      this.#logger.warn({ session: session.id }, 'AUTH refused: no enabled authenticator answered auth_started');
      return failed('no authentication plugin', { ...REPLIES.authInvalid, plugin: undefined, reason: 'error' });
    }
    this.#metrics?.authSuccesses.inc();
    await this.#fire('auth_completed', () => base);
    return { user: auth.username ?? '' };
  }

  #validated(session: SMTPServerSession, command: 'MAIL' | 'RCPT', address: SMTPServerAddress): void | Promise<void> {
    const fields = (): EncodedMetadata => {
      const sender = command === 'MAIL' ? address.address : session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
      const event: MetadataFields = command === 'RCPT'
        ? { command, sender, sender_domain: domainOf(sender), recipient: address.address, recipient_domain: domainOf(address.address) }
        : { command, sender, sender_domain: domainOf(sender) };
      return sessionEvent(session, event);
    };
    return andThen(this.#hooks.run('command_validated', fields), ({ refusal }) => {
      if (refusal) this.#refuse('command_validated', refusal, session);
    });
  }

  async #delivered(message: SpooledMessage, recipient: string, detail: { mode: string; path?: string }): Promise<void> {
    await this.#fire('message_delivered', () => ({
      spool_id: message.id,
      message_id: message.extra.message_id,
      sender: message.envelope.from,
      sender_domain: domainOf(message.envelope.from),
      recipient,
      recipients: message.envelope.to.join(','),
      size: String(message.size),
      delivery_mode: detail.mode,
      delivered_path: detail.path,
    }));
  }
}
