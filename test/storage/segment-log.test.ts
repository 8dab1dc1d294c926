import { statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Spool } from '../../src/storage/spool.js';
import { PREALLOCATE_EXTENT_BYTES } from '../../src/storage/segment-log.js';
import { ENVELOPE, messageBytes, openSpool, recordsEnd, reopen, sameBytes, segmentFiles } from './spool-helpers.js';

/** Small segments, so that a few messages roll them. */
const SEGMENT_BYTES_MAX = 4096;

/** Stores and removes `count` 1 KiB messages: traffic that fills segments and leaves them dead. */
async function churn(spool: Spool, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const m = await spool.store(ENVELOPE, messageBytes(`churn-${i}`, 1024));
    await spool.remove(m.id);
  }
}

describe('Spool segments', () => {
  it('rolls at segmentBytesMax and starts a fresh segment at every open', async () => {
    const spool = await openSpool({ segmentBytesMax: SEGMENT_BYTES_MAX });
    const stored = [];
    for (let i = 0; i < 20; i++) stored.push(await spool.store(ENVELOPE, messageBytes(`m-${i}`, 1024)));
    const files = segmentFiles(spool.dir);
    expect(files.length).toBeGreaterThanOrEqual(5);
    for (const name of files) expect(statSync(join(spool.dir, name)).size).toBeLessThanOrEqual(SEGMENT_BYTES_MAX);
    const again = await reopen(spool, { segmentBytesMax: SEGMENT_BYTES_MAX });
    const after = segmentFiles(again.dir);
    expect(after.at(-1)! > files.at(-1)!).toBe(true);
    expect((await again.list()).map((m) => m.id)).toEqual(stored.map((m) => m.id));
    await again.close();
  });

  it('with fsync, zero-fills the active segment ahead of its records; without, the file is its records', async () => {
    for (const fsync of [true, false]) {
      const spool = await openSpool({ fsync });
      const stored = [];
      for (let i = 0; i < 5; i++) stored.push(await spool.store(ENVELOPE, messageBytes(`m-${i}`, 1024)));
      const path = join(spool.dir, segmentFiles(spool.dir).at(-1)!);
      const end = recordsEnd(path);
      expect(end).toBeGreaterThan(5 * 1024);
      const size = statSync(path).size;
      if (fsync) expect(size).toBeGreaterThanOrEqual(PREALLOCATE_EXTENT_BYTES);
      else expect(size).toBe(end);
      // The zeros after the records are the segment's clean end: everything is read back.
      const again = await reopen(spool, { fsync });
      expect((await again.list()).map((m) => m.id)).toEqual(stored.map((m) => m.id));
      await again.close();
    }
  });

  it('deletes segments only oldest first: a live message in the oldest keeps every later one', async () => {
    const spool = await openSpool({ segmentBytesMax: SEGMENT_BYTES_MAX });
    // Too big a share of its segment to be worth compacting (over a quarter of segmentBytesMax).
    const pinned = await spool.store(ENVELOPE, messageBytes('pinned', 2000));
    await churn(spool, 30);
    await spool.compact();
    const files = segmentFiles(spool.dir);
    expect(files.length).toBeGreaterThan(5);
    expect(files[0]).toBe('0000000000000001.seg');
    // Every later segment is dead, yet none went: each may hold the DONE of a message in an older one.
    expect(spool.stats.segmentsRemoved).toBe(0);
    expect(spool.stats.compactions).toBe(0);

    await spool.remove(pinned.id);
    await spool.compact();
    expect(segmentFiles(spool.dir)).toEqual([files.at(-1)]);
    const again = await reopen(spool, { segmentBytesMax: SEGMENT_BYTES_MAX });
    expect(await again.list()).toEqual([]);
    await again.close();
  });

  it('compaction frees a segment pinned by one old message, keeping its bytes and progress', async () => {
    let spool = await openSpool({ segmentBytesMax: SEGMENT_BYTES_MAX });
    const body = messageBytes('relay down for days', 300);
    const pinned = await spool.store(ENVELOPE, body);
    const large = await spool.store(ENVELOPE, Buffer.alloc(300_000, 'L'));
    await spool.markDelivered(pinned.id, 'bob@example.net');
    await churn(spool, 30);
    await spool.compact();
    expect(spool.stats.compactions).toBeGreaterThanOrEqual(1);
    // The dead segments behind the copied ones are gone; at most the active one and the one holding the copies remain.
    const files = segmentFiles(spool.dir);
    expect(files.length).toBeLessThanOrEqual(2);
    expect(files).not.toContain('0000000000000001.seg');
    for (let round = 0; round < 2; round++) {
      const listed = await spool.list();
      expect(listed.map((m) => m.id)).toEqual([pinned.id, large.id]);
      expect(listed[0]!.delivered).toEqual(['bob@example.net']);
      expect(await spool.readBody(listed[0]!)).toEqual(body);
      expect(sameBytes(await spool.readBody(listed[1]!), Buffer.alloc(300_000, 'L'))).toBe(true);
      spool = await reopen(spool, { segmentBytesMax: SEGMENT_BYTES_MAX });
    }
    await spool.close();
  });

  it('a message removed while its segment is being compacted stays removed', async () => {
    let spool = await openSpool({ segmentBytesMax: SEGMENT_BYTES_MAX });
    const a = await spool.store(ENVELOPE, messageBytes('a', 200));
    const b = await spool.store(ENVELOPE, messageBytes('b', 200));
    await churn(spool, 20);
    const compacting = spool.compact();
    await spool.remove(a.id);
    await compacting;
    await spool.compact();
    expect((await spool.list()).map((m) => m.id)).toEqual([b.id]);
    spool = await reopen(spool, { segmentBytesMax: SEGMENT_BYTES_MAX });
    expect((await spool.list()).map((m) => m.id)).toEqual([b.id]);
    await spool.close();
  });
});
