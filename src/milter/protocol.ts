import { hostError, type ErrorCode, type HostError } from '../errors.js';

/**
 * The constants of the Sendmail milter protocol, version 6, as libmilter
 * (sendmail 8.14+) and Postfix's MTA side (src/milter/milter8.c) define
 * them. Names and values follow sendmail's include/libmilter/mfdef.h and
 * mfapi.h one to one so the two can be compared line by line;
 * test/milter/protocol.test.ts checks them against those headers.
 *
 * Command and reply codes are the byte on the wire (an ASCII letter, digit
 * or sign), kept as numbers so a frame's command is compared without
 * decoding it to text.
 */

/** The protocol version this host speaks (SMFI_PROT_VERSION): the first uint32 of SMFIC_OPTNEG. */
export const MILTER_PROTOCOL_VERSION = 6;

// ---------------------------------------------------------------------------
// Commands, MTA -> milter (SMFIC_*).

/** 'A' Abort the current message; the milter resets to before MAIL. No reply. */
export const SMFIC_ABORT = 0x41;
/** 'B' One body chunk, raw bytes, at most MILTER_CHUNK_BYTES. */
export const SMFIC_BODY = 0x42;
/** 'C' Connection: hostname, family, port, address. */
export const SMFIC_CONNECT = 0x43;
/** 'D' Macros (name/value pairs) for the command named in its first byte. No reply. */
export const SMFIC_MACRO = 0x44;
/** 'E' End of body; the milter answers with modifications, then a decision. */
export const SMFIC_BODYEOB = 0x45;
/** 'H' HELO/EHLO argument. */
export const SMFIC_HELO = 0x48;
/** 'K' QUIT, but a new connection follows on the same milter socket (v6). No reply. */
export const SMFIC_QUIT_NC = 0x4b;
/** 'L' One header field: name, value. */
export const SMFIC_HEADER = 0x4c;
/** 'M' MAIL FROM: sender (with <>) then ESMTP arguments. */
export const SMFIC_MAIL = 0x4d;
/** 'N' End of headers. */
export const SMFIC_EOH = 0x4e;
/** 'O' Option negotiation, in both directions: version, actions, protocol flags. */
export const SMFIC_OPTNEG = 0x4f;
/** 'Q' QUIT: the milter closes the connection. No reply. */
export const SMFIC_QUIT = 0x51;
/** 'R' RCPT TO: recipient (with <>) then ESMTP arguments. */
export const SMFIC_RCPT = 0x52;
/** 'T' DATA command seen (v4+). */
export const SMFIC_DATA = 0x54;
/** 'U' An SMTP command the MTA does not know, as its text (v3+). */
export const SMFIC_UNKNOWN = 0x55;

// ---------------------------------------------------------------------------
// Replies and actions, milter -> MTA (SMFIR_*). The milter's own SMFIC_OPTNEG is the negotiation reply.

/** '+' Add a recipient (modification). */
export const SMFIR_ADDRCPT = 0x2b;
/** '-' Remove a recipient, spelled exactly as in SMFIC_RCPT (modification). */
export const SMFIR_DELRCPT = 0x2d;
/** '2' Add a recipient with ESMTP arguments (modification, v6). */
export const SMFIR_ADDRCPT_PAR = 0x32;
/** '4' 421: shut the SMTP connection down (decision). */
export const SMFIR_SHUTDOWN = 0x34;
/** 'a' Accept: no more events for this message (or connection, at CONNECT/HELO). */
export const SMFIR_ACCEPT = 0x61;
/** 'b' Replace the body: one piece of the new body (modification). */
export const SMFIR_REPLBODY = 0x62;
/** 'c' Continue with the next event (decision). */
export const SMFIR_CONTINUE = 0x63;
/** 'd' Accept and silently discard the message (decision). */
export const SMFIR_DISCARD = 0x64;
/** 'e' Change the envelope sender, with optional ESMTP arguments (modification, v6). */
export const SMFIR_CHGFROM = 0x65;
/** 'f' Cause a connection failure (decision). */
export const SMFIR_CONN_FAIL = 0x66;
/** 'h' Append a header (modification). */
export const SMFIR_ADDHEADER = 0x68;
/** 'i' Insert a header at an index (modification). */
export const SMFIR_INSHEADER = 0x69;
/** 'l' Macro lists wanted per stage (v6). Never sent alone: libmilter appends the lists to its SMFIC_OPTNEG, and Postfix drops a milter that sends 'l'. */
export const SMFIR_SETSYMLIST = 0x6c;
/** 'm' Change, or with an empty value delete, the index-th header of a name (modification). */
export const SMFIR_CHGHEADER = 0x6d;
/** 'p' Progress: still working, restart the MTA's timer; the real reply follows. */
export const SMFIR_PROGRESS = 0x70;
/** 'q' Quarantine the message with a reason (modification). */
export const SMFIR_QUARANTINE = 0x71;
/** 'r' Reject with a 5xx (decision). */
export const SMFIR_REJECT = 0x72;
/** 's' Skip: send no more events of this kind, e.g. body chunks (decision, v6, needs SMFIP_SKIP). */
export const SMFIR_SKIP = 0x73;
/** 't' Temporary failure, 4xx (decision). */
export const SMFIR_TEMPFAIL = 0x74;
/** 'y' Reply with this SMTP text, "xyz x.y.z text", NUL-terminated (decision). */
export const SMFIR_REPLYCODE = 0x79;

// ---------------------------------------------------------------------------
// Action flags (SMFIF_*): the modifications a milter may send, in SMFIC_OPTNEG's second uint32.

/** May add headers (SMFIR_ADDHEADER, SMFIR_INSHEADER). */
export const SMFIF_ADDHDRS = 0x0000_0001;
/** May replace the body (SMFIR_REPLBODY). */
export const SMFIF_CHGBODY = 0x0000_0002;
/** May add recipients (SMFIR_ADDRCPT). */
export const SMFIF_ADDRCPT = 0x0000_0004;
/** May remove recipients (SMFIR_DELRCPT). */
export const SMFIF_DELRCPT = 0x0000_0008;
/** May change or delete headers (SMFIR_CHGHEADER). */
export const SMFIF_CHGHDRS = 0x0000_0010;
/** May quarantine the message (SMFIR_QUARANTINE). */
export const SMFIF_QUARANTINE = 0x0000_0020;
/** May change the envelope sender (SMFIR_CHGFROM, v6). */
export const SMFIF_CHGFROM = 0x0000_0040;
/** May add recipients with ESMTP arguments (SMFIR_ADDRCPT_PAR, v6). */
export const SMFIF_ADDRCPT_PAR = 0x0000_0080;
/** May ask for the macros it wants per stage (symbol lists, v6). */
export const SMFIF_SETSYMLIST = 0x0000_0100;
/** Every action flag of version 6 (SMFI_CURR_ACTS). */
export const SMFIF_ALL = 0x0000_01ff;

// ---------------------------------------------------------------------------
// Protocol flags (SMFIP_*), SMFIC_OPTNEG's third uint32: from the MTA what it can do, from the milter what it wants.

/** Do not send SMFIC_CONNECT. */
export const SMFIP_NOCONNECT = 0x0000_0001;
/** Do not send SMFIC_HELO. */
export const SMFIP_NOHELO = 0x0000_0002;
/** Do not send SMFIC_MAIL. */
export const SMFIP_NOMAIL = 0x0000_0004;
/** Do not send SMFIC_RCPT. */
export const SMFIP_NORCPT = 0x0000_0008;
/** Do not send SMFIC_BODY. */
export const SMFIP_NOBODY = 0x0000_0010;
/** Do not send SMFIC_HEADER. */
export const SMFIP_NOHDRS = 0x0000_0020;
/** Do not send SMFIC_EOH. */
export const SMFIP_NOEOH = 0x0000_0040;
/** The milter sends no reply to SMFIC_HEADER (also called SMFIP_NOHREPL). */
export const SMFIP_NR_HDR = 0x0000_0080;
/** Do not send SMFIC_UNKNOWN. */
export const SMFIP_NOUNKNOWN = 0x0000_0100;
/** Do not send SMFIC_DATA. */
export const SMFIP_NODATA = 0x0000_0200;
/** The MTA understands SMFIR_SKIP. */
export const SMFIP_SKIP = 0x0000_0400;
/** Also send recipients the MTA rejected. */
export const SMFIP_RCPT_REJ = 0x0000_0800;
/** No reply to SMFIC_CONNECT. */
export const SMFIP_NR_CONN = 0x0000_1000;
/** No reply to SMFIC_HELO. */
export const SMFIP_NR_HELO = 0x0000_2000;
/** No reply to SMFIC_MAIL. */
export const SMFIP_NR_MAIL = 0x0000_4000;
/** No reply to SMFIC_RCPT. */
export const SMFIP_NR_RCPT = 0x0000_8000;
/** No reply to SMFIC_DATA. */
export const SMFIP_NR_DATA = 0x0001_0000;
/** No reply to SMFIC_UNKNOWN. */
export const SMFIP_NR_UNKN = 0x0002_0000;
/** No reply to SMFIC_EOH. */
export const SMFIP_NR_EOH = 0x0004_0000;
/** No reply to SMFIC_BODY. */
export const SMFIP_NR_BODY = 0x0008_0000;
/** Header values keep their leading space, both ways (the MTA adds none to added or changed headers). */
export const SMFIP_HDR_LEADSPC = 0x0010_0000;
/** Frame data may be up to MILTER_DATA_256K_BYTES (libmilter internal flag, sendmail 8.15). */
export const SMFIP_MDS_256K = 0x1000_0000;
/** Frame data may be up to MILTER_DATA_1M_BYTES (libmilter internal flag, sendmail 8.15). */
export const SMFIP_MDS_1M = 0x2000_0000;
/** Every defined protocol flag of version 6 except the data-size ones (SMFI_CURR_PROT). */
export const SMFIP_ALL = 0x001f_ffff;
/** The flags that ask the MTA not to send an event (Postfix's SMFIP_NOSEND_MASK). */
export const SMFIP_NOSEND_MASK = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA;
/** The flags that say the milter will not reply to an event (Postfix's SMFIP_NOREPLY_MASK). */
export const SMFIP_NOREPLY_MASK = SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY;

// ---------------------------------------------------------------------------
// Address families of SMFIC_CONNECT (SMFIA_*).

/** 'U' Unknown: neither port nor address follows (a local submission, for example). */
export const SMFIA_UNKNOWN = 0x55;
/** 'L' Unix socket: port (0) and socket path follow. */
export const SMFIA_UNIX = 0x4c;
/** '4' IPv4: port and dotted address follow. */
export const SMFIA_INET = 0x34;
/** '6' IPv6: port and address text follow. */
export const SMFIA_INET6 = 0x36;

// ---------------------------------------------------------------------------
// Macro stages (SMFIM_*): the index of a symbol list in the milter's SMFIC_OPTNEG reply.
// Their order is fixed by libmilter and is not the SMTP order (EOM comes before EOH).

/** Macros wanted at SMFIC_CONNECT. */
export const SMFIM_CONNECT = 0;
/** Macros wanted at SMFIC_HELO. */
export const SMFIM_HELO = 1;
/** Macros wanted at SMFIC_MAIL. */
export const SMFIM_ENVFROM = 2;
/** Macros wanted at SMFIC_RCPT. */
export const SMFIM_ENVRCPT = 3;
/** Macros wanted at SMFIC_DATA. */
export const SMFIM_DATA = 4;
/** Macros wanted at SMFIC_BODYEOB (end of message). */
export const SMFIM_EOM = 5;
/** Macros wanted at SMFIC_EOH. */
export const SMFIM_EOH = 6;
/** How many stages there are: a stage index is below this. */
export const MILTER_MACRO_STAGES = 7;

export type MacroStage = typeof SMFIM_CONNECT | typeof SMFIM_HELO | typeof SMFIM_ENVFROM | typeof SMFIM_ENVRCPT | typeof SMFIM_DATA | typeof SMFIM_EOM | typeof SMFIM_EOH;

export function isMacroStage(value: number): value is MacroStage {
  return Number.isInteger(value) && value >= SMFIM_CONNECT && value < MILTER_MACRO_STAGES;
}

// ---------------------------------------------------------------------------
// Limits. A frame is [uint32 length][command byte][data]; "frame bytes" counts what the
// length field counts (the command byte and the data), not the 4-byte length itself.

/** The length field before every frame, big-endian. */
export const MILTER_LENGTH_BYTES = 4;
/** Largest body chunk in SMFIC_BODY (MILTER_CHUNK_SIZE); sendmail and Postfix never send more. */
export const MILTER_CHUNK_BYTES = 65_535;
/** Largest frame data without a data-size flag (MILTER_MAX_DATA_SIZE): what every libmilter accepts. */
export const MILTER_DATA_BYTES_MAX = 65_535;
/** Largest frame data once SMFIP_MDS_256K is negotiated (MILTER_MDS_256K). */
export const MILTER_DATA_256K_BYTES_MAX = 256 * 1024 - 1;
/** Largest frame data once SMFIP_MDS_1M is negotiated (MILTER_MDS_1M). */
export const MILTER_DATA_1M_BYTES_MAX = 1024 * 1024 - 1;
/** Largest length field any version-6 peer may send: the command byte plus MILTER_DATA_1M_BYTES_MAX (1 MiB). */
export const MILTER_FRAME_BYTES_MAX = 1 + MILTER_DATA_1M_BYTES_MAX;
/** SMFIC_OPTNEG's fixed part: version, actions, protocol flags (MILTER_OPTLEN). */
export const MILTER_OPTNEG_BYTES = 12;
/**
 * Most name/value pairs in one SMFIC_MACRO. Sendmail sends at most 50 per
 * stage (MAXFILTERMACROS); the bound keeps a 1 MiB frame of empty strings
 * from becoming a million decoded objects.
 */
export const MILTER_MACRO_PAIRS_MAX = 256;
/** Most strings (the address and its ESMTP arguments) in one SMFIC_MAIL or SMFIC_RCPT; same reason. */
export const MILTER_ARGS_MAX = 64;

/** The largest length field a peer may send once `protocol` (the negotiated SMFIP_* flags) is agreed. */
export function frameBytesMaxFor(protocol: number): number {
  if ((protocol & SMFIP_MDS_1M) !== 0) return 1 + MILTER_DATA_1M_BYTES_MAX;
  if ((protocol & SMFIP_MDS_256K) !== 0) return 1 + MILTER_DATA_256K_BYTES_MAX;
  return 1 + MILTER_DATA_BYTES_MAX;
}

// ---------------------------------------------------------------------------
// Names, for error messages and logs.

/** SMFIC_* code -> name. */
export const COMMAND_NAMES: ReadonlyMap<number, string> = new Map([
  [SMFIC_ABORT, 'SMFIC_ABORT'], [SMFIC_BODY, 'SMFIC_BODY'], [SMFIC_CONNECT, 'SMFIC_CONNECT'], [SMFIC_MACRO, 'SMFIC_MACRO'],
  [SMFIC_BODYEOB, 'SMFIC_BODYEOB'], [SMFIC_HELO, 'SMFIC_HELO'], [SMFIC_QUIT_NC, 'SMFIC_QUIT_NC'], [SMFIC_HEADER, 'SMFIC_HEADER'],
  [SMFIC_MAIL, 'SMFIC_MAIL'], [SMFIC_EOH, 'SMFIC_EOH'], [SMFIC_OPTNEG, 'SMFIC_OPTNEG'], [SMFIC_QUIT, 'SMFIC_QUIT'],
  [SMFIC_RCPT, 'SMFIC_RCPT'], [SMFIC_DATA, 'SMFIC_DATA'], [SMFIC_UNKNOWN, 'SMFIC_UNKNOWN'],
]);

/** SMFIR_* code -> name (SMFIC_OPTNEG, the negotiation reply, is in COMMAND_NAMES). */
export const REPLY_NAMES: ReadonlyMap<number, string> = new Map([
  [SMFIR_ADDRCPT, 'SMFIR_ADDRCPT'], [SMFIR_DELRCPT, 'SMFIR_DELRCPT'], [SMFIR_ADDRCPT_PAR, 'SMFIR_ADDRCPT_PAR'], [SMFIR_SHUTDOWN, 'SMFIR_SHUTDOWN'],
  [SMFIR_ACCEPT, 'SMFIR_ACCEPT'], [SMFIR_REPLBODY, 'SMFIR_REPLBODY'], [SMFIR_CONTINUE, 'SMFIR_CONTINUE'], [SMFIR_DISCARD, 'SMFIR_DISCARD'],
  [SMFIR_CHGFROM, 'SMFIR_CHGFROM'], [SMFIR_CONN_FAIL, 'SMFIR_CONN_FAIL'], [SMFIR_ADDHEADER, 'SMFIR_ADDHEADER'], [SMFIR_INSHEADER, 'SMFIR_INSHEADER'],
  [SMFIR_SETSYMLIST, 'SMFIR_SETSYMLIST'], [SMFIR_CHGHEADER, 'SMFIR_CHGHEADER'], [SMFIR_PROGRESS, 'SMFIR_PROGRESS'], [SMFIR_QUARANTINE, 'SMFIR_QUARANTINE'],
  [SMFIR_REJECT, 'SMFIR_REJECT'], [SMFIR_SKIP, 'SMFIR_SKIP'], [SMFIR_TEMPFAIL, 'SMFIR_TEMPFAIL'], [SMFIR_REPLYCODE, 'SMFIR_REPLYCODE'],
]);

/** A code as a reader finds it in a trace: 'O' (0x4f). */
export function describeCode(code: number): string {
  const printable = code >= 0x20 && code < 0x7f ? `'${String.fromCharCode(code)}' ` : '';
  return `${printable}(0x${code.toString(16).padStart(2, '0')})`;
}

// ---------------------------------------------------------------------------
// Errors.

/**
 * The code of every milter protocol error: a frame over its bound, a
 * payload that is short, unterminated or has bytes left over, an unknown
 * code or family, or a value the encoder cannot put on the wire.
 */
export const MILTER_PROTOCOL_ERROR: ErrorCode = 'SMTP_E_MILTER_PROTOCOL';

export function milterProtocolError(message: string): HostError {
  return hostError(MILTER_PROTOCOL_ERROR, `milter protocol: ${message}`);
}
