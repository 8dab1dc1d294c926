import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerSession } from 'smtp-server';
import { handlesHook, type HookName } from '../abi/hooks.js';
import type { AppConfig } from '../config/config.js';
import type { PluginEntryConfig } from '../config/plugins-config.js';
import { DeliveryQueue } from '../delivery/delivery-queue.js';
import { isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import { HotReloader } from '../manager/hot-reload.js';
import { PluginManager } from '../manager/plugin-manager.js';
import type { HookContext, MetadataValue } from '../plugin/hook-context.js';
import type { PluginInstance } from '../plugin/lifecycle.js';
import { DEFAULT_SANDBOX_LIMITS } from '../plugin/options.js';
import { quarantineFolder, Spool, type SpooledMessage } from '../storage/spool.js';
import { SERVER_VERSION } from '../version.js';
import { HookRunner, QUARANTINE_KEY, QUARANTINE_PATH_KEY, QUARANTINE_PATH_REFUSED, replyError, type Refusal } from './hook-runner.js';
import { HookedSMTPServer } from './hooked-smtp-server.js';
import { listenError } from './listen-error.js';
import { checkHeaders } from './message-headers.js';
import { decideRecipient, replyText } from './relay-policy.js';

/** The hooks whose context carries message_body. */
const MESSAGE_BODY_HOOKS: readonly HookName[] = ['message_received', 'message_validated', 'message_filtered'];
/**
 * Sandbox memory per byte of the largest message: the encoded copy and the
 * guest's own copy live side by side while loading, and the guest allocator
 * rounds large blocks up to a power of two (measured: a 25 MiB message needs
 * more than 64 MiB and fits in 128 MiB).
 */
const SANDBOX_MEMORY_PER_MESSAGE_BYTE = 4;

/** How long stop() lets open sessions finish before closing them. */
const CLOSE_TIMEOUT_MS = 5000;

type Metadata = Record<string, MetadataValue | undefined>;

function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

/** Keys a message-stage plugin set, carried to the later stages (the filter verdicts reach message_stored). */
function carried(context: HookContext | null, into: Metadata): void {
  if (context === null) return;
  for (const [key, value] of context.pluginChanges()) if (key !== 'message_body') into[key] = value;
}

/**
 * The mail server: smtp-server with every one of the guide's 19 hooks fired
 * where its name says, a durable spool before the 250 reply, and delivery.
 * See docs/hooks.md for each hook's metadata and what stop and cancel do.
 */
export class MailServer {
  #config: AppConfig;
  readonly #logger: Logger;
  readonly #manager: PluginManager;
  readonly #hooks: HookRunner;
  readonly #spool: Spool | null;
  readonly #queue: DeliveryQueue | null;
  #smtp: HookedSMTPServer | null = null;
  readonly #reloader: HotReloader | null;
  /** Every hook event is logged, handled or not (log_hook_calls). */
  readonly #traced: boolean;
  #port = 0;

  constructor(config: AppConfig, logger: Logger) {
    this.#config = config;
    this.#logger = logger;
    this.#manager = new PluginManager({
      directory: config.plugins.directory,
      wasmDirectory: config.plugins.wasmDirectory,
      logger,
      traceHooks: config.server.logHookCalls,
      // Always: a reload may reopen a library whose old instance still has a
      // hook call running on a pool thread (a blocking plugin); dlopen would
      // hand back the same globals, and both instances would share them.
      copyNative: true,
    });
    this.#reloader = config.plugins.hotReload ? new HotReloader(this.#manager, logger) : null;
    this.#traced = config.server.logHookCalls;
    this.#hooks = new HookRunner(this.#manager, logger, this.#traced);
    const { storage, delivery } = config;
    this.#spool = storage.spool === 'disk' ? new Spool({ dir: storage.spoolDir, fsync: storage.fsync, groupCommitMs: storage.groupCommitMs, logger }) : null;
    this.#queue = this.#spool === null
      ? null
      : new DeliveryQueue({
          spool: this.#spool,
          mode: delivery.mode,
          maildirRoot: delivery.maildirRoot,
          relay: { host: delivery.relayHost, port: delivery.relayPort, name: config.server.hostname },
          fsync: storage.fsync,
          retryInitialMs: delivery.retryInitialMs,
          retryMaxMs: delivery.retryMaxMs,
          maxAttempts: delivery.maxAttempts,
          logger,
          onDelivered: (message, recipient, detail) => this.#delivered(message, recipient, detail),
          onBounced: (message, reason) => {
            this.#logger.error({ spool_id: message.id, reason }, 'message bounced');
          },
        });
  }

  get manager(): PluginManager {
    return this.#manager;
  }

  get config(): AppConfig {
    return this.#config;
  }

  /** The port listened on (after start). */
  get port(): number {
    return this.#port;
  }

  #serverMetadata(): Metadata {
    const { server } = this.#config;
    return { hostname: server.hostname, host: server.host, port: String(this.#port || server.port), version: SERVER_VERSION };
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
      if (instance.plugin.kind === 'native' || !MESSAGE_BODY_HOOKS.some((hook) => handlesHook(instance.plugin.metadata.handledHooks, hook))) continue;
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
    const { loaded, failed } = this.#manager.loadFromConfig(this.#config.plugins);
    this.#logger.info({ loaded: loaded.map((p) => `${p.name}@${p.plugin.metadata.version} (${p.plugin.kind})`), failed: failed.length }, 'plugins loaded');
    this.#warnSmallSandboxes(loaded);
    this.#reloader?.start();
    await this.#hooks.run('config_loaded', { config_path: this.#config.file ?? '(embedded default)' });
    await this.#hooks.run('server_starting', this.#serverMetadata());
    if (this.#spool) {
      await this.#spool.open();
      const recovered = await this.#queue!.recover();
      if (recovered > 0) this.#logger.info({ messages: recovered }, 'delivering what the spool held at start');
    }
    const smtp = new HookedSMTPServer(this.#smtpOptions(), {
      active: () => this.#wants('command_received'),
      check: (session, command, line) => this.#commandReceived(session, command, line),
    }, this.#config.server);
    smtp.on('error', (err: Error) => this.#logger.warn({ err: err.message }, 'smtp session error'));
    smtp.on('limit', (event: object) => this.#logger.info(event, 'client limit: connection refused or cut'));
    this.#smtp = smtp;
    smtp.listen(this.#config.server.port, this.#config.server.host);
    const server = (smtp as unknown as { server: import('node:net').Server }).server;
    // once() rejects on 'error' too, so either promise may carry the listen error.
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => Promise.reject(err))]).catch((err: unknown) => Promise.reject(listenError(err, this.#config.server.host, this.#config.server.port)));
    this.#port = (server.address() as AddressInfo).port;
    this.#logger.info({ host: this.#config.server.host, port: this.#port, test_mode: this.#config.testMode }, 'listening');
    await this.#hooks.run('server_started', this.#serverMetadata());
    return this.#port;
  }

  /** Stops accepting, lets sessions in flight finish, then tears down. */
  async stop(): Promise<void> {
    await this.#hooks.run('server_stopping', this.#serverMetadata());
    const smtp = this.#smtp;
    this.#smtp = null;
    if (smtp) await new Promise<void>((done) => smtp.close(() => done()));
    await this.#queue?.stop();
    await this.#reloader?.stop();
    await this.#hooks.run('server_stopped', this.#serverMetadata());
    this.#manager.deinit();
    this.#logger.info('stopped');
  }

  /**
   * Applies a new config: plugins added, removed, or whose file, config or
   * options changed are (re)loaded; the others keep running with their
   * state. Settings outside [plugins] need a restart and are reported.
   */
  async reload(next: AppConfig): Promise<string[]> {
    const before = new Map(this.#config.plugins.plugins.map((entry) => [entry.name, entry]));
    const after = new Map(next.plugins.plugins.map((entry) => [entry.name, entry]));
    const same = (a: PluginEntryConfig | undefined, b: PluginEntryConfig | undefined): boolean => a !== undefined && b !== undefined && JSON.stringify(a) === JSON.stringify(b);
    const changed = [...new Set([...before.keys(), ...after.keys()])].filter((name) => !same(before.get(name), after.get(name)));
    // Plugins that depend on a changed one go down with it and come back with it.
    const down = new Set<string>();
    for (const name of changed) {
      if (this.#manager.get(name) && !down.has(name)) for (const each of this.#manager.unloadPlugin(name, { cascade: true })) down.add(each);
    }
    const up = [...after.values()].filter((entry) => entry.enabled && next.plugins.enabled && !this.#manager.get(entry.name) && (changed.includes(entry.name) || down.has(entry.name)));
    this.#manager.loadPlugins(up.map((entry) => ({ path: entry.file, name: entry.name, config: entry.config, options: entry.options })));
    for (const section of ['server', 'storage', 'delivery'] as const) {
      if (JSON.stringify(this.#config[section]) !== JSON.stringify(next[section])) {
        this.#logger.warn({ section }, `[${section}] changed: it takes effect at the next restart`);
      }
    }
    this.#config = Object.freeze({ ...next, server: this.#config.server, storage: this.#config.storage, delivery: this.#config.delivery });
    await this.#hooks.run('config_changed', { config_path: next.file ?? '(embedded default)', changed_plugins: changed.join(',') });
    this.#logger.info({ changed_plugins: changed }, 'config reloaded');
    return changed;
  }

  /** Whether firing `hook` does anything: a plugin handles it, or every hook is logged. */
  #wants(hook: HookName): boolean {
    return this.#traced || this.#hooks.handles(hook);
  }

  #smtpOptions(): ConstructorParameters<typeof HookedSMTPServer>[0] {
    const { server } = this.#config;
    const tls = server.tlsKey !== null && server.tlsCert !== null;
    const disabled = [...(tls ? [] : ['STARTTLS']), ...(server.auth ? [] : ['AUTH'])];
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
      // A hook no plugin handles answers at once: no promise, no context.
      onConnect: (session, callback) => (this.#wants('connection_opened') ? this.#settle(this.#connectionOpened(session), callback) : callback()),
      onSecure: (socket, session, callback) => this.#settle(this.#connectionUpgraded(socket, session), callback),
      onAuth: (auth, session, callback) => this.#settle(this.#authenticate(auth, session), callback),
      onMailFrom: (address, session, callback) => (this.#wants('command_validated') ? this.#settle(this.#validated(session, 'MAIL', address), callback) : callback()),
      onRcptTo: (address, session, callback) => {
        const verdict = decideRecipient(this.#config.policy, { clientIp: session.remoteAddress, authenticated: Boolean(session.user), recipient: address.address, recipientCount: session.envelope.rcptTo.length });
        if (!verdict.accept) {
          this.#logger.info({ session: session.id, remote_ip: session.remoteAddress, recipient: address.address, code: verdict.code }, `recipient refused by [policy]: ${verdict.text}`);
          return callback(replyError({ code: verdict.code, text: replyText(verdict) }));
        }
        return this.#wants('command_validated') ? this.#settle(this.#validated(session, 'RCPT', address), callback) : callback();
      },
      onData: (stream, session, callback) => this.#settle(this.#message(stream, session), callback),
      onClose: (session) => {
        this.#hooks.run('connection_closed', this.#sessionMetadata(session)).catch((err: unknown) => this.#logger.error({ err: String(err) }, 'connection_closed hook failed'));
      },
    };
  }

  /** Bridges a promise to smtp-server's callback; a refusal becomes its reply, an internal failure a 451. */
  #settle<T>(work: Promise<T>, callback: (err?: Error | null, result?: T) => void): void {
    work.then(
      (result) => callback(null, result),
      (error: unknown) => {
        if (error instanceof Error && 'responseCode' in error) return callback(error);
        this.#logger.error({ err: String(error), code: isHostError(error) ? error.code : undefined }, 'internal error in a session');
        callback(replyError({ code: 451, text: '4.3.0 Temporary server error, try again later' }));
      },
    );
  }

  #refuse(hook: HookName, refusal: Refusal, session: SMTPServerSession): never {
    this.#logger.info({ hook, plugin: refusal.plugin, reason: refusal.reason, code: refusal.code, session: session.id }, 'refused');
    throw replyError(refusal);
  }

  #sessionMetadata(session: SMTPServerSession): Metadata {
    return {
      session_id: session.id,
      remote_ip: session.remoteAddress,
      client_hostname: session.clientHostname,
      helo: session.hostNameAppearsAs || undefined,
      username: typeof session.user === 'string' ? session.user : undefined,
    };
  }

  async #connectionOpened(session: SMTPServerSession): Promise<void> {
    const { refusal } = await this.#hooks.run('connection_opened', { ...this.#sessionMetadata(session), remote_port: String(session.remotePort) }, true);
    if (refusal) this.#refuse('connection_opened', refusal, session);
  }

  async #connectionUpgraded(socket: unknown, session: SMTPServerSession): Promise<void> {
    const tls = socket as { getProtocol?(): string | null; getCipher?(): { name: string } };
    await this.#hooks.run('connection_upgraded', {
      ...this.#sessionMetadata(session),
      tls_protocol: tls.getProtocol?.() ?? undefined,
      tls_cipher: tls.getCipher?.().name,
    });
  }

  async #commandReceived(session: { id: string; remoteAddress: string }, command: string, line: string): Promise<{ code: number; text: string } | undefined> {
    const { refusal } = await this.#hooks.run('command_received', { session_id: session.id, remote_ip: session.remoteAddress, command, line }, true);
    if (refusal) this.#logger.info({ hook: 'command_received', plugin: refusal.plugin, command, code: refusal.code }, 'refused');
    return refusal ?? undefined;
  }

  async #authenticate(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<{ user: string }> {
    const base = { ...this.#sessionMetadata(session), method: auth.method, username: auth.username ?? '' };
    if (!this.#hooks.handles('auth_started')) {
      // With no plugin to check credentials, nobody can log in.
      this.#logger.warn({ session: session.id }, 'AUTH refused: no enabled plugin handles auth_started');
      await this.#hooks.run('auth_failed', { ...base, reason: 'no authentication plugin' });
      throw replyError({ code: 535, text: '5.7.8 Authentication credentials invalid' });
    }
    const { refusal } = await this.#hooks.run('auth_started', { ...base, password: auth.password ?? '' }, true);
    if (refusal) {
      await this.#hooks.run('auth_failed', { ...base, reason: refusal.reason });
      this.#refuse('auth_started', refusal, session);
    }
    await this.#hooks.run('auth_completed', base);
    return { user: auth.username ?? '' };
  }

  async #validated(session: SMTPServerSession, command: 'MAIL' | 'RCPT', address: SMTPServerAddress): Promise<void> {
    const sender = command === 'MAIL' ? address.address : session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const metadata: Metadata = { ...this.#sessionMetadata(session), command, sender, sender_domain: domainOf(sender) };
    if (command === 'RCPT') Object.assign(metadata, { recipient: address.address, recipient_domain: domainOf(address.address) });
    const { refusal } = await this.#hooks.run('command_validated', metadata, true);
    if (refusal) this.#refuse('command_validated', refusal, session);
  }

  /** Reads DATA into memory within the size limit; rejects when the client went away mid-message. */
  async #read(stream: Readable & { sizeExceeded?: boolean }): Promise<Buffer | null> {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      if (stream.sizeExceeded) return;
      chunks.push(chunk);
      size += chunk.length;
    });
    await new Promise<void>((done, fail) => {
      stream.once('end', done);
      stream.once('error', fail);
    });
    return stream.sizeExceeded ? null : Buffer.concat(chunks, size);
  }

  async #message(stream: Readable, session: SMTPServerSession): Promise<string> {
    const raw = await this.#read(stream);
    // smtp-server answers 552 itself for a message over the size limit.
    if (raw === null) throw replyError({ code: 552, text: '5.3.4 Message too big' });
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const headers = checkHeaders(raw);
    const messageId = headers.messageId ?? `<${Date.now().toString(36)}.${session.id}@${this.#config.server.hostname}>`;
    // Built only when some hook will see it: the common no-plugin path skips it.
    let built: Metadata | null = null;
    const metadata = (): Metadata =>
      (built ??= {
        ...this.#sessionMetadata(session),
        sender,
        sender_domain: domainOf(sender),
        recipients: recipients.join(','),
        recipient: recipients[0],
        recipient_count: String(recipients.length),
        message_id: messageId,
        subject: headers.subject ?? undefined,
        header_from: headers.from ?? undefined,
        size: String(raw.length),
      });
    let quarantined = false;
    let quarantinePath: string | undefined;
    for (const hook of ['message_received', 'message_validated', 'message_filtered'] as const) {
      if (hook === 'message_validated' && headers.problem !== null) {
        this.#logger.info({ session: session.id, problem: headers.problem }, 'message refused by header checks');
        throw replyError({ code: 550, text: `5.6.0 Malformed message headers: ${headers.problem}` });
      }
      if (!this.#wants(hook)) continue;
      const { context, refusal } = await this.#hooks.run(hook, { ...metadata(), message_body: raw }, true);
      carried(context, metadata());
      if (!quarantined && context?.getMetadata(QUARANTINE_KEY) === 'true') {
        quarantined = true;
        quarantinePath = context.getMetadata(QUARANTINE_PATH_KEY);
      }
      // A cancel that asks for quarantine means "not to the mailbox", not "refuse".
      if (refusal && !(quarantined && refusal.reason !== 'error')) this.#refuse(hook, refusal, session);
      if (quarantined) break;
    }
    if (this.#spool === null) return '2.0.0 Ok: accepted';
    const envelope = { from: sender, to: recipients };
    const stored = await this.#spool.store(envelope, raw, { message_id: messageId });
    if (quarantined) {
      let path: string;
      try {
        path = await this.#quarantine(stored, quarantinePath, { message_id: messageId, session_id: session.id });
      } catch (error) {
        // Left in the spool, a quarantined message would be delivered at the next start.
        await this.#spool.remove(stored.id);
        throw error;
      }
      if (this.#wants('message_stored')) await this.#hooks.run('message_stored', { ...metadata(), spool_id: stored.id, message_path: path, quarantined: 'true' });
      this.#logger.info({ spool_id: stored.id, message_id: messageId }, 'message quarantined');
      return `2.0.0 Ok: queued as ${stored.id}`;
    }
    if (this.#wants('message_stored')) await this.#hooks.run('message_stored', { ...metadata(), spool_id: stored.id, message_path: stored.path, quarantined: 'false' });
    this.#queue!.enqueue(stored);
    return `2.0.0 Ok: queued as ${stored.id}`;
  }

  /**
   * Moves a stored message into quarantine: into the folder a plugin named
   * (quarantine_path) when it lies inside quarantine_dir, else into
   * quarantine_dir itself, with a warning. A folder that cannot be written
   * falls back the same way, so the plugin's choice never loses the message.
   */
  async #quarantine(stored: SpooledMessage, requested: string | undefined, reason: Record<string, string>): Promise<string> {
    const spool = this.#spool!;
    const base = this.#config.storage.quarantineDir;
    if (requested === undefined) return spool.quarantine(stored, base, reason);
    const warn = (why: string): void => {
      this.#logger.warn({ code: QUARANTINE_PATH_REFUSED, spool_id: stored.id, quarantine_path: requested, quarantine_dir: base, why }, 'quarantine_path refused: the message is kept in quarantine_dir');
    };
    const withPath = { ...reason, quarantine_path: requested };
    const folder = await quarantineFolder(base, requested);
    if (folder.refused !== null) {
      warn(folder.refused);
    } else {
      try {
        return await spool.quarantine(stored, folder.dir, withPath);
      } catch (error) {
        warn(`cannot write there: ${(error as Error).message}`);
      }
    }
    return spool.quarantine(stored, base, withPath);
  }

  async #delivered(message: SpooledMessage, recipient: string, detail: { mode: string; path?: string }): Promise<void> {
    await this.#hooks.run('message_delivered', {
      spool_id: message.id,
      message_id: message.extra.message_id,
      sender: message.envelope.from,
      sender_domain: domainOf(message.envelope.from),
      recipient,
      recipients: message.envelope.to.join(','),
      size: String(message.size),
      delivery_mode: detail.mode,
      delivered_path: detail.path,
    });
  }
}
