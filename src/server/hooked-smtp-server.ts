import type { Socket } from 'node:net';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { networkMatcher, parseNetwork, type Network } from '../config/networks.js';
import { REPLIES, timedOut } from './reply-policy.js';
import { ClientSlots, ConnectionDeadline, DEFAULT_CLIENT_LIMITS, type ClientLimits, type DeadlineReason } from './client-limits.js';
import { ReplyBatch } from './reply-batch.js';
import { parseSimpleAddress } from './simple-address.js';

/**
 * smtp-server has no event for each command line, its logger cannot veto,
 * and its only timeout is an idle one that a client trickling a byte every
 * few seconds resets forever. This subclass builds connections that route
 * every command line through `onCommand` first (the parser waits for the
 * callback, so an async hook keeps pipelined commands in order), that run
 * the deadlines of client-limits.ts, that count against a per-IP cap, and
 * whose replies are written together at the end of each event-loop turn
 * (reply-batch.ts). It relies on smtp-server internals (`connect`,
 * `_onCommand`, `send`, `upgrade`, `_socket`, `_upgrading`,
 * `_sendGreeting`, `_createParser`, `_onClose`, `_nextHandler`,
 * `_redactCredentials`, `_parseAddressCommand`, `_getHandler`, and the parser's `_write`, `_endDataMode`,
 * `continue`): the version is pinned in package.json and
 * test/server/hooked-smtp-server.test.ts checks the contract.
 */

/** What the server decides for one command line: undefined lets it through. */
export interface CommandGate {
  /** False while no plugin handles command_received: commands then skip the gate entirely. */
  active(): boolean;
  check(session: { readonly id: string; readonly remoteAddress: string }, command: string, line: string): Promise<{ code: number; text: string } | undefined>;
}

/** Emitted as 'limit' when a client is refused or cut, for the server's log. */
export interface LimitEvent {
  readonly reason: DeadlineReason | 'max_clients_per_ip';
  readonly remote_ip: string;
  readonly session?: string;
}

/**
 * How long a refused connection may keep its socket after the 421 while the
 * client has not closed its side (smtp-server's own HALF_CLOSE_TIMEOUT).
 */
const REFUSED_LINGER_MS = 5000;
/**
 * smtp-server's idle socketTimeout is kept just past command_timeout_ms, so
 * that our deadlines always fire first where they apply (idle time never
 * exceeds the time without a complete line) and it still ends the cases they
 * do not cover (a client that never reads our replies). Its default, 60 s,
 * would otherwise cut clients well inside a longer configured limit.
 */
const SOCKET_TIMEOUT_SLACK_MS = 1000;

/** The parser's internals this file relies on. */
interface Parser {
  _dataMode: boolean;
  _write(chunk: Buffer, encoding: BufferEncoding | 'buffer', next: (error?: Error | null) => void): void;
  _endDataMode(...args: unknown[]): void;
  continue(): void;
}

interface ConnectionHooks {
  readonly gate: CommandGate;
  readonly deadline: ConnectionDeadline;
  readonly replies: ReplyBatch;
  /** Stops the deadlines and gives the per-IP slot back. Idempotent. */
  readonly ended: () => void;
}

/** Wraps one parser instance (a connection gets a new one after STARTTLS) so the deadline sees DATA. */
function watchParser(parser: Parser, deadline: ConnectionDeadline): void {
  const write = parser._write;
  parser._write = function (this: Parser, chunk, encoding, next): void {
    if (this._dataMode) deadline.dataReceived(chunk.length);
    write.call(this, chunk, encoding, next);
  };
  const endDataMode = parser._endDataMode;
  parser._endDataMode = function (this: Parser, ...args: unknown[]): void {
    deadline.dataEnded();
    endDataMode.apply(this, args);
  };
  // smtp-server calls continue() once the reply to the message is sent: the next command is due.
  const resume = parser.continue;
  parser.continue = function (this: Parser): void {
    deadline.awaitCommand();
    resume.call(this);
  };
}

/**
 * Command name -> smtp-server's handler method. The engine looks a handler up
 * as this['handler_' + name], twice per command: a fresh string built and
 * hashed each time (3.4 us per message under smtp-source, CPU profile). Only
 * names that have a handler are kept, so a client's made-up commands cannot
 * grow it past the engine's own handler count.
 */
const HANDLERS = new Map<string, NonNullable<ReturnType<SMTPConnection['_getHandler']>>>();

class GatedConnection extends SMTPConnection {
  /** Set right after construction; undefined while smtp-server's constructor runs. */
  declare hooks: ConnectionHooks | undefined;

  override _sendGreeting(): void {
    super._sendGreeting();
    this.hooks?.deadline.awaitCommand();
  }

  override _createParser(): ReturnType<SMTPConnection['_createParser']> {
    const parser = super._createParser();
    if (this.hooks) watchParser(parser as unknown as Parser, this.hooks.deadline);
    return parser;
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    const socket = this._socket;
    // The same condition under which smtp-server writes at all: nothing is held for a socket that will not be written.
    if (this.hooks && !this._upgrading && !socket.destroyed && socket.readyState === 'open') this.hooks.replies.hold(socket);
    super.send(code, data, context);
  }

  override _getHandler(command: string): ReturnType<SMTPConnection['_getHandler']> {
    const known = HANDLERS.get(command);
    if (known !== undefined) return known;
    const handler = super._getHandler(command);
    if (typeof handler === 'function') HANDLERS.set(command, handler);
    return handler;
  }

  /** The common `MAIL FROM:<a@b.example>` line parsed at a fraction of the engine's cost (simple-address.ts); any other line as smtp-server parses it. */
  override _parseAddressCommand(name: string, command: Buffer | string): ReturnType<SMTPConnection['_parseAddressCommand']> {
    if (!this._server.options.lenientAddressParsing) {
      const simple = parseSimpleAddress(name, String(command));
      if (simple !== undefined) return simple;
    }
    return super._parseAddressCommand(name, command);
  }

  override upgrade(callback: () => void, secureCallback?: () => void): void {
    // The 220 to STARTTLS goes out in clear before the TLS socket takes the handle.
    this.hooks?.replies.release(this._socket);
    super.upgrade(callback, secureCallback);
  }

  override close(): void {
    this.hooks?.deadline.dispose();
    super.close();
  }

  override _onClose(): void {
    super._onClose();
    this.hooks?.ended();
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    const hooks = this.hooks;
    if (hooks === undefined) return super._onCommand(command, callback);
    hooks.deadline.commandReceived();
    // Armed before the parser moves on: a pipelined line it dispatches at once clears it again.
    const next = (): void => {
      const parser = this._parser as unknown as Parser | false;
      if (parser && parser._dataMode) hooks.deadline.awaitData();
      else hooks.deadline.awaitCommand();
      callback?.();
    };
    // AUTH continuation lines carry credentials, and lines before the greeting
    // or during a TLS handshake are the server's own business.
    if (this._nextHandler || this._upgrading || !this._ready || !hooks.gate.active()) return super._onCommand(command, next);
    const text = (command || '').toString();
    const name = text.split(' ')[0]!.toUpperCase();
    const line = this._redactCredentials(name, text).line;
    hooks.gate
      .check(this.session, name, line)
      .then(
        (refusal) => {
          if (refusal === undefined) return super._onCommand(command, next);
          this.send(refusal.code, refusal.text);
          setImmediate(next);
        },
        () => {
          this.send(REPLIES.commandGateError.code, REPLIES.commandGateError.text);
          setImmediate(next);
        },
      )
      // smtp-server's own handling of the command threw: reported as a session error, never an unhandled rejection.
      .catch((error: unknown) => this.emit('error', error instanceof Error ? error : new Error(String(error))));
  }
}

export class HookedSMTPServer extends SMTPServer {
  readonly #gate: CommandGate;
  readonly #limits: ClientLimits;
  readonly #slots: ClientSlots;
  readonly #replies = new ReplyBatch();
  /** Clients the per-IP cap does not apply to (trusted networks, as Postfix exempts $mynetworks). */
  readonly #uncapped: (ip: string) => boolean;

  constructor(options: SMTPServerOptions, gate: CommandGate, limits: ClientLimits = DEFAULT_CLIENT_LIMITS) {
    super({ ...options, socketTimeout: limits.commandTimeoutMs + SOCKET_TIMEOUT_SLACK_MS });
    this.#gate = gate;
    this.#limits = Object.freeze({ ...limits });
    this.#slots = new ClientSlots(limits.maxClientsPerIp);
    this.#uncapped = networkMatcher(
      limits.maxClientsPerIpExceptions.map((text) => {
        const network = parseNetwork(text);
        if (typeof network === 'string') throw new TypeError(`maxClientsPerIpExceptions: ${network}`);
        return network satisfies Network;
      }),
    );
  }

  /** Connections per client IP, as counted for max_clients_per_ip. */
  get slots(): ClientSlots {
    return this.#slots;
  }

  /** Replaces smtp-server's connect(): the same, with a gated, time-bounded connection that holds a per-IP slot. */
  override connect(socket: Socket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    const connection = new GatedConnection(this, socket, socketOptions);
    const ip = connection.remoteAddress;
    const release = this.#uncapped(ip) ? () => undefined : this.#slots.acquire(ip);
    if (release === null) return this.#refuseBusy(socket, ip);
    let ended = false;
    const deadline = new ConnectionDeadline(this.#limits, (reason) => {
      this.emit('limit', { reason, remote_ip: ip, session: connection.id } satisfies LimitEvent);
      const timeout = timedOut(connection.name);
      connection.send(timeout.code, timeout.text, false);
    });
    connection.hooks = {
      gate: this.#gate,
      deadline,
      replies: this.#replies,
      ended: () => {
        if (ended) return;
        ended = true;
        deadline.dispose();
        release();
      },
    };
    if (connection._parser) watchParser(connection._parser as unknown as Parser, deadline);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data: unknown) => (this as unknown as { _onClientConnect(data: unknown): void })._onClientConnect(data));
    connection.init();
  }

  /** Postfix's answer to one client too many (anvil): 421 4.7.0, then close. The socket never becomes a session. */
  #refuseBusy(socket: Socket, ip: string): void {
    this.emit('limit', { reason: 'max_clients_per_ip', remote_ip: ip } satisfies LimitEvent);
    socket.on('error', () => undefined);
    const linger = setTimeout(() => socket.destroy(), REFUSED_LINGER_MS);
    linger.unref();
    socket.once('close', () => clearTimeout(linger));
    socket.end(`${REPLIES.tooManyConnections.code} ${REPLIES.tooManyConnections.text}\r\n`);
    // Read and drop what the client sends, so its FIN is seen and the socket goes at once.
    socket.resume();
  }
}
