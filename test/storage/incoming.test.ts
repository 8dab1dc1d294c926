import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LARGE_QUEUE_BYTES_MAX } from '../../src/storage/incoming.js';
import { DEFAULT_INLINE_BYTES_MAX } from '../../src/storage/spool.js';
import { ENVELOPE, openSpool, reopen, sameBytes } from './spool-helpers.js';

const CHUNK_BYTES = 64 * 1024;

/** Chunk `i` of a large test message: its bytes depend on `i`, so a reordering or a lost chunk shows. */
function chunk(i: number): Buffer {
  const b = Buffer.alloc(CHUNK_BYTES);
  for (let j = 0; j < b.length; j += 4) b.writeUInt32LE((i * 2654435761 + j) >>> 0, j);
  return b;
}

describe('IncomingMessage', () => {
  it('keeps a message up to inlineBytesMax in memory and stores it inline', async () => {
    const spool = await openSpool({ inlineBytesMax: 1000 });
    const incoming = spool.receive();
    expect(incoming.write(Buffer.alloc(600, 'a'))).toBeUndefined();
    expect(incoming.write(Buffer.alloc(400, 'b'))).toBeUndefined();
    expect(incoming.inline).toBe(true);
    expect(incoming.size).toBe(1000);
    const body = incoming.body()!;
    expect(body).toEqual(Buffer.concat([Buffer.alloc(600, 'a'), Buffer.alloc(400, 'b')]));
    expect(incoming.body()).toBe(body); // built once
    expect(incoming.head()).toBe(body);
    const stored = await incoming.commit(ENVELOPE, { k: 'v' });
    expect(stored).toMatchObject({ id: incoming.id, size: 1000, path: undefined, extra: { k: 'v' } });
    expect(await spool.readBody(stored)).toEqual(body);
    expect(() => incoming.write(Buffer.from('more'))).toThrow(/committed/);
    await incoming.discard(); // after a commit: nothing to do, the message stays
    expect(spool.has(stored.id)).toBe(true);
    await spool.close();
  });

  it('spills a 5 MB message to large/ as it arrives, with the memory it holds bounded, and reads it back byte-exact', async () => {
    const spool = await openSpool();
    const incoming = spool.receive();
    const chunks = Math.ceil((5 * 2 ** 20) / CHUNK_BYTES);
    const hash = createHash('sha256');
    let heldMax = 0;
    let waits = 0;
    for (let i = 0; i < chunks; i++) {
      const c = chunk(i);
      hash.update(c);
      const wait = incoming.write(c);
      heldMax = Math.max(heldMax, incoming.heldBytes);
      if (wait) {
        waits++;
        await wait;
      }
    }
    expect(incoming.inline).toBe(false);
    expect(incoming.body()).toBeNull();
    expect(incoming.size).toBe(chunks * CHUNK_BYTES);
    // The head stays in memory for the header checks.
    expect(sameBytes(incoming.head(), Buffer.concat(Array.from({ length: DEFAULT_INLINE_BYTES_MAX / CHUNK_BYTES }, (_, i) => chunk(i))))).toBe(true);
    // Bounded: the head plus at most ~1 MiB queued for the file (and the chunk that crossed it).
    expect(heldMax).toBeLessThanOrEqual(DEFAULT_INLINE_BYTES_MAX + LARGE_QUEUE_BYTES_MAX + CHUNK_BYTES);
    console.info(`5 MB message: held at most ${(heldMax / 2 ** 10).toFixed(0)} KiB in memory, the writer waited ${waits} times`);
    const sha = hash.digest('hex');
    // Read back before commit (as the body hooks do) into a caller's buffer, larger than the message.
    const target = Buffer.alloc(incoming.size + 100, 0xaa);
    const view = await incoming.readBodyInto(target);
    expect(view.buffer).toBe(target.buffer);
    expect(createHash('sha256').update(view).digest('hex')).toBe(sha);
    await expect(incoming.readBodyInto(Buffer.alloc(10))).rejects.toThrow(RangeError);
    const stored = await incoming.commit(ENVELOPE);
    expect(stored.path).toBe(join(spool.dir, 'large', `${stored.id}.eml`));
    expect(createHash('sha256').update(await spool.readBody(stored)).digest('hex')).toBe(sha);
    const streamed = createHash('sha256');
    for await (const c of spool.openBody(stored)) streamed.update(c as Buffer);
    expect(streamed.digest('hex')).toBe(sha);
    const again = await reopen(spool);
    const [listed] = await again.list();
    expect(listed).toEqual(stored);
    expect(createHash('sha256').update(await again.readBody(listed!)).digest('hex')).toBe(sha);
    await again.close();
  });

  it('discard drops what was received, file and all; it is idempotent', async () => {
    const spool = await openSpool();
    const incoming = spool.receive();
    for (let i = 0; i < 8; i++) await incoming.write(chunk(i));
    expect(incoming.inline).toBe(false);
    expect((await incoming.readBody()).length).toBe(8 * CHUNK_BYTES);
    await Promise.all([incoming.discard(), incoming.discard()]);
    await incoming.discard();
    expect(readdirSync(join(spool.dir, 'large'))).toEqual([]);
    await expect(incoming.commit(ENVELOPE)).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    expect(await spool.list()).toEqual([]);
    await spool.close();
  });

  it('a failed commit leaves nothing behind, and discard after it is safe', async () => {
    const spool = await openSpool();
    const incoming = spool.receive();
    for (let i = 0; i < 6; i++) await incoming.write(chunk(i));
    const path = join(spool.dir, 'large', `${incoming.id}.eml`);
    await expect(incoming.commit({ from: 'a@example.org', to: [] })).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    expect(existsSync(path)).toBe(false);
    await incoming.discard();
    expect(spool.stats.records).toBe(0);
    await spool.close();
  });
});
