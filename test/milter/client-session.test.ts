import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseMilterAddress } from '../../src/milter/address.js';
import { MilterClientSession } from '../../src/milter/client-session.js';
import { decodeCommand, encodeReply, FrameDecoder, type MilterCommand, type MilterReply } from '../../src/milter/codec.js';
import {
  SMFIA_INET,
  SMFIC_BODY,
  SMFIC_BODYEOB,
  SMFIC_HEADER,
  SMFIC_MACRO,
  SMFIC_OPTNEG,
  SMFIF_ADDHDRS,
  SMFIF_ALL,
  SMFIM_CONNECT,
  SMFIM_ENVFROM,
  SMFIP_NOHELO,
  SMFIP_NR_BODY,
  SMFIP_NR_CONN,
  SMFIP_NR_EOH,
  SMFIP_NR_HDR,
  SMFIR_ADDHEADER,
  SMFIR_CONTINUE,
  SMFIR_PROGRESS,
  SMFIR_REPLYCODE,
} from '../../src/milter/protocol.js';
import { expectCode } from '../helpers/expect-code.js';

/**
 * The client against a peer on loopback that speaks the protocol through
 * this project's codec and answers as a script says: what the client sends
 * and how it handles each answer. The same client against real milters
 * (pymilter, rspamd, opendkim) is in test/integration/milter_client.test.ts.
 */
type Script = (command: MilterCommand, reply: (message: MilterReply) => void) => void;

const servers: Server[] = [];
const sockets: Socket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
});

async function peer(script: Script): Promise<{ address: string; seen: MilterCommand[] }> {
  const seen: MilterCommand[] = [];
  const server = createServer((socket) => {
    sockets.push(socket);
    const decoder = new FrameDecoder();
    socket.on('data', (chunk) => {
      for (const frame of decoder.push(chunk)) {
        const command = decodeCommand(frame);
        seen.push(command);
        script(command, (message) => socket.write(encodeReply(message)));
      }
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { address: `inet:127.0.0.1:${(server.address() as { port: number }).port}`, seen };
}

const negotiation = (protocol: number, macroLists: { stage: number; names: string }[] = []): MilterReply =>
  ({ command: SMFIC_OPTNEG, version: 6, actions: SMFIF_ADDHDRS, protocol, macroLists: macroLists.map((list) => ({ stage: list.stage as 0, names: Buffer.from(list.names) })) }) as MilterReply;

const CONNECT = { hostname: Buffer.from('client.example.test'), family: SMFIA_INET, port: 40_000, address: Buffer.from('127.0.0.1') } as const;

describe('MilterClientSession', () => {
  it('skips the events the milter declined, awaits no answer where it said it gives none, and sends only the macros it asked for', async () => {
    const { address, seen } = await peer((command, reply) => {
      if (command.command === SMFIC_OPTNEG) reply(negotiation(SMFIP_NOHELO | SMFIP_NR_CONN, [{ stage: SMFIM_CONNECT, names: 'j {client_addr}' }, { stage: SMFIM_ENVFROM, names: '{auth_authen}' }]));
      else if (command.command !== SMFIC_MACRO && command.command !== 0x43 /* C: no reply wanted */) reply({ command: SMFIR_CONTINUE });
    });
    const session = await MilterClientSession.open({ address: parseMilterAddress(address) });
    expect(await session.connect(CONNECT, { j: 'mx.example.test', '{client_addr}': '127.0.0.1', '{daemon_name}': 'not asked for' })).toEqual({ kind: 'continue' });
    expect(await session.helo('client.example.test')).toEqual({ kind: 'continue' });
    expect(await session.mail('a@example.test', [], { auth_authen: 'alice' })).toEqual({ kind: 'continue' });
    session.close();
    const commands = seen.map((each) => String.fromCharCode(each.command));
    // No H: the milter declined HELO.
    expect(commands).toEqual(['O', 'D', 'C', 'D', 'M']);
    const connectMacros = seen[1] as Extract<MilterCommand, { command: typeof SMFIC_MACRO }>;
    expect(connectMacros.macros.map(([name, value]) => `${name}=${value}`)).toEqual(['j=mx.example.test', '{client_addr}=127.0.0.1']);
    const mailMacros = seen[3] as Extract<MilterCommand, { command: typeof SMFIC_MACRO }>;
    expect(mailMacros.macros.map(([name, value]) => `${name}=${value}`)).toEqual(['{auth_authen}=alice']);
  });

  it('sends the headers (without the space after the colon), the body in chunks, and collects the modifications with the verdict', async () => {
    const { address, seen } = await peer((command, reply) => {
      if (command.command === SMFIC_OPTNEG) reply(negotiation(0));
      else if (command.command === SMFIC_BODYEOB) {
        reply({ command: SMFIR_PROGRESS });
        reply({ command: SMFIR_ADDHEADER, name: Buffer.from('X-Checked'), value: Buffer.from('yes') });
        reply({ command: SMFIR_REPLYCODE, reply: Buffer.from('550 5.7.1 Not today') });
      } else if (command.command !== SMFIC_MACRO) reply({ command: SMFIR_CONTINUE });
    });
    const session = await MilterClientSession.open({ address: parseMilterAddress(address) });
    const body = Buffer.alloc(70_000, 'x');
    const result = await session.message(Buffer.concat([Buffer.from('Subject: hi\r\nX-Fold: a\r\n b\r\n\r\n'), body]));
    session.close();
    // A reject drops the modifications: nothing is applied to a refused message.
    expect(result).toEqual({ verdict: { kind: 'reject', reply: '550 5.7.1 Not today' }, modifications: [] });
    const headers = seen.filter((each) => each.command === SMFIC_HEADER) as Extract<MilterCommand, { command: typeof SMFIC_HEADER }>[];
    expect(headers.map((each) => `${each.name}:${each.value}`)).toEqual(['Subject:hi', 'X-Fold:a\n b']);
    const chunks = seen.filter((each) => each.command === SMFIC_BODY) as Extract<MilterCommand, { command: typeof SMFIC_BODY }>[];
    expect(chunks.map((each) => each.chunk.length)).toEqual([65_535, 70_000 - 65_535]);
  });

  it('does not wait for answers the milter said it gives none of (SMFIP_NR_HDR, _EOH, _BODY, as rspamd negotiates)', async () => {
    const { address, seen } = await peer((command, reply) => {
      if (command.command === SMFIC_OPTNEG) reply(negotiation(SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY));
      else if (command.command === SMFIC_BODYEOB) reply({ command: SMFIR_CONTINUE });
    });
    const session = await MilterClientSession.open({ address: parseMilterAddress(address), commandTimeoutMs: 2_000 });
    const result = await session.message(Buffer.from('Subject: hi\r\n\r\nbody\r\n'));
    session.close();
    expect(result).toEqual({ verdict: { kind: 'continue' }, modifications: [] });
    expect(seen.map((each) => String.fromCharCode(each.command)).join('')).toBe('OLNBE');
  });

  it('fails with SMTP_E_MILTER_TIMEOUT when the milter does not answer, and SMTP_E_MILTER_UNAVAILABLE when nothing listens', async () => {
    const { address } = await peer((command, reply) => {
      if (command.command === SMFIC_OPTNEG) reply(negotiation(0));
    });
    const session = await MilterClientSession.open({ address: parseMilterAddress(address), commandTimeoutMs: 300 });
    const started = performance.now();
    await expectCode(() => session.connect(CONNECT), 'SMTP_E_MILTER_TIMEOUT', 'no answer within 300 ms');
    expect(performance.now() - started).toBeLessThan(2_000);
    await expectCode(() => session.helo('again'), 'SMTP_E_MILTER_TIMEOUT');

    const closed = await peer(() => undefined);
    servers.pop()!.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expectCode(() => MilterClientSession.open({ address: parseMilterAddress(closed.address) }), 'SMTP_E_MILTER_UNAVAILABLE');
  });

  it('refuses a milter that asks for actions it was not allowed, and one that breaks the framing', async () => {
    const greedy = await peer((command, reply) => {
      if (command.command === SMFIC_OPTNEG) reply({ ...(negotiation(0) as object), actions: SMFIF_ALL } as MilterReply);
    });
    await expectCode(() => MilterClientSession.open({ address: parseMilterAddress(greedy.address), actions: SMFIF_ADDHDRS }), 'SMTP_E_MILTER_PROTOCOL', 'beyond those allowed');

    const { address } = await peer((command, reply) => {
      if (command.command === SMFIC_OPTNEG) reply(negotiation(0));
      else if (command.command !== SMFIC_MACRO) sockets.at(-1)!.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x63]));
      void reply;
    });
    const session = await MilterClientSession.open({ address: parseMilterAddress(address) });
    await expectCode(() => session.connect(CONNECT), 'SMTP_E_MILTER_PROTOCOL');
  });
});
