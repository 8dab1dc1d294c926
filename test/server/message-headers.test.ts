import { describe, expect, it } from 'vitest';
import { HEADER_LINE_BYTES_MAX, checkHeaders } from '../../src/server/message-headers.js';

const check = (text: string) => checkHeaders(Buffer.from(text, 'latin1'));

describe('checkHeaders', () => {
  it('yields the first Message-ID, Subject and From, unfolded, whatever the line ends', () => {
    const headers = check('Received: by x\r\n  with y\r\nFROM: <a@example.com>\nSubject: first\r\n\tpart two\r\nMessage-ID:  <1@x> \r\nSubject: second\r\n from:<b@example.com>\r\n\r\nBody: not a header\r\n');
    expect(headers).toEqual({ problem: null, messageId: '<1@x>', subject: 'first part two', from: '<a@example.com>' });
  });

  it('ignores continuation lines of a repeated field', () => {
    expect(check('Subject: one\r\nSubject: two\r\n three\r\n\r\n').subject).toBe('one');
  });

  it('names the first malformed line, counting from 1', () => {
    expect(check('From: a\r\nnot a field\r\n\r\n').problem).toBe('header line 2 is not "Name: value"');
    expect(check('From: a\r\nX: \0\r\n\r\n').problem).toBe('header line 2 holds a NUL byte');
    expect(check(`From: a\r\nX: ${'y'.repeat(HEADER_LINE_BYTES_MAX)}\r\n\r\n`).problem).toBe(`header line 2 is over ${HEADER_LINE_BYTES_MAX} characters`);
    expect(check('From: a\r\n\r\n').problem).toBeNull();
  });

  it('keeps what it read before the problem, and treats a message without a first field as all body', () => {
    expect(check('Subject: kept\r\nbroken\r\n\r\n')).toEqual({ problem: 'header line 2 is not "Name: value"', messageId: null, subject: 'kept', from: null });
    expect(check(' continued\r\nFrom: a\r\n\r\n')).toEqual({ problem: null, messageId: null, subject: null, from: null });
  });

  it('ends the header section at the first empty line, CRLF or LF', () => {
    expect(check('Subject: a\n\nSubject: b\r\n\r\n').subject).toBe('a');
    expect(check('Subject: a').subject).toBe('a');
  });
});
