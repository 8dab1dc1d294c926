import { describe, expect, it } from 'vitest';
import {
  FrameDecoder, decodeCommand, decodeReply, encodeCommand, encodeReply, encodeFrame, type MilterCommand, type MilterFrame, type MilterReply,
} from '../../src/milter/codec.js';
import * as P from '../../src/milter/protocol.js';
import { HostError, isHostError } from '../../src/errors.js';

const b = (text: string): Buffer => Buffer.from(text, 'latin1');
/** Every byte value but NUL: what a header value may carry, 8-bit included. */
const EIGHT_BIT = Buffer.from(Array.from({ length: 255 }, (_, i) => i + 1));

function expectProtocolError(run: () => unknown, message: RegExp): void {
  let thrown: unknown;
  try {
    run();
  } catch (error) {
    thrown = error;
  }
  expect(isHostError(thrown, P.MILTER_PROTOCOL_ERROR), `expected a ${P.MILTER_PROTOCOL_ERROR} error, got ${String(thrown)}`).toBe(true);
  expect((thrown as Error).message).toMatch(message);
}

/** The one frame in `bytes`, through the stream decoder. */
function frameOf(bytes: Buffer): MilterFrame {
  const decoder = new FrameDecoder();
  const frames = decoder.push(bytes);
  expect(frames).toHaveLength(1);
  expect(decoder.atBoundary).toBe(true);
  return frames[0]!;
}

const frame = (command: number, data: Buffer | number[] = []): MilterFrame => ({ command, data: Buffer.from(data) });

/** One of every MTA command (every variant of CONNECT). */
const COMMANDS: MilterCommand[] = [
  { command: P.SMFIC_OPTNEG, version: 6, actions: P.SMFIF_ALL, protocol: P.SMFIP_ALL | P.SMFIP_MDS_1M },
  { command: P.SMFIC_MACRO, stage: P.SMFIC_CONNECT, macros: [[b('j'), b('mx.example.org')], [b('{daemon_name}'), b('')], [b('_'), b('client [192.0.2.1]')]] },
  { command: P.SMFIC_MACRO, stage: P.SMFIC_BODYEOB, macros: [] },
  { command: P.SMFIC_CONNECT, hostname: b('client.example.org'), family: P.SMFIA_INET, port: 25, address: b('192.0.2.1') },
  { command: P.SMFIC_CONNECT, hostname: b('[2001:db8::1]'), family: P.SMFIA_INET6, port: 65535, address: b('2001:db8::1') },
  { command: P.SMFIC_CONNECT, hostname: b('localhost'), family: P.SMFIA_UNIX, port: 0, address: b('/run/smtp.sock') },
  { command: P.SMFIC_CONNECT, hostname: b(''), family: P.SMFIA_UNKNOWN },
  { command: P.SMFIC_HELO, helo: b('client.example.org') },
  { command: P.SMFIC_MAIL, address: b('<a@example.org>'), esmtpArgs: [b('SIZE=1000'), b('BODY=8BITMIME')] },
  { command: P.SMFIC_MAIL, address: b('<>'), esmtpArgs: [] },
  { command: P.SMFIC_RCPT, address: Buffer.concat([b('<j'), Buffer.from('ü', 'utf8'), b('rg@example.org>')]), esmtpArgs: [b('NOTIFY=NEVER')] },
  { command: P.SMFIC_HEADER, name: b('Subject'), value: EIGHT_BIT },
  { command: P.SMFIC_HEADER, name: b('X-Empty'), value: b('') },
  { command: P.SMFIC_EOH },
  { command: P.SMFIC_BODY, chunk: Buffer.alloc(P.MILTER_CHUNK_BYTES, 0x41) },
  { command: P.SMFIC_BODY, chunk: Buffer.from([0, 1, 0xff, 0x0d, 0x0a]) },
  { command: P.SMFIC_BODYEOB, chunk: Buffer.alloc(0) },
  { command: P.SMFIC_BODYEOB, chunk: b('last\r\n') },
  { command: P.SMFIC_UNKNOWN, line: b('XCLIENT NAME=x') },
  { command: P.SMFIC_ABORT }, { command: P.SMFIC_DATA }, { command: P.SMFIC_QUIT }, { command: P.SMFIC_QUIT_NC },
];

/** One of every milter reply. */
const REPLIES: MilterReply[] = [
  { command: P.SMFIC_OPTNEG, version: 6, actions: P.SMFIF_ADDHDRS | P.SMFIF_CHGHDRS, protocol: P.SMFIP_NOHELO | P.SMFIP_NR_HDR, macroLists: [] },
  { command: P.SMFIC_OPTNEG, version: 6, actions: P.SMFIF_SETSYMLIST, protocol: 0, macroLists: [{ stage: P.SMFIM_CONNECT, names: b('j {client_addr}') }, { stage: P.SMFIM_EOH, names: b('') }] },
  { command: P.SMFIR_SETSYMLIST, macroLists: [{ stage: P.SMFIM_ENVRCPT, names: b('{rcpt_addr}') }] },
  ...[P.SMFIR_ACCEPT, P.SMFIR_CONTINUE, P.SMFIR_DISCARD, P.SMFIR_REJECT, P.SMFIR_TEMPFAIL, P.SMFIR_SKIP, P.SMFIR_PROGRESS, P.SMFIR_SHUTDOWN, P.SMFIR_CONN_FAIL]
    .map((command) => ({ command }) as MilterReply),
  { command: P.SMFIR_ADDRCPT, recipient: b('<new@example.org>') },
  { command: P.SMFIR_DELRCPT, recipient: b('<old@example.org>') },
  { command: P.SMFIR_ADDRCPT_PAR, recipient: b('<new@example.org>'), esmtpArgs: b('NOTIFY=NEVER ORCPT=rfc822;x@y') },
  { command: P.SMFIR_ADDRCPT_PAR, recipient: b('<new@example.org>'), esmtpArgs: b('') },
  { command: P.SMFIR_ADDRCPT_PAR, recipient: b('<new@example.org>'), esmtpArgs: null },
  { command: P.SMFIR_CHGFROM, sender: b('<bounce@example.org>'), esmtpArgs: b('SIZE=1') },
  { command: P.SMFIR_CHGFROM, sender: b('<>'), esmtpArgs: null },
  { command: P.SMFIR_ADDHEADER, name: b('X-Spam-Score'), value: b(' 3.2') },
  { command: P.SMFIR_INSHEADER, index: 0, name: b('Authentication-Results'), value: EIGHT_BIT },
  { command: P.SMFIR_CHGHEADER, index: 2, name: b('Subject'), value: b('[SPAM] hi') },
  { command: P.SMFIR_CHGHEADER, index: 0xffffffff, name: b('X-Gone'), value: b('') },
  { command: P.SMFIR_REPLBODY, chunk: Buffer.alloc(200_000, 0x42) },
  { command: P.SMFIR_REPLBODY, chunk: Buffer.alloc(0) },
  { command: P.SMFIR_QUARANTINE, reason: b('virus: Eicar-Test-Signature') },
  { command: P.SMFIR_REPLYCODE, reply: b('554 5.7.1 Rejected: 100%% spam') },
  { command: P.SMFIR_REPLYCODE, reply: b('451-4.7.1 greylisted\r\n451 4.7.1 try later') },
];

describe('milter messages: round trips', () => {
  it('decodes every MTA command to what was encoded, through the stream decoder', () => {
    for (const command of COMMANDS) expect(decodeCommand(frameOf(encodeCommand(command)))).toEqual(command);
  });

  it('decodes every milter reply to what was encoded, through the stream decoder', () => {
    for (const reply of REPLIES) expect(decodeReply(frameOf(encodeReply(reply)))).toEqual(reply);
  });

  it('keeps 8-bit header bytes exactly, both ways', () => {
    const command = decodeCommand(frameOf(encodeCommand({ command: P.SMFIC_HEADER, name: b('Subject'), value: EIGHT_BIT })));
    expect(command.command === P.SMFIC_HEADER && command.value.equals(EIGHT_BIT)).toBe(true);
    const reply = decodeReply(frameOf(encodeReply({ command: P.SMFIR_CHGHEADER, index: 1, name: b('Subject'), value: EIGHT_BIT })));
    expect(reply.command === P.SMFIR_CHGHEADER && reply.value.equals(EIGHT_BIT)).toBe(true);
  });

  it('gives every message back whichever byte boundary splits the whole conversation', () => {
    const small = (m: { command: number; chunk?: Buffer }): boolean => m.chunk === undefined || m.chunk.length < 64;
    const commands = COMMANDS.filter(small);
    const replies = REPLIES.filter(small);
    const stream = Buffer.concat([...commands.map((m) => encodeCommand(m)), ...replies.map((m) => encodeReply(m))]);
    const decodeAll = (frames: MilterFrame[]): unknown[] => frames.map((f, i) => (i < commands.length ? decodeCommand(f) : decodeReply(f)));
    for (let cut = 0; cut <= stream.length; cut++) {
      const decoder = new FrameDecoder();
      const frames = [...decoder.push(stream.subarray(0, cut)), ...decoder.push(stream.subarray(cut))];
      expect(decodeAll(frames)).toEqual([...commands, ...replies]);
    }
  });
});

describe('milter messages: byte-exact frames from other implementations', () => {
  it("decodes go-milter's negotiation reply with macro lists and encodes it back to the same bytes", () => {
    // d--j/go-milter (fork of emersion/go-milter) session_test.go, Test_milterSession_negotiate
    // "negotiation macros": version 2, actions SMFIF_SETSYMLIST, protocol 0, then stage 0 "j _" and stage 1 "i".
    const data = [0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x6a, 0x20, 0x5f, 0, 0, 0, 0, 1, 0x69, 0];
    const wire = Buffer.from([0, 0, 0, 1 + data.length, 0x4f, ...data]);
    const reply = decodeReply(frameOf(wire));
    expect(reply).toEqual({ command: P.SMFIC_OPTNEG, version: 2, actions: P.SMFIF_SETSYMLIST, protocol: 0, macroLists: [{ stage: P.SMFIM_CONNECT, names: b('j _') }, { stage: P.SMFIM_HELO, names: b('i') }] });
    expect(encodeReply(reply)).toEqual(wire);
  });

  it("decodes go-milter's CONNECT frames (IPv4 port 2555, unix socket, unknown) and encodes them back", () => {
    // d--j/go-milter session_test.go, Test_milterSession_processMsg "conn tcp4 protocol", "conn unix protocol", "conn unknown protocol".
    const tcp4 = [0x68, 0, 0x34, 9, 251, ...b('127.0.0.12'), 0];
    const unix = [0x68, 0, 0x4c, 0, 0, ...b('/run'), 0];
    const unknown = [0, 0x55];
    const cases: Array<[number[], MilterCommand]> = [
      [tcp4, { command: P.SMFIC_CONNECT, hostname: b('h'), family: P.SMFIA_INET, port: 2555, address: b('127.0.0.12') }],
      [unix, { command: P.SMFIC_CONNECT, hostname: b('h'), family: P.SMFIA_UNIX, port: 0, address: b('/run') }],
      [unknown, { command: P.SMFIC_CONNECT, hostname: b(''), family: P.SMFIA_UNKNOWN }],
    ];
    for (const [data, expected] of cases) {
      const wire = Buffer.from([0, 0, 0, 1 + data.length, 0x43, ...data]);
      expect(decodeCommand(frameOf(wire))).toEqual(expected);
      expect(encodeCommand(expected)).toEqual(wire);
    }
  });

  it("decodes go-milter's modification replies and refuses the ones it refuses", () => {
    // d--j/go-milter modifier_test.go, Test_parseModifyAct: "ActChangeHeader", "ActAddRcptPar2", "ActChangeFrom1" and their -err cases.
    const chg = Buffer.from([0, 0, 0, 1, ...b('Subject'), 0, ...b('value'), 0]);
    expect(decodeReply(frame(P.SMFIR_CHGHEADER, chg))).toEqual({ command: P.SMFIR_CHGHEADER, index: 1, name: b('Subject'), value: b('value') });
    expect(encodeReply({ command: P.SMFIR_CHGHEADER, index: 1, name: b('Subject'), value: b('value') })).toEqual(Buffer.concat([Buffer.from([0, 0, 0, 1 + chg.length, 0x6d]), chg]));
    expect(decodeReply(frame(P.SMFIR_ADDRCPT_PAR, b('<>\0A=B\0')))).toEqual({ command: P.SMFIR_ADDRCPT_PAR, recipient: b('<>'), esmtpArgs: b('A=B') });
    expect(decodeReply(frame(P.SMFIR_CHGFROM, b('<>\0')))).toEqual({ command: P.SMFIR_CHGFROM, sender: b('<>'), esmtpArgs: null });
    expectProtocolError(() => decodeReply(frame(P.SMFIR_CHGHEADER, chg.subarray(0, -1))), /malformed SMFIR_CHGHEADER .*value has no NUL terminator/);
    expectProtocolError(() => decodeReply(frame(P.SMFIR_ADDRCPT, b('<>\0\0'))), /1 bytes left over/);
    expectProtocolError(() => decodeReply(frame(P.SMFIR_ADDRCPT_PAR, b('<>\0\0\0'))), /1 bytes left over/);
    expectProtocolError(() => decodeReply(frame(P.SMFIR_CHGFROM, b('<>'))), /sender has no NUL terminator/);
  });

  it('reads reply codes as miltr and go-milter test them', () => {
    // girstenbrei/miltr common/src/actions/to_mta_only.rs test_reply_parse; d--j/go-milter modifier_test.go "repl-code-err-invalid-code".
    const text = b('501 5.7.0 Client initiated Authentication Exchange\0');
    const wire = Buffer.concat([Buffer.from([0, 0, 0, 1 + text.length, 0x79]), text]);
    expect(decodeReply(frameOf(wire))).toEqual({ command: P.SMFIR_REPLYCODE, reply: text.subarray(0, -1) });
    expect(encodeReply({ command: P.SMFIR_REPLYCODE, reply: text.subarray(0, -1) })).toEqual(wire);
    expectProtocolError(() => decodeReply(frame(P.SMFIR_REPLYCODE, b('250 Accept\0'))), /4xx or 5xx/);
    expectProtocolError(() => decodeReply(frame(P.SMFIR_REPLYCODE, b('550 5.7.1 Reject'))), /reply has no NUL terminator/);
  });

  it("reads headers as miltr's tests do", () => {
    // girstenbrei/miltr common/src/commands/header.rs test_header cases.
    expect(decodeCommand(frame(P.SMFIC_HEADER, b('name\0value\0')))).toEqual({ command: P.SMFIC_HEADER, name: b('name'), value: b('value') });
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_HEADER, b('name\0value'))), /value has no NUL terminator/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_HEADER, b('namevalue\0'))), /value is missing/);
  });
});

describe('milter messages: malformed input gives the coded error', () => {
  it('refuses a missing NUL, a short integer and an unknown family', () => {
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_HELO, b('client'))), /malformed SMFIC_HELO \(6 data bytes\): helo has no NUL terminator at byte 0/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_HELO)), /helo is missing/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_CONNECT, [0x68, 0, 0x36, 9])), /port needs 2 bytes, 1 left at byte 3/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_CONNECT, [0x68, 0])), /family needs 1 bytes, 0 left/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_CONNECT, [0x68, 0, 0x2b, 9, 251, ...b('[::]'), 0])), /family '\+' \(0x2b\) is none of '4', '6', 'L', 'U'/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_CONNECT, [0x68, 0, 0x55, 0, 25])), /2 bytes left over/);
    expectProtocolError(() => decodeReply(frame(P.SMFIR_INSHEADER, [0, 0, 1])), /index needs 4 bytes, 3 left/);
    expectProtocolError(() => decodeReply(frame(P.SMFIC_OPTNEG, [0, 0, 0, 6, 0, 0, 0, 1])), /protocol needs 4 bytes, 0 left at byte 8/);
  });

  it('refuses an MTA offer that is not exactly 12 bytes, and macro lists that do not parse', () => {
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_OPTNEG, Buffer.alloc(13))), /must be exactly 12 bytes/);
    const head = [0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff];
    expectProtocolError(() => decodeReply(frame(P.SMFIC_OPTNEG, [...head, 0, 0, 0])), /macro stage needs 4 bytes, 3 left/);
    expectProtocolError(() => decodeReply(frame(P.SMFIC_OPTNEG, [...head, 0, 0, 0, 7, 0x6a, 0])), /macro stage 7 is not 0 to 6/);
    expectProtocolError(() => decodeReply(frame(P.SMFIC_OPTNEG, [...head, 0, 0, 0, 1, 0x6a])), /macro names has no NUL terminator/);
    const eight = Array.from({ length: 8 }, () => [0, 0, 0, 1, 0x69, 0]).flat();
    expectProtocolError(() => decodeReply(frame(P.SMFIR_SETSYMLIST, eight)), /more than 7 macro lists/);
  });

  it('refuses bytes after a message that has none, and odd or unknown macros', () => {
    expectProtocolError(() => decodeReply(frame(P.SMFIR_CONTINUE, [0])), /malformed SMFIR_CONTINUE .*1 bytes left over/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_EOH, b('x'))), /malformed SMFIC_EOH/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_MACRO)), /stage needs 1 bytes, 0 left/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_MACRO, [0x43, ...b('j\0x\0i\0')])), /macro i has no value/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_MACRO, [0x5a, ...b('j\0x\0')])), /stage 'Z' \(0x5a\) is no SMFIC_\* command/);
    // go-milter's TestReadPacket "With Data" frame: fine as a frame, but 't' (TEMPFAIL) carries no data.
    expectProtocolError(() => decodeReply(frameOf(Buffer.from([0, 0, 0, 4, 0x74, 0x65, 0x73, 0x74]))), /malformed SMFIR_TEMPFAIL \(3 data bytes\): 3 bytes left over/);
  });

  it('refuses codes sent the wrong way or unknown to either side', () => {
    expectProtocolError(() => decodeCommand(frame(P.SMFIR_ACCEPT)), /'a' \(0x61\) is no MTA command/);
    expectProtocolError(() => decodeReply(frame(P.SMFIC_HELO, b('x\0'))), /'H' \(0x48\) is no milter reply/);
    expectProtocolError(() => decodeReply(frame(0x7a)), /'z' \(0x7a\) is no milter reply/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIR_ACCEPT } as unknown as MilterCommand), /no MTA command has that code/);
    expectProtocolError(() => encodeReply({ command: P.SMFIC_HELO, helo: b('x') } as unknown as MilterReply), /no milter reply has that code/);
  });

  it('bounds the strings one frame may turn into', () => {
    const args = Array.from({ length: P.MILTER_ARGS_MAX }, () => '\0').join('');
    expect(decodeCommand(frame(P.SMFIC_MAIL, b(args)))).toMatchObject({ esmtpArgs: { length: P.MILTER_ARGS_MAX - 1 } });
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_MAIL, b(`${args}\0`))), /more than 63 ESMTP arguments/);
    const pairs = b(`\x43${'\0'.repeat(2 * P.MILTER_MACRO_PAIRS_MAX + 2)}`);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_MACRO, pairs)), /more than 512 macro strings/);
    expectProtocolError(() => decodeCommand(frame(P.SMFIC_BODY, Buffer.alloc(P.MILTER_CHUNK_BYTES + 1))), /body chunk of 65536 bytes is over the 65535-byte bound/);
  });

  it('throws only the coded error on arbitrary bytes, for every code both ways', () => {
    let seed = 0x2545f491;
    const random = (): number => {
      seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
      return (seed >>> 0) / 0x1_0000_0000;
    };
    const codes = [...P.COMMAND_NAMES.keys(), ...P.REPLY_NAMES.keys()];
    let decoded = 0;
    for (let round = 0; round < 3000; round++) {
      const data = Buffer.from(Array.from({ length: Math.floor(random() * 24) }, () => (random() < 0.3 ? 0 : Math.floor(random() * 256))));
      const command = codes[Math.floor(random() * codes.length)]!;
      for (const decode of [decodeCommand, decodeReply]) {
        try {
          decode({ command, data });
          decoded++;
        } catch (error) {
          expect(error).toBeInstanceOf(HostError);
          expect((error as HostError).code).toBe(P.MILTER_PROTOCOL_ERROR);
        }
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });

  it('refuses every truncation of a valid message with the coded error, or decodes it', () => {
    const messages: Array<[Buffer, (f: MilterFrame) => unknown]> = [
      ...COMMANDS.map((m) => [encodeCommand(m), decodeCommand] as [Buffer, (f: MilterFrame) => unknown]),
      ...REPLIES.filter((m) => !('chunk' in m)).map((m) => [encodeReply(m), decodeReply] as [Buffer, (f: MilterFrame) => unknown]),
    ];
    for (const [wire, decode] of messages) {
      const { command, data } = frameOf(wire);
      for (let length = 0; length < Math.min(data.length, 300); length++) {
        try {
          decode({ command, data: data.subarray(0, length) });
        } catch (error) {
          expect(isHostError(error, P.MILTER_PROTOCOL_ERROR)).toBe(true);
        }
      }
    }
  });
});

describe('milter messages: the encoder refuses what it cannot put on the wire', () => {
  it('refuses a NUL inside a string, integers out of range and an unknown family', () => {
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_HEADER, name: b('Sub\0ject'), value: b('x') }), /cannot encode SMFIC_HEADER: name holds a NUL at byte 3/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_CONNECT, hostname: b('h'), family: P.SMFIA_INET, port: 65536, address: b('192.0.2.1') }), /port must be a uint16, not 65536/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_OPTNEG, version: -1, actions: 0, protocol: 0 }), /version must be a uint32, not -1/);
    expectProtocolError(() => encodeReply({ command: P.SMFIR_CHGHEADER, index: 2 ** 32, name: b('a'), value: b('') }), /index must be a uint32/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_CONNECT, hostname: b('h'), family: 0x58, port: 1, address: b('x') } as unknown as MilterCommand), /family 'X' \(0x58\) is none of/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_HELO, helo: 'text' as unknown as Buffer }), /helo must be a Buffer/);
  });

  it('refuses oversize chunks, too many macros or arguments, bad stages and bad reply codes', () => {
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_BODY, chunk: Buffer.alloc(P.MILTER_CHUNK_BYTES + 1) }), /body chunk of 65536 bytes is over the 65535-byte bound/);
    const pairs = Array.from({ length: P.MILTER_MACRO_PAIRS_MAX + 1 }, () => [b('a'), b('b')] as const);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_MACRO, stage: P.SMFIC_MAIL, macros: pairs }), /257 macro pairs, at most 256/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_MACRO, stage: 0x5a, macros: [] }), /stage 'Z' \(0x5a\) is no SMFIC_\* command/);
    expectProtocolError(() => encodeCommand({ command: P.SMFIC_RCPT, address: b('<a@b>'), esmtpArgs: Array.from({ length: P.MILTER_ARGS_MAX }, () => b('X=1')) }), /65 arguments, at most 64/);
    expectProtocolError(() => encodeReply({ command: P.SMFIR_SETSYMLIST, macroLists: [{ stage: 7 as number as P.MacroStage, names: b('j') }] }), /stage 7: stages are 0 to 6/);
    expectProtocolError(() => encodeReply({ command: P.SMFIR_REPLYCODE, reply: b('250 ok') }), /4xx or 5xx/);
    expectProtocolError(() => encodeReply({ command: P.SMFIR_REPLYCODE, reply: b('55') }), /4xx or 5xx/);
  });

  it('keeps a frame within the bound the peer negotiated', () => {
    const header = { command: P.SMFIC_HEADER, name: b('X-Long'), value: Buffer.alloc(P.MILTER_DATA_BYTES_MAX, 0x61) } as const;
    expect(encodeCommand(header, P.frameBytesMaxFor(P.SMFIP_MDS_256K)).length).toBeGreaterThan(P.MILTER_DATA_BYTES_MAX);
    expectProtocolError(() => encodeCommand(header, P.frameBytesMaxFor(0)), /'L' \(0x4c\) frame of 65544 bytes is over the 65536-byte bound/);
    expect(encodeFrame(P.SMFIR_ACCEPT)).toEqual(encodeReply({ command: P.SMFIR_ACCEPT }));
  });
});
