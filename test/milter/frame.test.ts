import { describe, expect, it } from 'vitest';
import { FrameDecoder, encodeFrame, type MilterFrame } from '../../src/milter/frame.js';
import { MILTER_FRAME_BYTES_MAX, MILTER_PROTOCOL_ERROR } from '../../src/milter/protocol.js';
import { isHostError } from '../../src/errors.js';

function expectProtocolError(run: () => unknown, message: RegExp): void {
  let thrown: unknown;
  try {
    run();
  } catch (error) {
    thrown = error;
  }
  expect(isHostError(thrown, MILTER_PROTOCOL_ERROR), `expected a ${MILTER_PROTOCOL_ERROR} error, got ${String(thrown)}`).toBe(true);
  expect((thrown as Error).message).toMatch(message);
}

const plain = (frames: readonly MilterFrame[]): Array<[string, string]> => frames.map((f) => [String.fromCharCode(f.command), f.data.toString('hex')]);

describe('encodeFrame', () => {
  it('writes the big-endian length of command + data, the command, then the parts back to back', () => {
    const frame = encodeFrame(0x4c, [Buffer.from('To\0'), Buffer.from('x@y\0')]);
    expect(frame.toString('hex')).toBe('000000084c546f0078407900');
    expect(encodeFrame(0x61).toString('hex')).toBe('0000000161');
  });

  it('refuses a frame over its bound, a bad bound and a command byte no peer defines', () => {
    expect(encodeFrame(0x62, [Buffer.alloc(9)], 10)).toHaveLength(14);
    expectProtocolError(() => encodeFrame(0x62, [Buffer.alloc(10)], 10), /'b' \(0x62\) frame of 11 bytes is over the 10-byte bound/);
    expectProtocolError(() => encodeFrame(0x62, [Buffer.alloc(MILTER_FRAME_BYTES_MAX)]), /over the 1048576-byte bound/);
    expectProtocolError(() => encodeFrame(0x62, [], MILTER_FRAME_BYTES_MAX + 1), /frame bound must be an integer from 1 to 1048576/);
    expectProtocolError(() => encodeFrame(0x62, [], 0), /frame bound/);
    for (const command of [0x00, 0x1f, 0x7f, 0x100, -1, 1.5]) expectProtocolError(() => encodeFrame(command), /command code must be a printable ASCII byte/);
  });
});

describe('FrameDecoder', () => {
  // Frames from d--j/go-milter (a maintained fork of emersion/go-milter), internal/wire/wire_test.go:
  // TestWritePacket "Multiple" writes {0,0,0,1,'a', 0,0,0,1,'b'}; TestReadPacket "With Data" reads
  // {0,0,0,4,'t','e','s','t'} as code 't' with data "est".
  const goMilterMultiple = Buffer.from([0, 0, 0, 1, 0x61, 0, 0, 0, 1, 0x62]);
  const goMilterWithData = Buffer.from([0, 0, 0, 4, 0x74, 0x65, 0x73, 0x74]);

  it("reads go-milter's wire test frames byte for byte, and writes them back the same", () => {
    expect(plain(new FrameDecoder().push(goMilterMultiple))).toEqual([['a', ''], ['b', '']]);
    const [frame] = new FrameDecoder().push(goMilterWithData);
    expect(frame!.command).toBe(0x74);
    expect(frame!.data.toString()).toBe('est');
    expect(Buffer.concat([encodeFrame(0x61), encodeFrame(0x62)])).toEqual(goMilterMultiple);
    expect(encodeFrame(frame!.command, [frame!.data])).toEqual(goMilterWithData);
  });

  it('gives the same frames whichever byte boundary splits the stream, once or into single bytes', () => {
    const stream = Buffer.concat([encodeFrame(0x4f, [Buffer.from('000000060000010000000000', 'hex')]), goMilterMultiple, goMilterWithData, encodeFrame(0x42, [Buffer.alloc(300, 0xfe)])]);
    const whole = plain(new FrameDecoder().push(stream));
    expect(whole).toHaveLength(5);
    for (let cut = 0; cut <= stream.length; cut++) {
      const decoder = new FrameDecoder();
      const frames = [...decoder.push(stream.subarray(0, cut)), ...decoder.push(stream.subarray(cut))];
      expect(plain(frames)).toEqual(whole);
      expect(decoder.atBoundary).toBe(true);
    }
    const decoder = new FrameDecoder();
    const frames: MilterFrame[] = [];
    for (const byte of stream) frames.push(...decoder.push(Uint8Array.of(byte)));
    expect(plain(frames)).toEqual(whole);
  });

  it('hands over frames it never writes to again, whatever arrives after', () => {
    const decoder = new FrameDecoder();
    const [first] = decoder.push(Buffer.concat([encodeFrame(0x42, [Buffer.from('abc')]), Buffer.from([0, 0])]));
    decoder.push(Buffer.concat([Buffer.from([0, 4, 0x42]), Buffer.from('xyz')]));
    expect(first!.data.toString()).toBe('abc');
  });

  it('refuses an oversize frame from its length field alone, holding at most those 4 bytes', () => {
    const decoder = new FrameDecoder(100);
    expect(decoder.push(Buffer.from([0, 0]))).toEqual([]);
    expect(decoder.bufferedBytes).toBe(2);
    expectProtocolError(() => decoder.push(Buffer.from([0, 101, 0x42])), /frame of 101 bytes is over the 100-byte bound/);
    expect(decoder.bufferedBytes).toBeLessThanOrEqual(4);
    // Out of step for good: the same error again, whatever comes next.
    expectProtocolError(() => decoder.push(encodeFrame(0x61)), /frame of 101 bytes/);
    expectProtocolError(() => decoder.end(), /frame of 101 bytes/);
    // 4 GiB announced: refused at once by the default bound, nothing allocated for it.
    const huge = new FrameDecoder();
    expectProtocolError(() => huge.push(Buffer.from([0xff, 0xff, 0xff, 0xff])), /frame of 4294967295 bytes is over the 1048576-byte bound/);
  });

  it('accepts a frame exactly at its bound, and a bound changed after negotiation', () => {
    const decoder = new FrameDecoder(10);
    expect(decoder.push(encodeFrame(0x62, [Buffer.alloc(9)]))).toHaveLength(1);
    decoder.setFrameBytesMax(5);
    expect(decoder.frameBytesMax).toBe(5);
    expectProtocolError(() => decoder.push(encodeFrame(0x62, [Buffer.alloc(5)])), /6 bytes is over the 5-byte bound/);
    expectProtocolError(() => new FrameDecoder(MILTER_FRAME_BYTES_MAX + 1), /frame bound/);
    expectProtocolError(() => new FrameDecoder().setFrameBytesMax(Number.NaN), /frame bound/);
  });

  it('refuses a zero length (no command byte) and a stream that ends inside a frame', () => {
    expectProtocolError(() => new FrameDecoder().push(Buffer.from([0, 0, 0, 0])), /length 0 has no command byte/);
    const inLength = new FrameDecoder();
    inLength.push(Buffer.from([0, 0, 0]));
    expect(inLength.atBoundary).toBe(false);
    expectProtocolError(() => inLength.end(), /ended 3 bytes into a frame \(expected its 4-byte length field\)/);
    const inData = new FrameDecoder();
    inData.push(Buffer.from([0, 0, 0, 3, 0x68, 0x61]));
    expect(inData.bufferedBytes).toBe(6);
    expectProtocolError(() => inData.end(), /ended 6 bytes into a frame \(expected 3 bytes\)/);
    const clean = new FrameDecoder();
    clean.push(encodeFrame(0x61));
    expect(() => clean.end()).not.toThrow();
  });
});
