import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/**
 * smtp-server has no event for each command line, and its logger cannot veto.
 * This subclass routes every command line through `onCommand` first: the
 * parser waits for the callback, so an async hook keeps pipelined commands in
 * order. It relies on smtp-server internals (`connect`, `_onCommand`,
 * `_nextHandler`, `_redactCredentials`): the version is pinned in
 * package.json and test/server/hooked-smtp-server.test.ts checks the contract.
 */

/** What the server decides for one command line: undefined lets it through. */
export interface CommandGate {
  /** False while no plugin handles command_received: commands then skip the gate entirely. */
  active(): boolean;
  check(session: { readonly id: string; readonly remoteAddress: string }, command: string, line: string): Promise<{ code: number; text: string } | undefined>;
}

interface ConnectionInternals {
  _nextHandler: unknown;
  _upgrading?: boolean;
  _ready?: boolean;
  session: { id: string; remoteAddress: string };
  _redactCredentials(commandName: string, line: string): { commandName: string; line: string };
  send(code: number, text: string): void;
}

type OnCommand = (this: ConnectionInternals, command: Buffer, callback: () => void) => void;

export class HookedSMTPServer extends SMTPServer {
  readonly #gate: CommandGate;

  constructor(options: SMTPServerOptions, gate: CommandGate) {
    super(options);
    this.#gate = gate;
  }

  /** Replaces smtp-server's connect(): the same, with a connection whose commands pass the gate. */
  override connect(socket: unknown, socketOptions: unknown): void {
    const connection = new SMTPConnection(this, socket, socketOptions) as unknown as ConnectionInternals & {
      on(event: string, listener: (arg: unknown) => void): void;
      init(): void;
      _onCommand: OnCommand;
    };
    const internals = this as unknown as { connections: Set<unknown>; _onError(err: unknown): void; _onClientConnect(data: unknown): void };
    const original = connection._onCommand;
    const gate = this.#gate;
    connection._onCommand = function (this: ConnectionInternals, command: Buffer, callback: () => void): void {
      // AUTH continuation lines carry credentials, and lines before the greeting
      // or during a TLS handshake are the server's own business.
      if (this._nextHandler || this._upgrading || !this._ready || !gate.active()) return original.call(this, command, callback);
      const text = (command || '').toString();
      const name = text.split(' ')[0]!.toUpperCase();
      const line = this._redactCredentials(name, text).line;
      gate.check(this.session, name, line).then(
        (refusal) => {
          if (refusal === undefined) return original.call(this, command, callback);
          this.send(refusal.code, refusal.text);
          setImmediate(callback);
        },
        () => {
          this.send(451, '4.3.0 Temporary failure, try again later');
          setImmediate(callback);
        },
      );
    };
    internals.connections.add(connection);
    connection.on('error', (err) => internals._onError(err));
    connection.on('connect', (data) => internals._onClientConnect(data));
    connection.init();
  }
}
