/**
 * The milter side of the protocol: this server's plugin chain (native,
 * process-isolated or sandboxed, as config.toml says) served to an MTA such
 * as Postfix (`smtpd_milters = inet:127.0.0.1:8891`), so Postfix users run
 * these plugins without changing MTA. Each milter connection is one SMTP
 * session at the MTA; its steps fire the same hooks the SMTP server fires:
 *
 *   connect        -> connection_opened
 *   helo           -> command_received (EHLO)
 *   mail, rcpt     -> command_validated (MAIL, RCPT)
 *   end of message -> message_received, message_validated, message_filtered
 *   close          -> connection_closed
 *
 * A refusal becomes the MTA's reply (SMFIR_REPLYCODE with the plugin's code
 * and text); a plugin's quarantine becomes SMFIR_QUARANTINE; a plugin that
 * fails answers by its on_error policy, tempfail by default. Each
 * connection's frames are handled one at a time, in order.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';
import type { HookName } from '../abi/hooks.js';
import { isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MetadataFields } from '../plugin/metadata-wire.js';
import type { MetadataValue } from '../plugin/hook-context.js';
import type { HookRunner } from '../server/hook-runner.js';
import { BODY_HOOKS, BODY_KEY } from '../server/hook-table.js';
import { QUARANTINE_KEY } from '../server/hook-runner.js';
import { domainOf } from '../server/session-fields.js';
import type { Reply } from '../server/reply-policy.js';
import { bareAddress, formatMilterAddress, type MilterAddress } from './address.js';
import { decodeCommand, encodeReply, FrameDecoder, type MilterCommand, type MilterReply } from './codec.js';
import {
  MILTER_PROTOCOL_VERSION,
  SMFIA_INET,
  SMFIA_INET6,
  SMFIC_ABORT,
  SMFIC_BODY,
  SMFIC_BODYEOB,
  SMFIC_CONNECT,
  SMFIC_DATA,
  SMFIC_EOH,
  SMFIC_HEADER,
  SMFIC_HELO,
  SMFIC_MACRO,
  SMFIC_MAIL,
  SMFIC_OPTNEG,
  SMFIC_QUIT,
  SMFIC_QUIT_NC,
  SMFIC_RCPT,
  SMFIC_UNKNOWN,
  SMFIF_QUARANTINE,
  SMFIP_HDR_LEADSPC,
  SMFIP_NOUNKNOWN,
  SMFIP_NR_BODY,
  SMFIP_NR_HDR,
  SMFIR_CONTINUE,
  SMFIR_QUARANTINE,
  SMFIR_REPLYCODE,
  SMFIR_TEMPFAIL,
} from './protocol.js';

export interface MilterServerOptions {
  readonly listen: MilterAddress;
  readonly hooks: HookRunner;
  readonly logger: Logger;
  /** The largest message taken (headers and body, as the MTA sends them); past it: 552 5.3.4. */
  readonly maxMessageBytes: number;
}

/** What this milter asks the MTA for, of what it offers: no answers awaited for headers and body chunks, no unknown commands, header values as sent. */
const PROTOCOL_WANTED = SMFIP_NR_HDR | SMFIP_NR_BODY | SMFIP_NOUNKNOWN | SMFIP_HDR_LEADSPC;

/** The reply a plugin's refusal becomes: "xyz x.y.z text", '%' doubled as the MTA expects. */
function replyCode(reply: Reply): MilterReply {
  return { command: SMFIR_REPLYCODE, reply: Buffer.from(`${reply.code} ${reply.text.replace(/%/g, '%%')}`) };
}


class MilterConnection {
  readonly #socket: Socket;
  readonly #options: MilterServerOptions;
  readonly #decoder = new FrameDecoder();
  #work: Promise<void> = Promise.resolve();
  #protocol = 0;
  #sessionId = randomUUID();
  #opened = false;
  readonly #session: Record<string, string> = {};
  #sender = '';
  #recipients: string[] = [];
  #message: Buffer[] = [];
  #messageBytes = 0;
  #tooBig = false;

  constructor(socket: Socket, options: MilterServerOptions) {
    this.#socket = socket;
    this.#options = options;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = this.#decoder.push(chunk);
      } catch (error) {
        this.#fail(error);
        return;
      }
      for (const frame of frames) this.#work = this.#work.then(() => this.#handle(decodeCommand(frame))).catch((error: unknown) => this.#fail(error));
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.#work = this.#work.then(() => this.#closed());
    });
  }

  async #handle(command: MilterCommand): Promise<void> {
    switch (command.command) {
      case SMFIC_OPTNEG:
        this.#protocol = command.protocol & PROTOCOL_WANTED;
        this.#reply({ command: SMFIC_OPTNEG, version: Math.min(command.version, MILTER_PROTOCOL_VERSION), actions: command.actions & SMFIF_QUARANTINE, protocol: this.#protocol, macroLists: [] });
        return;
      case SMFIC_MACRO:
        for (const [name, value] of command.macros) this.#macro(name.toString('utf8'), value.toString('utf8'));
        return;
      case SMFIC_CONNECT: {
        const family = command.family;
        this.#session.remote_ip = family === SMFIA_INET || family === SMFIA_INET6 ? command.address.toString('utf8') : '127.0.0.1';
        this.#session.client_hostname = command.hostname.toString('utf8').replace(/^\[.*\]$/, '');
        this.#opened = true;
        const port = family === SMFIA_INET || family === SMFIA_INET6 ? String(command.port) : '0';
        await this.#step('connection_opened', { ...this.#sessionFields(), remote_port: port });
        return;
      }
      case SMFIC_HELO:
        this.#session.helo = command.helo.toString('utf8');
        await this.#step('command_received', { session_id: this.#sessionId, remote_ip: this.#session.remote_ip ?? '', command: 'EHLO', line: `EHLO ${this.#session.helo}` });
        return;
      case SMFIC_MAIL:
        this.#resetMessage();
        this.#sender = bareAddress(command.address);
        await this.#step('command_validated', { ...this.#sessionFields(), command: 'MAIL', sender: this.#sender, sender_domain: domainOf(this.#sender) });
        return;
      case SMFIC_RCPT: {
        const recipient = bareAddress(command.address);
        const refused = await this.#step('command_validated', { ...this.#sessionFields(), command: 'RCPT', sender: this.#sender, sender_domain: domainOf(this.#sender), recipient, recipient_domain: domainOf(recipient) });
        if (!refused) this.#recipients.push(recipient);
        return;
      }
      case SMFIC_HEADER: {
        // With HDR_LEADSPC the value keeps the MTA's own space after the colon; without it, one is put back.
        const space = (this.#protocol & SMFIP_HDR_LEADSPC) !== 0 ? '' : ' ';
        const value = command.value.toString('latin1').replace(/\r?\n/g, '\r\n');
        this.#append(Buffer.from(`${command.name.toString('latin1')}:${space}${value}\r\n`, 'latin1'));
        if ((this.#protocol & SMFIP_NR_HDR) === 0) this.#reply({ command: SMFIR_CONTINUE });
        return;
      }
      case SMFIC_EOH:
        this.#append(Buffer.from('\r\n'));
        this.#reply({ command: SMFIR_CONTINUE });
        return;
      case SMFIC_BODY:
        this.#append(command.chunk);
        if ((this.#protocol & SMFIP_NR_BODY) === 0) this.#reply({ command: SMFIR_CONTINUE });
        return;
      case SMFIC_BODYEOB:
        if (command.chunk.length > 0) this.#append(command.chunk);
        return this.#endOfMessage();
      case SMFIC_DATA:
      case SMFIC_UNKNOWN:
        this.#reply({ command: SMFIR_CONTINUE });
        return;
      case SMFIC_ABORT:
        this.#resetMessage();
        return;
      case SMFIC_QUIT_NC:
        // The MTA reuses this connection for its next SMTP session.
        await this.#closed();
        this.#sessionId = randomUUID();
        return;
      case SMFIC_QUIT:
        this.#socket.end();
        return;
    }
  }

  /** Runs one gating hook; answers the MTA with the refusal or continue. True when refused. */
  async #step(hook: HookName, fields: MetadataFields): Promise<boolean> {
    const result = await this.#options.hooks.run(hook, () => fields);
    if (result.refusal !== null) {
      this.#options.logger.info({ session: this.#sessionId, hook, plugin: result.refusal.plugin, code: result.refusal.code }, 'refused (milter)');
      this.#reply(replyCode(result.refusal));
      return true;
    }
    this.#reply({ command: SMFIR_CONTINUE });
    return false;
  }

  async #endOfMessage(): Promise<void> {
    if (this.#tooBig) {
      this.#reply(replyCode({ code: 552, text: `5.3.4 Message size exceeds fixed limit (${this.#options.maxMessageBytes} bytes)` }));
      this.#resetMessage();
      return;
    }
    const body = Buffer.concat(this.#message, this.#messageBytes);
    const fields: MetadataFields = {
      ...this.#sessionFields(),
      sender: this.#sender,
      sender_domain: domainOf(this.#sender),
      recipients: this.#recipients.join(','),
      recipient: this.#recipients[0],
      recipient_count: String(this.#recipients.length),
      message_id: this.#session.i ?? this.#sessionId,
      size: String(body.length),
      [BODY_KEY]: body,
    };
    const carried = new Map<string, MetadataValue>();
    let quarantined = false;
    for (const hook of BODY_HOOKS) {
      const result = await this.#options.hooks.run(hook, () => fields, carried);
      if (result.context !== null) {
        for (const [key, value] of result.context.pluginChanges()) if (key !== BODY_KEY) carried.set(key, value);
        if (result.context.changed(QUARANTINE_KEY) === 'true') quarantined = true;
      }
      if (result.refusal !== null && !(quarantined && result.refusal.reason !== 'error')) {
        this.#options.logger.info({ session: this.#sessionId, hook, plugin: result.refusal.plugin, code: result.refusal.code }, 'message refused (milter)');
        this.#reply(replyCode(result.refusal));
        this.#resetMessage();
        return;
      }
      if (quarantined) break;
    }
    if (quarantined) this.#reply({ command: SMFIR_QUARANTINE, reason: Buffer.from('held by a plugin of smtp-plugin-host') });
    this.#reply({ command: SMFIR_CONTINUE });
    this.#resetMessage();
  }

  #sessionFields(): MetadataFields {
    const fields: Record<string, string> = { session_id: this.#sessionId, remote_ip: this.#session.remote_ip ?? '' };
    if (this.#session.client_hostname) fields.client_hostname = this.#session.client_hostname;
    if (this.#session.helo !== undefined) fields.helo = this.#session.helo;
    if (this.#session.username) fields.username = this.#session.username;
    return fields;
  }

  #macro(name: string, value: string): void {
    const plain = name.replace(/^\{(.*)\}$/, '$1');
    if (plain === 'auth_authen') this.#session.username = value;
    else if (plain === 'i') this.#session.i = value;
  }

  #append(chunk: Buffer): void {
    if (this.#tooBig) return;
    this.#messageBytes += chunk.length;
    if (this.#messageBytes > this.#options.maxMessageBytes) {
      // Bounded: past the limit nothing more is kept, and end of message refuses it.
      this.#tooBig = true;
      this.#message = [];
      return;
    }
    this.#message.push(chunk);
  }

  #resetMessage(): void {
    this.#sender = '';
    this.#recipients = [];
    this.#message = [];
    this.#messageBytes = 0;
    this.#tooBig = false;
  }

  async #closed(): Promise<void> {
    if (!this.#opened) return;
    this.#opened = false;
    this.#options.hooks.notify('connection_closed', () => this.#sessionFields());
  }

  #reply(message: MilterReply): void {
    if (!this.#socket.destroyed) this.#socket.write(encodeReply(message));
  }

  /** A broken frame or a failed hook: the MTA is told to try later (its milter_default_action decides), and the connection ends. */
  #fail(error: unknown): void {
    this.#options.logger.error({ session: this.#sessionId, code: isHostError(error) ? error.code : undefined, err: String(error) }, 'milter connection failed');
    this.#reply({ command: SMFIR_TEMPFAIL });
    this.#socket.end();
  }
}

/** Serves the plugin chain as a milter until stop(). */
export class MilterServer {
  readonly #options: MilterServerOptions;
  #server: Server | null = null;
  readonly #sockets = new Set<Socket>();

  constructor(options: MilterServerOptions) {
    this.#options = options;
  }

  /** Listens; resolves with the address as `inet:HOST:PORT` or `unix:/path`. */
  async start(): Promise<string> {
    const server = createServer((socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      new MilterConnection(socket, this.#options);
    });
    const { listen } = this.#options;
    if (listen.kind === 'unix') {
      try {
        unlinkSync(listen.path);
      } catch {
        // Not there: nothing to remove.
      }
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (listen.kind === 'unix') server.listen(listen.path, resolve);
      else server.listen(listen.port, listen.host, resolve);
    });
    this.#server = server;
    return formatMilterAddress(listen);
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    if (server === null) return;
    for (const socket of this.#sockets) socket.end();
    await new Promise((resolve) => server.close(resolve));
  }
}
