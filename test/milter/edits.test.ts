import { describe, expect, it } from 'vitest';
import { applyMilterEdits } from '../../src/milter/edits.js';
import type { MilterReply } from '../../src/milter/codec.js';
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
} from '../../src/milter/protocol.js';

const b = (text: string): Buffer => Buffer.from(text, 'latin1');
const MESSAGE = b('From: a@example.test\r\nSubject: hello\r\nX-Delete-Me: 1\r\nX-Multi: one\r\n two\r\nX-Delete-Me: 2\r\n\r\nbody line\r\n');
const ENVELOPE = { sender: 'a@example.test', recipients: ['b@example.test', 'c@example.test'] };

describe('applyMilterEdits', () => {
  it('leaves the message and envelope as they are when nothing is asked', () => {
    const edited = applyMilterEdits(MESSAGE, ENVELOPE, []);
    expect(edited.raw).toBe(MESSAGE);
    expect(edited).toMatchObject({ sender: 'a@example.test', recipients: ['b@example.test', 'c@example.test'], quarantine: null, contentChanged: false });
  });

  it('appends, inserts at the top, changes and deletes header fields, restoring the space after the colon and CRLF folds', () => {
    const edits: MilterReply[] = [
      { command: SMFIR_ADDHEADER, name: b('X-Added'), value: b('first\n\tfolded') },
      { command: SMFIR_INSHEADER, index: 0, name: b('DKIM-Signature'), value: b('v=1; d=example.test') },
      { command: SMFIR_CHGHEADER, index: 1, name: b('subject'), value: b('changed') },
      { command: SMFIR_CHGHEADER, index: 2, name: b('X-Delete-Me'), value: b('') },
      { command: SMFIR_CHGHEADER, index: 1, name: b('X-Spam'), value: b('Yes') },
    ];
    const edited = applyMilterEdits(MESSAGE, ENVELOPE, edits);
    expect(edited.contentChanged).toBe(true);
    expect(edited.raw.toString('latin1')).toBe(
      'DKIM-Signature: v=1; d=example.test\r\nFrom: a@example.test\r\nsubject: changed\r\nX-Delete-Me: 1\r\nX-Multi: one\r\n two\r\nX-Added: first\r\n\tfolded\r\nX-Spam: Yes\r\n\r\nbody line\r\n',
    );
  });

  it('keeps a milter\'s own leading space when it negotiated SMFIP_HDR_LEADSPC', () => {
    const edited = applyMilterEdits(MESSAGE, ENVELOPE, [{ command: SMFIR_ADDHEADER, name: b('X-Lead'), value: b('  two spaces') }], true);
    expect(edited.raw.toString('latin1')).toContain('\r\nX-Lead:  two spaces\r\n\r\n');
  });

  it('replaces the body with the chunks sent, in order, with CRLF line ends', () => {
    const edited = applyMilterEdits(MESSAGE, ENVELOPE, [
      { command: SMFIR_REPLBODY, chunk: b('new\nbody ') },
      { command: SMFIR_REPLBODY, chunk: b('part two\n') },
    ]);
    expect(edited.raw.toString('latin1').split('\r\n\r\n')[1]).toBe('new\r\nbody part two\r\n');
  });

  it('changes the sender, adds and deletes recipients, and carries the quarantine reason', () => {
    const edited = applyMilterEdits(MESSAGE, ENVELOPE, [
      { command: SMFIR_CHGFROM, sender: b('<changed@example.test>'), esmtpArgs: null },
      { command: SMFIR_ADDRCPT, recipient: b('<added@example.test>') },
      { command: SMFIR_ADDRCPT_PAR, recipient: b('<par@example.test>'), esmtpArgs: b('NOTIFY=NEVER') },
      { command: SMFIR_ADDRCPT, recipient: b('<B@example.test>') },
      { command: SMFIR_DELRCPT, recipient: b('<C@EXAMPLE.TEST>') },
      { command: SMFIR_QUARANTINE, reason: b('held for review') },
    ]);
    expect(edited).toMatchObject({
      sender: 'changed@example.test',
      recipients: ['b@example.test', 'added@example.test', 'par@example.test'],
      quarantine: 'held for review',
      contentChanged: false,
    });
    expect(edited.raw).toBe(MESSAGE);
  });
});
