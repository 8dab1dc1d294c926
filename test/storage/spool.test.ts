import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { isHostError } from '../../src/errors.js';
import { Spool } from '../../src/storage/spool.js';
import { ENVELOPE, openSpool, reopen, sameBytes, segmentFiles, spoolDir } from './spool-helpers.js';

const MESSAGE = Buffer.from('From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello \xff bytes\r\n.\r\n', 'latin1');

async function streamed(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('Spool', () => {
  it('stores a message and lists it with its envelope, size and exact bytes', async () => {
    const spool = await openSpool();
    const stored = await spool.store(ENVELOPE, MESSAGE, { message_id: '<x@example.org>' });
    expect(stored.id).toMatch(/^[0-9a-z]+-[0-9a-f]{16}$/);
    expect(stored.size).toBe(MESSAGE.length);
    expect(stored.path).toBeUndefined(); // small: inline in the segment
    expect(await spool.readBody(stored)).toEqual(MESSAGE);
    expect(spool.has(stored.id)).toBe(true);

    const again = await reopen(spool);
    const listed = await again.list();
    expect(listed).toEqual([{ ...stored }]);
    expect(listed[0]!.envelope).toEqual(ENVELOPE);
    expect(listed[0]!.extra).toEqual({ message_id: '<x@example.org>' });
    expect(listed[0]!.delivered).toEqual([]);
    expect(new Date(listed[0]!.receivedAt).getTime()).toBeGreaterThan(Date.now() - 60_000);
    expect(await again.readBody(listed[0]!)).toEqual(MESSAGE);
    expect(await streamed(again.openBody(listed[0]!))).toEqual(MESSAGE);
    // Nothing but one segment: the reopen compacted the few records of the old one forward.
    expect(readdirSync(again.dir)).toEqual(segmentFiles(again.dir));
    expect(segmentFiles(again.dir)).toHaveLength(1);
    await again.close();
  });

  it('stores from a stream and from an async iterable, and lists oldest first', async () => {
    const spool = await openSpool();
    const first = await spool.store(ENVELOPE, Readable.from([MESSAGE.subarray(0, 10), MESSAGE.subarray(10)]));
    const chunks = async function* (): AsyncGenerator<Buffer> {
      yield Buffer.from('Subject: two\r\n\r\n');
      yield Buffer.alloc(300_000, 'a');
    };
    const second = await spool.store({ from: '', to: ['x@example.net'] }, chunks());
    expect(await spool.readBody(first)).toEqual(MESSAGE);
    expect(second.size).toBe(16 + 300_000);
    // Past inlineBytesMax (256 KiB): in its own file.
    expect(second.path).toBe(join(spool.dir, 'large', `${second.id}.eml`));
    expect(sameBytes(readFileSync(second.path!), Buffer.concat([Buffer.from('Subject: two\r\n\r\n'), Buffer.alloc(300_000, 'a')]))).toBe(true);
    expect((await spool.list()).map((m) => m.id)).toEqual([first.id, second.id]);
    await spool.close();
  });

  it('fails with SMTP_E_SPOOL_WRITE and leaves nothing behind when the source fails', async () => {
    const spool = await openSpool();
    const broken = async function* (): AsyncGenerator<Buffer> {
      yield Buffer.from('Subject: cut\r\n');
      throw new Error('client went away');
    };
    const error = await spool.store(ENVELOPE, broken()).catch((e: unknown) => e);
    expect(isHostError(error)).toBe(true);
    expect((error as { code: string }).code).toBe('SMTP_E_SPOOL_WRITE');
    expect((error as { reply?: { code: number } }).reply?.code).toBe(451);
    // A large one cut short: its file goes too.
    const brokenLarge = async function* (): AsyncGenerator<Buffer> {
      for (let i = 0; i < 10; i++) yield Buffer.alloc(64 * 1024, 'b');
      throw new Error('client went away');
    };
    await expect(spool.store(ENVELOPE, brokenLarge())).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    await expect(spool.store({ from: 'a@example.org', to: [] }, MESSAGE)).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    expect(await spool.list()).toEqual([]);
    expect(readdirSync(join(spool.dir, 'large'))).toEqual([]);
    expect(spool.stats.records).toBe(0);
    await spool.close();
  });

  it('removes an entry', async () => {
    const spool = await openSpool();
    const a = await spool.store(ENVELOPE, MESSAGE);
    const b = await spool.store(ENVELOPE, MESSAGE);
    const large = await spool.store(ENVELOPE, Buffer.alloc(400_000, 'l'));
    await spool.remove(a.id);
    await spool.remove(large.id);
    expect((await spool.list()).map((m) => m.id)).toEqual([b.id]);
    expect(spool.has(a.id)).toBe(false);
    await spool.remove(a.id); // already gone: not an error
    await expect(spool.remove('../etc/passwd')).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
    await expect(spool.readBody(a)).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
    const again = await reopen(spool);
    expect((await again.list()).map((m) => m.id)).toEqual([b.id]);
    // The large file went once its DONE was durable (at the latest, at close).
    expect(existsSync(large.path!)).toBe(false);
    await again.close();
  });

  it('quarantines an entry with its record and reason, and removes it from the spool', async () => {
    const spool = await openSpool();
    const stored = await spool.store(ENVELOPE, MESSAGE, { message_id: '<q@example.org>' });
    await spool.markDelivered(stored.id, 'bob@example.net');
    const quarantineDir = join(spool.dir, '..', 'quarantine', 'nested');
    const path = await spool.quarantine(stored, quarantineDir, { why: 'spam' });
    expect(path).toBe(join(quarantineDir, `${stored.id}.eml`));
    expect(readFileSync(path)).toEqual(MESSAGE);
    const record = JSON.parse(readFileSync(join(quarantineDir, `${stored.id}.json`), 'utf8')) as Record<string, unknown>;
    expect(record).toMatchObject({ id: stored.id, envelope: ENVELOPE, size: MESSAGE.length, reason: { why: 'spam' }, delivered: ['bob@example.net'] });
    expect(typeof record.quarantinedAt).toBe('string');
    expect(await spool.list()).toEqual([]);
    expect(readdirSync(quarantineDir).sort()).toEqual([`${stored.id}.eml`, `${stored.id}.json`]);
    // A large one is copied from its file.
    const large = await spool.store(ENVELOPE, Buffer.alloc(300_000, 'q'));
    const largePath = await spool.quarantine(large, quarantineDir, { why: 'big' });
    expect(sameBytes(readFileSync(largePath), Buffer.alloc(300_000, 'q'))).toBe(true);
    const again = await reopen(spool);
    expect(await again.list()).toEqual([]);
    expect(readdirSync(again.dir)).toEqual([...segmentFiles(again.dir), 'large'].sort());
    expect(readdirSync(join(again.dir, 'large'))).toEqual([]);
    await again.close();
  });

  it('records delivery progress that a fresh spool instance reads back', async () => {
    const spool = await openSpool();
    const stored = await spool.store(ENVELOPE, MESSAGE);
    await Promise.all([spool.markDelivered(stored.id, 'bob@example.net'), spool.markDelivered(stored.id, 'bob@example.net')]);
    await spool.markDelivered(stored.id, ['carol@example.net']);
    expect((await spool.list())[0]!.delivered).toEqual(['bob@example.net', 'carol@example.net']);
    await expect(spool.markDelivered('0-00', 'x@y')).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
    const again = await reopen(spool);
    const [listed] = await again.list();
    expect(listed!.delivered).toEqual(['bob@example.net', 'carol@example.net']);
    await again.close();
  });

  it('DONE and DELIVERED records survive a reopen, and nothing removed comes back', async () => {
    let spool = await openSpool();
    const stored = await Promise.all(Array.from({ length: 6 }, (_, i) => spool.store(ENVELOPE, Buffer.from(`Subject: ${i}\r\n\r\nbody ${i}\r\n`))));
    await spool.remove(stored[1]!.id);
    await spool.remove(stored[4]!.id);
    await spool.markDelivered(stored[2]!.id, 'carol@example.net');
    for (let round = 0; round < 3; round++) {
      spool = await reopen(spool);
      const listed = await spool.list();
      expect(listed.map((m) => m.id)).toEqual([0, 2, 3, 5].map((i) => stored[i]!.id));
      expect(listed.find((m) => m.id === stored[2]!.id)!.delivered).toEqual(['carol@example.net']);
      for (const m of listed) expect((await spool.readBody(m)).toString()).toMatch(/^Subject: (\d)\r\n\r\nbody \1\r\n$/);
    }
    await spool.close();
  });

  it('group commit: 50 concurrent stores within the window all resolve, all list, and share fsyncs', async () => {
    const spool = await openSpool({ groupCommitMs: 5 });
    const stored = await Promise.all(Array.from({ length: 50 }, (_, i) => spool.store(ENVELOPE, Buffer.from(`Subject: ${i}\r\n\r\nbody ${i}\r\n`))));
    expect(new Set(stored.map((m) => m.id)).size).toBe(50);
    const listed = await spool.list();
    expect(listed.map((m) => m.id).sort()).toEqual(stored.map((m) => m.id).sort());
    for (const m of listed) expect((await spool.readBody(m)).toString()).toMatch(/^Subject: (\d+)\r\n\r\nbody \1\r\n$/);
    expect(spool.stats.records).toBe(50);
    expect(spool.stats.fsyncs).toBeLessThanOrEqual(2);
    await spool.close();
  });

  it('interleaved concurrent stores from 20 writers share fsyncs (groupCommitMs 0: no added wait)', async () => {
    const spool = await openSpool();
    const writers = 20;
    const each = 10;
    await Promise.all(
      Array.from({ length: writers }, async (_, lane) => {
        for (let i = 0; i < each; i++) await spool.store(ENVELOPE, Buffer.from(`Subject: ${lane}-${i}\r\n\r\n${'x'.repeat(1000)}\r\n`));
      }),
    );
    const { batches, records, fsyncs } = spool.stats;
    expect(records).toBe(writers * each);
    expect(fsyncs).toBe(batches);
    // One writer alone would need 200; each batch carries the stores that queued during the previous fsync.
    expect(fsyncs).toBeLessThanOrEqual((writers * each) / 4);
    console.info(`group commit: ${records} stores from ${writers} writers in ${batches} batches, ${(records / fsyncs).toFixed(1)} per fsync`);
    await spool.close();
  });

  it('groupCommitMs > 0: a commit waits for company, so two stores 5 ms apart share one fsync', async () => {
    const spool = await openSpool({ groupCommitMs: 50 });
    const first = spool.store(ENVELOPE, MESSAGE);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const second = spool.store(ENVELOPE, MESSAGE);
    await Promise.all([first, second]);
    expect(spool.stats).toMatchObject({ batches: 1, records: 2, fsyncs: 1 });
    await spool.close();
  });

  it('groupCommitMs > 0: once a batch has as many commits as the last ones carried, it does not wait out the window', async () => {
    const spool = await openSpool({ groupCommitMs: 400 });
    const started = Date.now();
    // Five closed-loop writers, as SMTP sessions waiting for their 250: after the first window, each batch is full at once.
    await Promise.all(Array.from({ length: 5 }, async () => {
      for (let i = 0; i < 6; i++) await spool.store(ENVELOPE, MESSAGE);
    }));
    expect(spool.stats).toMatchObject({ records: 30, fsyncs: 6 });
    expect(Date.now() - started).toBeLessThan(6 * 400);
    await spool.close();
  });

  it('fsync false: no fsync at all, writes still batched', async () => {
    const spool = await openSpool({ fsync: false });
    await Promise.all(Array.from({ length: 40 }, () => spool.store(ENVELOPE, MESSAGE)));
    expect(spool.stats.fsyncs).toBe(0);
    expect(spool.stats.batches).toBeLessThan(5);
    await spool.close();
  });

  it('is not usable before open or after close, and close is idempotent', async () => {
    const spool = new Spool({ dir: spoolDir(), fsync: true });
    expect(() => spool.receive()).toThrow(/not open/);
    await expect(spool.list()).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
    await spool.open();
    await expect(new Spool({ dir: spool.dir, fsync: true }).open()).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    await spool.close();
    await spool.close();
    await expect(spool.store(ENVELOPE, MESSAGE)).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    expect(() => new Spool({ dir: spool.dir, fsync: true, inlineBytesMax: -1 })).toThrow(/inlineBytesMax: expected an integer/);
    expect(() => new Spool({ dir: spool.dir, fsync: true, segmentBytesMax: 10 })).toThrow(/segmentBytesMax/);
  });
});
