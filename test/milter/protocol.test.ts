import { describe, expect, it } from 'vitest';
import * as protocol from '../../src/milter/protocol.js';
import {
  COMMAND_NAMES, MILTER_DATA_1M_BYTES_MAX, MILTER_DATA_256K_BYTES_MAX, MILTER_DATA_BYTES_MAX, MILTER_FRAME_BYTES_MAX, MILTER_PROTOCOL_ERROR,
  REPLY_NAMES, SMFIP_MDS_1M, SMFIP_MDS_256K, SMFIP_NR_HDR, describeCode, frameBytesMaxFor, isMacroStage, milterProtocolError,
} from '../../src/milter/protocol.js';
import { isHostError } from '../../src/errors.js';

/**
 * The values below are transcribed from sendmail 8.15's
 * include/libmilter/mfdef.h and mfapi.h (hrs-allbsd/sendmail on GitHub),
 * as characters and hex where the header writes them so: a mistyped
 * constant in protocol.ts shows up here as a mismatch with the C text.
 */
const MFDEF_CHARS: Record<string, string> = {
  SMFIC_ABORT: 'A', SMFIC_BODY: 'B', SMFIC_CONNECT: 'C', SMFIC_MACRO: 'D', SMFIC_BODYEOB: 'E', SMFIC_HELO: 'H', SMFIC_QUIT_NC: 'K',
  SMFIC_HEADER: 'L', SMFIC_MAIL: 'M', SMFIC_EOH: 'N', SMFIC_OPTNEG: 'O', SMFIC_QUIT: 'Q', SMFIC_RCPT: 'R', SMFIC_DATA: 'T', SMFIC_UNKNOWN: 'U',
  SMFIR_ADDRCPT: '+', SMFIR_DELRCPT: '-', SMFIR_ADDRCPT_PAR: '2', SMFIR_SHUTDOWN: '4', SMFIR_ACCEPT: 'a', SMFIR_REPLBODY: 'b',
  SMFIR_CONTINUE: 'c', SMFIR_DISCARD: 'd', SMFIR_CHGFROM: 'e', SMFIR_CONN_FAIL: 'f', SMFIR_ADDHEADER: 'h', SMFIR_INSHEADER: 'i',
  SMFIR_SETSYMLIST: 'l', SMFIR_CHGHEADER: 'm', SMFIR_PROGRESS: 'p', SMFIR_QUARANTINE: 'q', SMFIR_REJECT: 'r', SMFIR_SKIP: 's',
  SMFIR_TEMPFAIL: 't', SMFIR_REPLYCODE: 'y',
  SMFIA_UNKNOWN: 'U', SMFIA_UNIX: 'L', SMFIA_INET: '4', SMFIA_INET6: '6',
};

const MFDEF_FLAGS: Record<string, number> = {
  SMFIF_ADDHDRS: 0x00000001, SMFIF_CHGBODY: 0x00000002, SMFIF_ADDRCPT: 0x00000004, SMFIF_DELRCPT: 0x00000008, SMFIF_CHGHDRS: 0x00000010,
  SMFIF_QUARANTINE: 0x00000020, SMFIF_CHGFROM: 0x00000040, SMFIF_ADDRCPT_PAR: 0x00000080, SMFIF_SETSYMLIST: 0x00000100, SMFIF_ALL: 0x000001ff,
  SMFIP_NOCONNECT: 0x00000001, SMFIP_NOHELO: 0x00000002, SMFIP_NOMAIL: 0x00000004, SMFIP_NORCPT: 0x00000008, SMFIP_NOBODY: 0x00000010,
  SMFIP_NOHDRS: 0x00000020, SMFIP_NOEOH: 0x00000040, SMFIP_NR_HDR: 0x00000080, SMFIP_NOUNKNOWN: 0x00000100, SMFIP_NODATA: 0x00000200,
  SMFIP_SKIP: 0x00000400, SMFIP_RCPT_REJ: 0x00000800, SMFIP_NR_CONN: 0x00001000, SMFIP_NR_HELO: 0x00002000, SMFIP_NR_MAIL: 0x00004000,
  SMFIP_NR_RCPT: 0x00008000, SMFIP_NR_DATA: 0x00010000, SMFIP_NR_UNKN: 0x00020000, SMFIP_NR_EOH: 0x00040000, SMFIP_NR_BODY: 0x00080000,
  SMFIP_HDR_LEADSPC: 0x00100000, SMFIP_MDS_256K: 0x10000000, SMFIP_MDS_1M: 0x20000000, SMFIP_ALL: 0x001fffff,
  SMFIM_CONNECT: 0, SMFIM_HELO: 1, SMFIM_ENVFROM: 2, SMFIM_ENVRCPT: 3, SMFIM_DATA: 4, SMFIM_EOM: 5, SMFIM_EOH: 6,
  MILTER_PROTOCOL_VERSION: 6, MILTER_CHUNK_BYTES: 65535, MILTER_DATA_BYTES_MAX: 65535, MILTER_OPTNEG_BYTES: 12, MILTER_LENGTH_BYTES: 4,
  MILTER_DATA_256K_BYTES_MAX: 256 * 1024 - 1, MILTER_DATA_1M_BYTES_MAX: 1024 * 1024 - 1,
};

const exported = protocol as unknown as Record<string, unknown>;

describe('milter protocol constants', () => {
  it('match the codes of mfdef.h, character for character', () => {
    for (const [name, char] of Object.entries(MFDEF_CHARS)) expect([name, exported[name]]).toEqual([name, char.charCodeAt(0)]);
  });

  it('match the flags, stages and sizes of mfdef.h and mfapi.h', () => {
    for (const [name, value] of Object.entries(MFDEF_FLAGS)) expect([name, exported[name]]).toEqual([name, value]);
  });

  it('export no SMFI* constant that the headers do not define', () => {
    const ours = Object.keys(exported).filter((name) => /^SMFI[CRAFPM]_/.test(name) && !/_MASK$/.test(name));
    expect(ours.filter((name) => !(name in MFDEF_CHARS) && !(name in MFDEF_FLAGS))).toEqual([]);
  });

  it('name every command and reply once, and never reuse a code between the two tables except none', () => {
    expect(COMMAND_NAMES.size).toBe(15);
    expect(REPLY_NAMES.size).toBe(20);
    for (const code of COMMAND_NAMES.keys()) expect(REPLY_NAMES.has(code)).toBe(false);
    for (const [code, name] of [...COMMAND_NAMES, ...REPLY_NAMES]) expect(exported[name]).toBe(code);
  });

  it('keeps the flag groups inside the version-6 protocol bits', () => {
    expect(protocol.SMFIP_NOSEND_MASK & ~protocol.SMFIP_ALL).toBe(0);
    expect(protocol.SMFIP_NOREPLY_MASK & ~protocol.SMFIP_ALL).toBe(0);
    expect(protocol.SMFIP_NOSEND_MASK & protocol.SMFIP_NOREPLY_MASK).toBe(0);
    expect(protocol.SMFIP_NOREPLY_MASK & SMFIP_NR_HDR).toBe(SMFIP_NR_HDR);
  });

  it('derives the frame bound from the negotiated data-size flag', () => {
    expect(frameBytesMaxFor(0)).toBe(1 + MILTER_DATA_BYTES_MAX);
    expect(frameBytesMaxFor(SMFIP_MDS_256K)).toBe(1 + MILTER_DATA_256K_BYTES_MAX);
    expect(frameBytesMaxFor(SMFIP_MDS_1M | SMFIP_MDS_256K)).toBe(1 + MILTER_DATA_1M_BYTES_MAX);
    expect(MILTER_FRAME_BYTES_MAX).toBe(1024 * 1024);
  });

  it('knows the seven macro stages and nothing else', () => {
    expect([-1, 0, 6, 7, 1.5].map(isMacroStage)).toEqual([false, true, true, false, false]);
  });

  it('describes codes for traces and raises its errors with one code', () => {
    expect(describeCode(0x4f)).toBe("'O' (0x4f)");
    expect(describeCode(0x00)).toBe('(0x00)');
    const error = milterProtocolError('test');
    expect(isHostError(error, MILTER_PROTOCOL_ERROR)).toBe(true);
    expect(error.message).toBe('milter protocol: test');
  });
});
