import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { isHostError } from '../../src/errors.js';
import { PROJECT_ROOT } from '../../src/paths.js';
import { Spool, type Envelope } from '../../src/storage/spool.js';

const ENVELOPE: Envelope = { from: 'alice@example.org', to: ['bob@example.net', 'carol@example.net'] };
const MESSAGE = Buffer.from('From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello \xff bytes\r\n.\r\n', 'latin1');

function spoolDir(): string {
  return join(mkdtempSync(join(tmpdir(), 'spool-')), 'spool');
}

async function openSpool(dir = spoolDir(), groupCommitMs = 0): Promise<Spool> {
  const spool = new Spool({ dir, fsync: true, groupCommitMs });
  await spool.open();
  return spool;
}

describe('Spool', () => {
  it('stores a message and lists it with its envelope, size and exact bytes', async () => {
    const spool = await openSpool();
    const stored = await spool.store(ENVELOPE, MESSAGE, { message_id: '<x@example.org>' });
    expect(stored.id).toMatch(/^[0-9a-z]+-[0-9a-f]{16}$/);
    expect(stored.size).toBe(MESSAGE.length);
    expect(readFileSync(stored.path)).toEqual(MESSAGE);

    const listed = await new Spool({ dir: spool.dir, fsync: true }).list();
    expect(listed).toEqual([{ ...stored }]);
    expect(listed[0]!.envelope).toEqual(ENVELOPE);
    expect(listed[0]!.extra).toEqual({ message_id: '<x@example.org>' });
    expect(listed[0]!.delivered).toEqual([]);
    expect(new Date(listed[0]!.receivedAt).getTime()).toBeGreaterThan(Date.now() - 60_000);
    // Nothing but the two entry files.
    expect(readdirSync(spool.dir).sort()).toEqual([`${stored.id}.eml`, `${stored.id}.json`]);
  });

  it('stores from a stream and from an async iterable, and lists oldest first', async () => {
    const spool = await openSpool();
    const first = await spool.store(ENVELOPE, Readable.from([MESSAGE.subarray(0, 10), MESSAGE.subarray(10)]));
    const chunks = async function* (): AsyncGenerator<Buffer> {
      yield Buffer.from('Subject: two\r\n\r\n');
      yield Buffer.alloc(300_000, 'a');
    };
    const second = await spool.store({ from: '', to: ['x@example.net'] }, chunks());
    expect(readFileSync(first.path)).toEqual(MESSAGE);
    expect(second.size).toBe(16 + 300_000);
    expect((await spool.list()).map((m) => m.id)).toEqual([first.id, second.id]);
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
    expect(readdirSync(spool.dir)).toEqual([]);
  });

  it('removes an entry', async () => {
    const spool = await openSpool();
    const a = await spool.store(ENVELOPE, MESSAGE);
    const b = await spool.store(ENVELOPE, MESSAGE);
    await spool.remove(a.id);
    expect((await spool.list()).map((m) => m.id)).toEqual([b.id]);
    expect(existsSync(a.path)).toBe(false);
    await spool.remove(a.id); // already gone: not an error
    await expect(spool.remove('../etc/passwd')).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
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
    expect(readdirSync(spool.dir)).toEqual([]);
    expect(readdirSync(quarantineDir).sort()).toEqual([`${stored.id}.eml`, `${stored.id}.json`]);
  });

  it('records delivery progress that a fresh spool instance reads back', async () => {
    const spool = await openSpool();
    const stored = await spool.store(ENVELOPE, MESSAGE);
    await Promise.all([spool.markDelivered(stored.id, 'bob@example.net'), spool.markDelivered(stored.id, 'bob@example.net')]);
    await spool.markDelivered(stored.id, ['carol@example.net']);
    const [listed] = await new Spool({ dir: spool.dir, fsync: true }).list();
    expect(listed!.delivered).toEqual(['bob@example.net', 'carol@example.net']);
    await expect(spool.markDelivered('0-00', 'x@y')).rejects.toMatchObject({ code: 'SMTP_E_SPOOL_READ' });
  });

  it('cleans the leftovers of a crash: temp files and an .eml whose .json never landed', async () => {
    const spool = await openSpool();
    const kept = await spool.store(ENVELOPE, MESSAGE);
    writeFileSync(join(spool.dir, '.tmp-0000abcde-0123456789abcdef.1a2b3c4d.eml'), 'half a mess');
    writeFileSync(join(spool.dir, '.tmp-0000abcde-0123456789abcdef.5e6f7a8b.json'), '{"id":');
    writeFileSync(join(spool.dir, '0000abcdf-fedcba9876543210.eml'), MESSAGE);
    expect((await spool.list()).map((m) => m.id)).toEqual([kept.id]);
    expect(readdirSync(spool.dir).sort()).toEqual([`${kept.id}.eml`, `${kept.id}.json`]);
  });

  it('skips but keeps an entry it cannot read, since it may hold acknowledged mail', async () => {
    const spool = await openSpool();
    writeFileSync(join(spool.dir, '0000abcdf-fedcba9876543210.eml'), MESSAGE);
    writeFileSync(join(spool.dir, '0000abcdf-fedcba9876543210.json'), 'not json');
    expect(await spool.list()).toEqual([]);
    expect(readdirSync(spool.dir)).toHaveLength(2);
  });

  it('group commit: 50 concurrent stores within the window all resolve and all list', async () => {
    const spool = await openSpool(spoolDir(), 5);
    const stored = await Promise.all(Array.from({ length: 50 }, (_, i) => spool.store(ENVELOPE, Buffer.from(`Subject: ${i}\r\n\r\nbody ${i}\r\n`))));
    expect(new Set(stored.map((m) => m.id)).size).toBe(50);
    const listed = await spool.list();
    expect(listed.map((m) => m.id).sort()).toEqual(stored.map((m) => m.id).sort());
    for (const m of listed) expect(readFileSync(m.path, 'utf8')).toMatch(/^Subject: (\d+)\r\n\r\nbody \1\r\n$/);
  });

  describe('a writer killed with SIGKILL', () => {
    const compiled = join(PROJECT_ROOT, 'dist', 'src', 'storage', 'spool.js');

    beforeAll(() => {
      // `npm test` builds dist/ first; a bare `vitest run` may find it stale.
      const sources = ['storage/spool.ts', 'errors.ts', 'log.ts'].map((f) => statSync(join(PROJECT_ROOT, 'src', f)).mtimeMs);
      if (!existsSync(compiled) || statSync(compiled).mtimeMs < Math.max(...sources)) {
        // Errors elsewhere in src/ do not stop tsc emitting this file.
        spawnSync(process.execPath, [join(PROJECT_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(PROJECT_ROOT, 'tsconfig.build.json')], { stdio: 'ignore' });
      }
      expect(existsSync(compiled), `${compiled} is missing: run npm run build`).toBe(true);
    });

    it('loses none of the messages whose store() had resolved', async () => {
      const work = mkdtempSync(join(tmpdir(), 'spool-crash-'));
      const dir = join(work, 'spool');
      const script = join(work, 'writer.mjs');
      // Four writers at once, with messages large enough that the kill lands mid-write.
      writeFileSync(
        script,
        `import { Spool } from ${JSON.stringify(compiled)};
const spool = new Spool({ dir: process.argv[2], fsync: true });
await spool.open();
const writer = async (lane) => {
  for (let i = 0; ; i++) {
    const body = Buffer.alloc(20000 + ((i * 7919) % 50000), 97 + lane);
    const m = await spool.store({ from: 'w@example.org', to: ['r@example.net'] }, Buffer.concat([Buffer.from('Subject: ' + lane + '\\r\\n\\r\\n'), body]));
    process.stdout.write(m.id + ' ' + m.size + '\\n');
  }
};
await Promise.all([0, 1, 2, 3].map(writer));
`,
      );
      const child = spawn(process.execPath, [script, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
      const acknowledged = new Map<string, number>();
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      try {
        await new Promise<void>((resolve, reject) => {
          let buffered = '';
          const deadline = setTimeout(() => reject(new Error(`writer stalled after ${acknowledged.size} stores: ${stderr}`)), 60_000);
          child.stdout.on('data', (chunk: Buffer) => {
            buffered += chunk.toString();
            const lines = buffered.split('\n');
            buffered = lines.pop()!;
            for (const line of lines) {
              const [id, size] = line.split(' ');
              acknowledged.set(id!, Number(size));
            }
            if (acknowledged.size >= 50 && child.exitCode === null && !child.killed) {
              child.kill('SIGKILL');
              clearTimeout(deadline);
              resolve();
            }
          });
          child.on('exit', (code) => {
            clearTimeout(deadline);
            if (acknowledged.size < 50) reject(new Error(`writer exited (${code}) early: ${stderr}`));
          });
        });
        await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(undefined) : child.once('exit', resolve)));
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
      expect(child.signalCode).toBe('SIGKILL');

      const listed = await new Spool({ dir, fsync: true }).list();
      const byId = new Map(listed.map((m) => [m.id, m]));
      for (const [id, size] of acknowledged) {
        expect(byId.has(id), `acknowledged message ${id} is missing`).toBe(true);
        expect(byId.get(id)!.size).toBe(size);
      }
      for (const m of listed) {
        const bytes = readFileSync(m.path);
        expect(bytes.length).toBe(m.size);
        expect(bytes.subarray(bytes.length - 1).toString()).toMatch(/[a-d]/);
      }
      // Whatever the kill cut short is gone; complete entries only remain.
      expect(readdirSync(dir).filter((name) => name.startsWith('.tmp-'))).toEqual([]);
      expect(readdirSync(dir).length).toBe(listed.length * 2);
    });
  });
});
