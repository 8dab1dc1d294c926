/**
 * Applies a milter's end-of-message modifications to the message and its
 * envelope, as Postfix's cleanup does: every action of protocol version 6
 * (add, insert, change and delete header; replace body; add and delete
 * recipient; change sender; quarantine). Header values arrive folded with
 * bare LFs and, unless the milter negotiated SMFIP_HDR_LEADSPC, without the
 * space after the colon: both are restored, so the stored message keeps
 * CRLF line ends and `Name: value` fields.
 */
import { bareAddress } from './address.js';
import { splitMessage } from './client-session.js';
import type { MilterReply } from './codec.js';
import {
  SMFIR_ADDHEADER,
  SMFIR_ADDRCPT,
  SMFIR_ADDRCPT_PAR,
  SMFIR_CHGFROM,
  SMFIR_CHGHEADER,
  SMFIR_DELRCPT,
  SMFIR_INSHEADER,
  SMFIR_QUARANTINE,
  SMFIR_REPLBODY,
} from './protocol.js';

export interface MilterEnvelope {
  readonly sender: string;
  readonly recipients: readonly string[];
}

export interface EditedMessage extends MilterEnvelope {
  readonly raw: Buffer;
  /** The milter's quarantine reason, when it asked for quarantine. */
  readonly quarantine: string | null;
  /** True when the message bytes changed (headers or body). */
  readonly contentChanged: boolean;
}

interface Field {
  readonly name: string;
  readonly bytes: Buffer;
}

const CRLF = Buffer.from('\r\n');


/** Bare LF (and lone CR) line ends made CRLF. */
function crlf(bytes: Buffer): Buffer {
  const text = bytes.toString('latin1');
  return /\r(?!\n)|(?<!\r)\n/.test(text) ? Buffer.from(text.replace(/\r\n|\r|\n/g, '\r\n'), 'latin1') : bytes;
}

function field(name: Buffer, value: Buffer, leadingSpace: boolean): Field {
  const head = Buffer.concat([name, Buffer.from(':'), leadingSpace ? Buffer.alloc(0) : Buffer.from(' ')]);
  return { name: name.toString('latin1').toLowerCase(), bytes: Buffer.concat([head, crlf(value)]) };
}

/**
 * The message and envelope after `modifications`. `leadingSpace`: the
 * milter negotiated SMFIP_HDR_LEADSPC (its header values carry their own
 * leading space).
 */
export function applyMilterEdits(raw: Buffer, envelope: MilterEnvelope, modifications: readonly MilterReply[], leadingSpace = false): EditedMessage {
  const split = splitMessage(raw);
  const fields: Field[] = split.headers.map((header) => ({
    name: header.name.toString('latin1').toLowerCase(),
    bytes: Buffer.concat([header.name, Buffer.from(':'), header.value]),
  }));
  let sender = envelope.sender;
  const recipients = [...envelope.recipients];
  const body: Buffer[] = [];
  let bodyReplaced = false;
  let headersChanged = false;
  let quarantine: string | null = null;
  for (const modification of modifications) {
    switch (modification.command) {
      case SMFIR_ADDHEADER:
        fields.push(field(modification.name, modification.value, leadingSpace));
        headersChanged = true;
        break;
      case SMFIR_INSHEADER:
        fields.splice(Math.min(modification.index, fields.length), 0, field(modification.name, modification.value, leadingSpace));
        headersChanged = true;
        break;
      case SMFIR_CHGHEADER: {
        const name = modification.name.toString('latin1').toLowerCase();
        // Sendmail and Postfix read index 0 as 1: the first field of that name.
        let wanted = Math.max(1, modification.index);
        const at = fields.findIndex((each) => each.name === name && --wanted === 0);
        if (modification.value.length === 0) {
          if (at >= 0) fields.splice(at, 1);
        } else if (at >= 0) {
          fields[at] = field(modification.name, modification.value, leadingSpace);
        } else {
          // A change of a field that is not there adds it (what rspamd's "X-Spam: Yes" relies on).
          fields.push(field(modification.name, modification.value, leadingSpace));
        }
        headersChanged = true;
        break;
      }
      case SMFIR_REPLBODY:
        body.push(modification.chunk);
        bodyReplaced = true;
        break;
      case SMFIR_ADDRCPT:
      case SMFIR_ADDRCPT_PAR: {
        const added = bareAddress(modification.recipient);
        if (!recipients.some((each) => each.toLowerCase() === added.toLowerCase())) recipients.push(added);
        break;
      }
      case SMFIR_DELRCPT: {
        const removed = bareAddress(modification.recipient).toLowerCase();
        for (let i = recipients.length - 1; i >= 0; i--) if (recipients[i]!.toLowerCase() === removed) recipients.splice(i, 1);
        break;
      }
      case SMFIR_CHGFROM:
        sender = bareAddress(modification.sender);
        break;
      case SMFIR_QUARANTINE:
        quarantine = modification.reason.toString('utf8');
        break;
      default:
        break;
    }
  }
  const contentChanged = headersChanged || bodyReplaced;
  if (!contentChanged) return { raw, sender, recipients, quarantine, contentChanged };
  const parts: Buffer[] = [];
  for (const each of fields) parts.push(each.bytes, CRLF);
  parts.push(CRLF, bodyReplaced ? crlf(Buffer.concat(body)) : split.body);
  return { raw: Buffer.concat(parts), sender, recipients, quarantine, contentChanged };
}
