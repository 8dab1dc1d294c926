import { existsSync, mkdirSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Spool } from '../../src/storage/spool.js';
import { ENVELOPE, capturingLogger, reopen, sameBytes, segmentFiles, spoolDir } from './spool-helpers.js';

const MESSAGE = Buffer.from('From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello \xff bytes\r\n.\r\n', 'latin1');

describe('Spool, the previous layout (<id>.eml + <id>.json)', () => {
  /** Writes an entry the way src/storage/spool.ts did before the segment log. */
  function oldEntry(dir: string, id: string, body: Buffer, delivered: string[] = []): void {
    writeFileSync(join(dir, `${id}.eml`), body);
    const record = { version: 1, id, envelope: ENVELOPE, size: body.length, receivedAt: '2026-01-02T03:04:05.678Z', extra: { message_id: `<${id}@example.org>` }, delivered };
    writeFileSync(join(dir, `${id}.json`), JSON.stringify(record));
  }

  it('adopts every readable pair without loss, cleans a crash\'s leftovers, keeps what it cannot read, ignores bounced/', async () => {
    const dir = spoolDir();
    mkdirSync(join(dir, 'bounced'), { recursive: true });
    writeFileSync(join(dir, 'bounced', '0000abcd0-1111111111111111.eml'), 'bounced mail');
    oldEntry(dir, '0000abcd1-0123456789abcdef', MESSAGE);
    oldEntry(dir, '0000abcd2-0123456789abcdef', Buffer.alloc(500_000, 'z'), ['bob@example.net']);
    // Leftovers of an interrupted old store: temp files and an .eml whose .json never landed.
    writeFileSync(join(dir, '.tmp-0000abcde-0123456789abcdef.1a2b3c4d.eml'), 'half a mess');
    writeFileSync(join(dir, '.tmp-0000abcde-0123456789abcdef.5e6f7a8b.json'), '{"id":');
    writeFileSync(join(dir, '0000abcdf-fedcba9876543210.eml'), MESSAGE);
    // An entry it cannot read: skipped, kept, since it may hold acknowledged mail.
    writeFileSync(join(dir, '0000abce0-fedcba9876543210.eml'), MESSAGE);
    writeFileSync(join(dir, '0000abce0-fedcba9876543210.json'), 'not json');

    const { logger, lines } = capturingLogger();
    const spool = new Spool({ dir, fsync: true, logger });
    await spool.open();
    const listed = await spool.list();
    expect(listed.map((m) => m.id)).toEqual(['0000abcd1-0123456789abcdef', '0000abcd2-0123456789abcdef']);
    expect(listed[0]).toEqual({
      id: '0000abcd1-0123456789abcdef',
      envelope: ENVELOPE,
      size: MESSAGE.length,
      receivedAt: '2026-01-02T03:04:05.678Z',
      extra: { message_id: '<0000abcd1-0123456789abcdef@example.org>' },
      delivered: [],
      path: join(dir, 'large', '0000abcd1-0123456789abcdef.eml'),
    });
    expect(listed[1]!.delivered).toEqual(['bob@example.net']);
    expect(await spool.readBody(listed[0]!)).toEqual(MESSAGE);
    expect(sameBytes(await spool.readBody(listed[1]!), Buffer.alloc(500_000, 'z'))).toBe(true);
    expect(readdirSync(dir).sort()).toEqual([...segmentFiles(dir), '0000abce0-fedcba9876543210.eml', '0000abce0-fedcba9876543210.json', 'bounced', 'large'].sort());
    expect(readdirSync(join(dir, 'bounced'))).toEqual(['0000abcd0-1111111111111111.eml']);
    expect(lines.some((l) => l.code === 'SMTP_E_SPOOL_READ' && l.id === '0000abce0-fedcba9876543210')).toBe(true);

    // Survives a restart as a segment-log entry, and delivers on.
    const again = await reopen(spool);
    expect((await again.list()).map((m) => m.id)).toEqual(listed.map((m) => m.id));
    await again.remove(listed[0]!.id);
    await again.close();
    expect(existsSync(listed[0]!.path!)).toBe(false);
  });

  it('finishes an adoption a crash cut short: the .eml already in large/, or the STORE already written', async () => {
    const dir = spoolDir();
    mkdirSync(dir, { recursive: true });
    // Crash 1: after the rename, before the STORE record.
    oldEntry(dir, '0000abcd1-0123456789abcdef', MESSAGE);
    mkdirSync(join(dir, 'large'));
    renameSync(join(dir, '0000abcd1-0123456789abcdef.eml'), join(dir, 'large', '0000abcd1-0123456789abcdef.eml'));
    const spool = new Spool({ dir, fsync: true });
    await spool.open();
    expect((await spool.list()).map((m) => m.id)).toEqual(['0000abcd1-0123456789abcdef']);
    await spool.close();
    // Crash 2: after the STORE record, before the .json went.
    writeFileSync(join(dir, '0000abcd1-0123456789abcdef.json'), JSON.stringify({ version: 1, id: '0000abcd1-0123456789abcdef', envelope: ENVELOPE, size: MESSAGE.length, receivedAt: 'x', extra: {}, delivered: [] }));
    const again = new Spool({ dir, fsync: true });
    await again.open();
    const listed = await again.list();
    expect(listed.map((m) => m.id)).toEqual(['0000abcd1-0123456789abcdef']);
    expect(listed[0]!.receivedAt).toBe('2026-01-02T03:04:05.678Z');
    expect(existsSync(join(dir, '0000abcd1-0123456789abcdef.json'))).toBe(false);
    await again.close();
  });
});
