import { closeSync, cpSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Spool, type SpooledMessage } from '../../src/storage/spool.js';
import { ENVELOPE, capturingLogger, messageBytes, openSpool, recordsEnd, reopen, segmentFiles } from './spool-helpers.js';

/** Stores `count` messages one after the other; returns them with their bytes and where the segment's records end after each. */
async function storeSequentially(spool: Spool, count: number): Promise<{ messages: SpooledMessage[]; bodies: Buffer[]; sizes: number[] }> {
  const messages: SpooledMessage[] = [];
  const bodies: Buffer[] = [];
  const sizes: number[] = [];
  for (let i = 0; i < count; i++) {
    const body = messageBytes(`message-${i}-MARK${i}MARK`, 300 + i * 17);
    messages.push(await spool.store(ENVELOPE, body));
    bodies.push(body);
    sizes.push(recordsEnd(join(spool.dir, segmentFiles(spool.dir).at(-1)!)));
  }
  return { messages, bodies, sizes };
}

function copyOf(dir: string): string {
  const copy = join(mkdtempSync(join(tmpdir(), 'spool-copy-')), 'spool');
  cpSync(dir, copy, { recursive: true });
  return copy;
}

describe('Spool recovery', () => {
  it('a torn tail: every earlier message survives with its bytes, nothing later is invented', async () => {
    const spool = await openSpool();
    const { messages, bodies, sizes } = await storeSequentially(spool, 10);
    await spool.close();
    const [segment] = segmentFiles(spool.dir);
    const boundary = sizes[8]!; // where the 10th record starts
    const end = sizes[9]!;
    // The segment was zero-filled ahead of its records (fsync on): a batch cut short leaves zeros after it, not the file's end.
    expect(statSync(join(spool.dir, segment!)).size).toBeGreaterThan(end);
    // Cut inside the last record's header, inside its payload, one byte short of its end: the file ends there, or zeros follow.
    const cuts = [boundary + 3, boundary + 16 + 5, end - 1].flatMap((cut) => [{ cut, how: 'truncated' }, { cut, how: 'zeroed' }]);
    for (const { cut, how } of cuts) {
      const dir = copyOf(spool.dir);
      if (how === 'truncated') {
        truncateSync(join(dir, segment!), cut);
      } else {
        const fd = openSync(join(dir, segment!), 'r+');
        writeSync(fd, Buffer.alloc(end - cut), 0, end - cut, cut);
        closeSync(fd);
      }
      const { logger, lines } = capturingLogger();
      const again = new Spool({ dir, fsync: true, logger });
      await again.open();
      const listed = await again.list();
      expect(listed.map((m) => m.id), `${how} at ${cut}`).toEqual(messages.slice(0, 9).map((m) => m.id));
      for (const [i, m] of listed.entries()) expect(await again.readBody(m)).toEqual(bodies[i]);
      const torn = lines.find((l) => l.reason === 'torn_tail');
      expect(torn, `${how} at ${cut}`).toMatchObject({ code: 'SMTP_E_SPOOL_READ', segment, offset: boundary });
      // A torn tail is no damage: the old segment is compacted and deleted like any other.
      expect(readdirSync(dir).filter((n) => n.endsWith('.damaged'))).toEqual([]);
      const third = await reopen(again);
      expect((await third.list()).map((m) => m.id)).toEqual(messages.slice(0, 9).map((m) => m.id));
      await third.close();
    }
  });

  it('CRC corruption is detected: the scan stops there, the segment is kept aside for an operator', async () => {
    const spool = await openSpool();
    const { messages, bodies } = await storeSequentially(spool, 10);
    await spool.close();
    const [segment] = segmentFiles(spool.dir);
    const path = join(spool.dir, segment!);
    const bytes = readFileSync(path);
    const at = bytes.indexOf('MARK5MARK') + 2;
    expect(at).toBeGreaterThan(2);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([bytes[at]! ^ 0x01]), 0, 1, at);
    closeSync(fd);

    const { logger, lines } = capturingLogger();
    const again = new Spool({ dir: spool.dir, fsync: true, logger });
    await again.open();
    const listed = await again.list();
    // The scan cannot know where the next record starts once one is bad: the segment stops there.
    expect(listed.map((m) => m.id)).toEqual(messages.slice(0, 5).map((m) => m.id));
    for (const [i, m] of listed.entries()) expect(await again.readBody(m)).toEqual(bodies[i]);
    const corrupt = lines.find((l) => l.reason === 'corrupt_record');
    expect(corrupt).toMatchObject({ code: 'SMTP_E_SPOOL_READ', segment, detail: 'CRC mismatch' });
    expect(corrupt!.bytes_skipped).toBeGreaterThan(0);
    // Its readable messages were copied forward; the file itself is kept under another name, out of the log.
    expect(readdirSync(spool.dir).filter((n) => n.startsWith(`${segment}.`) && n.endsWith('.damaged'))).toHaveLength(1);
    await again.close();
  });

  it('a segment of zeros only (filled ahead, its SEGMENT record never written) is removed, not kept aside', async () => {
    const spool = await openSpool();
    const { messages } = await storeSequentially(spool, 3);
    await spool.close();
    const blank = `${String(999).padStart(16, '0')}.seg`;
    writeFileSync(join(spool.dir, blank), Buffer.alloc(2 ** 20));
    const { logger, lines } = capturingLogger();
    const again = new Spool({ dir: spool.dir, fsync: true, logger });
    await again.open();
    expect((await again.list()).map((m) => m.id)).toEqual(messages.map((m) => m.id));
    expect(readdirSync(spool.dir).filter((n) => n.startsWith(blank))).toEqual([]);
    expect(lines.filter((l) => l.code === 'SMTP_E_SPOOL_READ')).toEqual([]);
    await again.close();
  });

  it('a corrupt inline body is caught when read, not handed on', async () => {
    const spool = await openSpool();
    const body = messageBytes('MARKXMARK', 500);
    const stored = await spool.store(ENVELOPE, body);
    const path = join(spool.dir, segmentFiles(spool.dir)[0]!);
    const at = readFileSync(path).indexOf('MARKXMARK');
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from('Q'), 0, 1, at);
    closeSync(fd);
    await expect(spool.readBody(stored)).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ', message: expect.stringMatching(/CRC/) });
    await spool.close();
  });

  it('a message whose large/ file is missing is skipped with a coded warning; orphan files are removed', async () => {
    const spool = await openSpool();
    const large = await spool.store(ENVELOPE, Buffer.alloc(300_000, 'm'));
    const kept = await spool.store(ENVELOPE, Buffer.alloc(300_000, 'k'));
    await spool.close();
    rmSync(large.path!);
    writeFileSync(join(spool.dir, 'large', '0000abcd1-0123456789abcdef.eml'), 'a store cut short');
    const { logger, lines } = capturingLogger();
    const again = new Spool({ dir: spool.dir, fsync: true, logger });
    await again.open();
    expect((await again.list()).map((m) => m.id)).toEqual([kept.id]);
    expect(lines.find((l) => l.id === large.id)).toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
    expect(readdirSync(join(spool.dir, 'large'))).toEqual([`${kept.id}.eml`]);
    await again.close();
  });
});
