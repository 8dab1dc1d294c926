import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HOLD_LIST_NAME, HoldList } from '../../src/delivery/hold-list.js';
import { newId } from '../../src/storage/message-id.js';
import { Spool } from '../../src/storage/spool.js';
import { ENVELOPE, capturingLogger } from '../storage/spool-helpers.js';

function holdListIn(dir = mkdtempSync(join(tmpdir(), 'hold-list-'))): { list: HoldList; lines: ReturnType<typeof capturingLogger>['lines']; dir: string } {
  const { logger, lines } = capturingLogger();
  return { list: new HoldList({ dir, fsync: true, logger }), lines, dir };
}

const WARN = 40;

describe('HoldList', () => {
  it('holds nothing when there is no list, and says nothing about it', async () => {
    const { list, lines } = holdListIn();
    expect(await list.read()).toEqual(new Set());
    expect(lines.filter((line) => line.level >= WARN)).toEqual([]);
  });

  it('reads back what it wrote, one id per line, leaving no temp file; an empty list removes the file', async () => {
    const { list, dir } = holdListIn();
    const ids = [newId(), newId(), newId()];
    await list.write(ids);
    expect(readFileSync(join(dir, HOLD_LIST_NAME), 'utf8')).toBe(ids.map((id) => `${id}\n`).join(''));
    expect(readdirSync(dir)).toEqual([HOLD_LIST_NAME]);
    expect(await new HoldList({ dir, fsync: false, logger: capturingLogger().logger }).read()).toEqual(new Set(ids));

    await list.write([]);
    expect(readdirSync(dir)).toEqual([]);
    expect(await list.read()).toEqual(new Set());
  });

  it('writes in the order asked, so the last list asked for is the one on disk', async () => {
    const { list, dir } = holdListIn();
    const [a, b] = [newId(), newId()];
    const first = list.write([a]);
    const second = list.write([a, b]);
    const third = list.write([b]);
    await Promise.all([first, second, third]);
    expect(readFileSync(join(dir, HOLD_LIST_NAME), 'utf8')).toBe(`${b}\n`);
  });

  it('skips lines that are not message ids (with a warning) and tolerates CRLF', async () => {
    const { list, lines, dir } = holdListIn();
    const [a, b] = [newId(), newId()];
    writeFileSync(join(dir, HOLD_LIST_NAME), `${a}\r\n../../etc/passwd\n\nNOT-AN-ID\n${'0'.repeat(100)}-abc\n${b}`);
    expect(await list.read()).toEqual(new Set([a, b]));
    const warning = lines.find((line) => line.level === WARN);
    expect(warning).toMatchObject({ code: 'SMTP_E_SPOOL_READ', lines_skipped: 3 });
  });

  it('holds nothing when the list cannot be read, and logs a coded warning naming it', async () => {
    const { list, lines, dir } = holdListIn();
    mkdirSync(join(dir, HOLD_LIST_NAME));
    expect(await list.read()).toEqual(new Set());
    expect(lines.find((line) => line.level === WARN)).toMatchObject({ code: 'SMTP_E_SPOOL_READ', path: join(dir, HOLD_LIST_NAME) });
  });

  it('fails with a coded error naming the file when it cannot be written', async () => {
    const { list, dir } = holdListIn();
    mkdirSync(join(dir, HOLD_LIST_NAME));
    mkdirSync(join(dir, `${HOLD_LIST_NAME}.tmp`));
    const error = await list.write([newId()]).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'SMTP_E_SPOOL_WRITE' });
    expect((error as Error).message).toContain(join(dir, HOLD_LIST_NAME));
  });

  it('lives in the spool directory without disturbing the spool: opened, used and reopened, it keeps both files and warns of nothing', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'hold-list-spool-')), 'spool');
    const { logger, lines } = capturingLogger();
    const spool = new Spool({ dir, fsync: true, logger });
    await spool.open();
    const message = await spool.store(ENVELOPE, Buffer.from('Subject: held\r\n\r\nbody\r\n'));
    await new HoldList({ dir, fsync: true, logger }).write([message.id]);
    // A temp file a crash left behind.
    writeFileSync(join(dir, `${HOLD_LIST_NAME}.tmp`), `${message.id}\n`);
    await spool.close();

    const again = new Spool({ dir, fsync: true, logger });
    await again.open();
    expect((await again.list()).map((m) => m.id)).toEqual([message.id]);
    expect(existsSync(join(dir, HOLD_LIST_NAME))).toBe(true);
    expect(existsSync(join(dir, `${HOLD_LIST_NAME}.tmp`))).toBe(true);
    expect(lines.filter((line) => line.level >= WARN)).toEqual([]);
    expect(await new HoldList({ dir, fsync: true, logger }).read()).toEqual(new Set([message.id]));
    await again.close();
  });
});
