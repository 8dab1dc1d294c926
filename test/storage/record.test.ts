import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  BodyKind,
  HEADER_BYTES,
  RECORD_MAGIC,
  RecordFormatError,
  RecordType,
  crcMatches,
  decodeDelivered,
  decodeDone,
  decodeSegment,
  decodeStore,
  encodeDelivered,
  encodeDone,
  encodeSegment,
  encodeStore,
  readHeader,
} from '../../src/storage/record.js';

const FIELDS = {
  id: '0mxabcdef-0123456789abcdef',
  receivedAt: '2026-12-05T10:00:00.000Z',
  from: 'alice@example.org',
  to: ['bob@example.net', 'carol@exämple.net'],
  delivered: ['bob@example.net'],
  extra: { message_id: '<x@example.org>', note: 'ünïcode' },
};

describe('spool records', () => {
  it('lays out the header as docs/spool.md says: magic, type, flags, reserved, length, CRC', () => {
    const body = Buffer.from('Subject: hi\r\n\r\nhello\r\n');
    const { buffers, bytes } = encodeStore({ ...FIELDS, size: body.length, bodyKind: BodyKind.INLINE }, [body]);
    const record = Buffer.concat(buffers);
    expect(record.length).toBe(bytes);
    expect(record.subarray(0, 4).toString('latin1')).toBe('SPR1');
    expect(record.readUInt32LE(0)).toBe(RECORD_MAGIC);
    expect(record[4]).toBe(RecordType.STORE);
    expect(record[5]).toBe(0);
    expect(record.readUInt16LE(6)).toBe(0);
    expect(record.readUInt32LE(8)).toBe(record.length - HEADER_BYTES);
    const crc = crc32(record.subarray(HEADER_BYTES), crc32(record.subarray(4, 12)));
    expect(record.readUInt32LE(12)).toBe(crc >>> 0);
    // The payload: id, receivedAt, size, body kind, reserved, from, to, delivered, extra, body.
    let o = HEADER_BYTES;
    const str = (): string => {
      const n = record.readUInt16LE(o);
      const s = record.toString('utf8', o + 2, o + 2 + n);
      o += 2 + n;
      return s;
    };
    expect(str()).toBe(FIELDS.id);
    expect(str()).toBe(FIELDS.receivedAt);
    expect(record.readDoubleLE(o)).toBe(body.length);
    o += 8;
    expect([record[o], record[o + 1]]).toEqual([BodyKind.INLINE, 0]);
    o += 2;
    expect(str()).toBe(FIELDS.from);
    expect(record.readUInt16LE(o)).toBe(2);
    o += 2;
    expect([str(), str()]).toEqual(FIELDS.to);
    expect(record.readUInt16LE(o)).toBe(1);
    o += 2;
    expect(str()).toBe('bob@example.net');
    expect(record.readUInt16LE(o)).toBe(2);
    o += 2;
    expect([str(), str(), str(), str()]).toEqual(['message_id', '<x@example.org>', 'note', 'ünïcode']);
    expect(record.subarray(o)).toEqual(body);
  });

  it('round-trips every record type', () => {
    const body = [Buffer.from('two '), Buffer.from('chunks')];
    const store = Buffer.concat(encodeStore({ ...FIELDS, size: 10, bodyKind: BodyKind.INLINE }, body).buffers);
    const header = readHeader(store, 0)!;
    expect(header.type).toBe(RecordType.STORE);
    expect(crcMatches(store, 0, header)).toBe(true);
    const decoded = decodeStore(store, HEADER_BYTES, store.length);
    expect(decoded).toMatchObject({ ...FIELDS, size: 10, bodyKind: BodyKind.INLINE });
    expect(store.subarray(decoded.bodyOffset).toString()).toBe('two chunks');

    const file = Buffer.concat(encodeStore({ ...FIELDS, size: 5_000_000, bodyKind: BodyKind.FILE }, []).buffers);
    expect(decodeStore(file, HEADER_BYTES, file.length)).toMatchObject({ size: 5_000_000, bodyKind: BodyKind.FILE, bodyOffset: file.length });

    const delivered = Buffer.concat(encodeDelivered(FIELDS.id, ['a@x', 'b@y']).buffers);
    expect(readHeader(delivered, 0)!.type).toBe(RecordType.DELIVERED);
    expect(decodeDelivered(delivered, HEADER_BYTES, delivered.length)).toEqual({ id: FIELDS.id, recipients: ['a@x', 'b@y'] });

    const done = Buffer.concat(encodeDone(FIELDS.id).buffers);
    expect(done.length).toBe(HEADER_BYTES + 2 + FIELDS.id.length);
    expect(decodeDone(done, HEADER_BYTES, done.length)).toBe(FIELDS.id);

    const segment = Buffer.concat(encodeSegment(42, 1234.5).buffers);
    expect(segment.length).toBe(HEADER_BYTES + 24);
    expect(decodeSegment(segment, HEADER_BYTES, segment.length)).toEqual({ version: 1, sequence: 42, createdMs: 1234.5 });
  });

  it('catches a flipped bit anywhere, in the header or the payload', () => {
    const record = Buffer.concat(encodeStore({ ...FIELDS, size: 3, bodyKind: BodyKind.INLINE }, [Buffer.from('abc')]).buffers);
    for (let byte = 4; byte < record.length; byte++) {
      const damaged = Buffer.from(record);
      damaged[byte]! ^= 0x10;
      const header = readHeader(damaged, 0);
      expect(header === null || !crcMatches(damaged, 0, header), `byte ${byte}`).toBe(true);
    }
    const noMagic = Buffer.from(record);
    noMagic[0] = 0;
    expect(readHeader(noMagic, 0)).toBeNull();
  });

  it('refuses fields over their bounds instead of writing a record that reads back wrong', () => {
    expect(() => encodeStore({ ...FIELDS, extra: { big: 'x'.repeat(70_000) }, size: 0, bodyKind: BodyKind.FILE }, [])).toThrow(RecordFormatError);
    expect(() => encodeDelivered(FIELDS.id, Array.from({ length: 70_000 }, () => 'r'))).toThrow(RecordFormatError);
  });
});
