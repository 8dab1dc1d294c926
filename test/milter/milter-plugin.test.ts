import { createServer, type Server } from 'node:net';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { decodeCommand, encodeReply, FrameDecoder, type MilterCommand } from '../../src/milter/codec.js';
import { SMFIC_ABORT, SMFIC_BODYEOB, SMFIC_HEADER, SMFIC_MACRO, SMFIC_MAIL, SMFIC_OPTNEG, SMFIC_QUIT, SMFIF_ALL, SMFIR_ADDHEADER, SMFIR_ADDRCPT, SMFIR_CHGFROM, SMFIR_CONTINUE, SMFIR_REPLYCODE } from '../../src/milter/protocol.js';
import { MailServer } from '../../src/server/mail-server.js';
import { serverRoot, waitFor } from '../helpers/server.js';
import { startSmarthost, type Smarthost } from '../helpers/smarthost.js';

/**
 * A `milter = ...` entry inside the running server, against a milter on
 * loopback that speaks through this project's codec: its answers reach the
 * client, and its modifications the relayed message and envelope. The same
 * against real milters (pymilter, rspamd, opendkim):
 * test/integration/milter_client.test.ts.
 */
describe('a milter entry in the chain', () => {
  let milter: Server;
  let smarthost: Smarthost;
  let server: MailServer;
  let port = 0;
  const seen: MilterCommand[] = [];

  beforeAll(async () => {
    milter = createServer((socket) => {
      const decoder = new FrameDecoder();
      let sender = '';
      socket.on('error', () => undefined);
      socket.on('data', (chunk) => {
        for (const frame of decoder.push(chunk)) {
          const command = decodeCommand(frame);
          seen.push(command);
          const reply = (message: Parameters<typeof encodeReply>[0]): void => void socket.write(encodeReply(message));
          if (command.command === SMFIC_OPTNEG) reply({ command: SMFIC_OPTNEG, version: 6, actions: SMFIF_ALL, protocol: 0, macroLists: [] });
          else if (command.command === SMFIC_MACRO || command.command === SMFIC_QUIT) continue;
          else if (command.command === SMFIC_MAIL) {
            sender = command.address.toString();
            reply(sender === '<refused@example.test>' ? { command: SMFIR_REPLYCODE, reply: Buffer.from('550 5.7.1 Sender refused by the milter') } : { command: SMFIR_CONTINUE });
          } else if (command.command === SMFIC_BODYEOB) {
            reply({ command: SMFIR_ADDHEADER, name: Buffer.from('X-Milter'), value: Buffer.from('seen') });
            reply({ command: SMFIR_CHGFROM, sender: Buffer.from('<rewritten@example.test>'), esmtpArgs: null });
            reply({ command: SMFIR_ADDRCPT, recipient: Buffer.from('<copy@example.test>') });
            reply({ command: SMFIR_CONTINUE });
          } else if (command.command !== SMFIC_ABORT) reply({ command: SMFIR_CONTINUE });
        }
      });
    });
    await new Promise<void>((resolve) => milter.listen(0, '127.0.0.1', resolve));
    smarthost = await startSmarthost();
    const root = serverRoot({
      delivery: `mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = ${smarthost.port}\nretry_initial_ms = 50\nretry_max_ms = 200\n`,
      plugins: `[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "filter"\nmilter = "inet:127.0.0.1:${(milter.address() as { port: number }).port}"\n`,
    });
    server = new MailServer(loadConfig(root.config), pino({ level: 'silent' }));
    port = await server.start();
  });

  afterAll(async () => {
    await server.stop();
    await smarthost.close();
    await new Promise((resolve) => milter.close(resolve));
  });

  const send = (from: string) =>
    nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true }).sendMail({ from, to: 'user@example.test', subject: 'hi', text: 'body\n' });

  it('relays the message as the milter changed it: a header added, the sender changed, a recipient added', async () => {
    await send('sender@example.test');
    await waitFor(() => smarthost.transactions.length === 1, 'the relayed message');
    const [relayed] = smarthost.transactions;
    expect(relayed!.from).toBe('rewritten@example.test');
    expect(relayed!.to.sort()).toEqual(['copy@example.test', 'user@example.test']);
    expect(relayed!.data.toString('latin1')).toMatch(/\r\nX-Milter: seen\r\n\r\nbody\r\n$/);
    // What the milter was told: the envelope with its brackets, and each header.
    expect(seen.some((command) => command.command === SMFIC_MAIL && command.address.toString() === '<sender@example.test>')).toBe(true);
    expect(seen.some((command) => command.command === SMFIC_HEADER && command.name.toString() === 'Subject' && command.value.toString() === 'hi')).toBe(true);
  });

  it('refuses MAIL with the milter\'s own reply', async () => {
    const refused = await send('refused@example.test').then(
      () => null,
      (error: unknown) => error as { response?: string },
    );
    expect(refused?.response).toMatch(/^550 5\.7\.1 Sender refused by the milter/);
  });
});
