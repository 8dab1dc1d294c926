import { describe, expect, it } from 'vitest';
import { encodeFields, wireMetadata } from '../../src/plugin/metadata-wire.js';

/** Decoded values are bytes: as text, to compare. */
const text = (fields: Record<string, unknown>): Record<string, string> => Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, Buffer.from(v as Uint8Array).toString()]));

describe('encoded metadata (one encoding per event, shared by every plugin)', () => {
  const session = encodeFields({ session_id: 's1', remote_ip: '127.0.0.1' });
  const body = Buffer.from('Subject: hi\r\n\r\nbody bytes');

  it('starts a message event with the session keys and keeps the body as an uncopied tail', () => {
    const event = encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session);
    expect(event.tail).toBe(body);
    expect(event.count).toBe(4);
    const decoded = wireMetadata(Buffer.concat([event.head, event.tail!]));
    expect(text(decoded.fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org', message_body: body.toString() });
  });

  it('merges the session keys into its fields once: every read is the same object, however many plugins read it', () => {
    const event = encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session);
    const first = event.fields;
    expect(first).toMatchObject({ session_id: 's1', sender: 'a@example.org' });
    for (let call = 0; call < 16; call++) expect(event.fields === first).toBe(true);
  });

  it('drops the body for message_stored without re-encoding the other keys', () => {
    const event = encodeFields({ sender: 'a@example.org', message_body: body }, 'message_body', session);
    const stored = event.withoutTail();
    expect(stored.tail).toBeNull();
    expect(stored.head.buffer).toBe(event.head.buffer);
    expect(text(wireMetadata(stored.head).fields)).toEqual({ session_id: 's1', remote_ip: '127.0.0.1', sender: 'a@example.org' });
  });
});
