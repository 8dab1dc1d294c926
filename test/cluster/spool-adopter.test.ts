import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SpoolAdopter } from '../../src/cluster/spool-adopter.js';
import { DeliveryQueue } from '../../src/delivery/delivery-queue.js';
import { silentLogger } from '../../src/log.js';
import { SpoolLease, leaseExpired, ownerHere, readLease, requestHandback, type LeaseTimes } from '../../src/storage/spool-lease.js';
import { Spool } from '../../src/storage/spool.js';
import { freePort, maildirTexts, waitFor } from '../helpers/server.js';

const SHORT: LeaseTimes = { ttlMs: 300, renewMs: 100, marginMs: 100 };

interface Layout {
  readonly root: string;
  readonly maildir: string;
}

function layout(): Layout {
  const base = mkdtempSync(join(tmpdir(), 'adopter-'));
  mkdirSync(join(base, 'spool'));
  return { root: join(base, 'spool'), maildir: join(base, 'maildir') };
}

/** A spool in `dir` holding `count` messages, closed as a dead owner leaves it; with a lease of that owner, left to expire, unless `lease` is false. */
async function orphan(dir: string, count: number, tag: string, options: { lease?: 'expired' | 'live' | false } = {}): Promise<SpoolLease | null> {
  const kind = options.lease ?? 'expired';
  const lease = kind === false ? null : await SpoolLease.claim(dir, { ...ownerHere('gone', 3), pid: 1 }, { mayTake: () => true, fsync: false, times: kind === 'live' ? { ttlMs: 60_000, renewMs: 20_000, marginMs: 1000 } : SHORT });
  if (kind === 'expired') lease!.abandon();
  const spool = new Spool({ dir, fsync: false });
  await spool.open();
  for (let i = 0; i < count; i++) await spool.store({ from: 'a@example.com', to: ['box@example.org'] }, Buffer.from(`Subject: ${tag}-${i}\r\n\r\nBODY-${tag}-${i}\r\n`));
  await spool.close();
  return kind === 'live' ? lease : null;
}

function adopter(where: Layout, worker: number, mode: 'maildir' | 'relay' = 'maildir', relayPort = 25): SpoolAdopter {
  return new SpoolAdopter({
    root: where.root,
    ownDir: join(where.root, `here-w${worker}`),
    owner: ownerHere('here', worker),
    storage: { fsync: false, groupCommitMs: 0 },
    queueFor: (spool) => new DeliveryQueue({ spool, mode, maildirRoot: where.maildir, relay: { host: '127.0.0.1', port: relayPort, name: 'mx.test' }, fsync: false, retryInitialMs: 60_000 }),
    logger: silentLogger(),
    times: SHORT,
    // Scans are made by the tests themselves; handback requests are looked for as in a running worker.
    scanMs: 60_000,
    handbackCheckMs: 50,
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const delivered = (where: Layout, tag: string): number => maildirTexts(where.maildir).filter((text) => text.includes(`BODY-${tag}-`)).length;

describe('SpoolAdopter', () => {
  it('delivers the mail of a directory whose lease expired, then releases it as drained', async () => {
    const where = layout();
    const dir = join(where.root, 'gone-w3');
    await orphan(dir, 5, 'orphan');
    await sleep(SHORT.ttlMs + 50);
    const worker = adopter(where, 0);
    expect(await worker.scan()).toBe(1);
    await waitFor(() => delivered(where, 'orphan') === 5, 'the orphan\'s 5 messages in the Maildir');
    await waitFor(() => worker.adopted.length === 0, 'the adopted directory let go');
    expect((await readLease(dir)).record).toMatchObject({ released: true, messages: 0, owner: { instance: 'here', worker: 0 } });
    // Drained and released: not adopted again.
    expect(await worker.scan()).toBe(0);
    await worker.stop();
  });

  it('leaves a directory with a live lease alone, and its own directory', async () => {
    const where = layout();
    const live = await orphan(join(where.root, 'busy-w1'), 2, 'busy', { lease: 'live' });
    await orphan(join(where.root, 'here-w0'), 2, 'own', { lease: false });
    const worker = adopter(where, 0);
    expect(await worker.scan()).toBe(0);
    await worker.stop();
    live!.abandon();
    expect(delivered(where, 'busy') + delivered(where, 'own')).toBe(0);
  });

  it('lets exactly one of several workers adopt an orphan they find at once', async () => {
    const where = layout();
    await orphan(join(where.root, 'gone-w2'), 3, 'race');
    await sleep(SHORT.ttlMs + 50);
    const workers = [0, 1, 2, 3].map((index) => adopter(where, index));
    const adopted = await Promise.all(workers.map((worker) => worker.scan()));
    expect(adopted.reduce((a, b) => a + b, 0)).toBe(1);
    await waitFor(() => delivered(where, 'race') === 3, 'the 3 messages delivered once');
    await Promise.all(workers.map((worker) => worker.stop()));
    expect(delivered(where, 'race')).toBe(3);
  });

  it('adopts the spool of a single-process run left in the spool root (no lease), never its bounced/ folder', async () => {
    const where = layout();
    await orphan(where.root, 2, 'legacy', { lease: false });
    // A bounced message as the delivery queue keeps it: <id>.eml + <id>.json, which is also the previous spool layout.
    const bounced = join(where.root, 'bounced');
    mkdirSync(bounced);
    writeFileSync(join(bounced, '0mxagko8y-47e519e59a3443b6.eml'), 'Subject: bounced\r\n\r\nBODY-bounced-0\r\n');
    writeFileSync(join(bounced, '0mxagko8y-47e519e59a3443b6.json'), JSON.stringify({ version: 1, id: '0mxagko8y-47e519e59a3443b6', envelope: { from: 'a@example.com', to: ['box@example.org'] }, size: 30, receivedAt: new Date().toISOString(), extra: {}, delivered: [] }));
    const worker = adopter(where, 0);
    expect(await worker.scan()).toBe(1);
    expect(worker.adopted).toEqual([where.root]);
    await waitFor(() => delivered(where, 'legacy') === 2, 'the root spool delivered');
    await waitFor(() => worker.adopted.length === 0, 'the root let go');
    expect(await worker.scan()).toBe(0);
    await worker.stop();
    expect(delivered(where, 'bounced')).toBe(0);
    expect(readdirSync(bounced)).toHaveLength(2);
  });

  it('hands an adopted directory back to its owner when asked, with what it still holds', async () => {
    const where = layout();
    const dir = join(where.root, 'gone-w1');
    await orphan(dir, 3, 'back');
    await sleep(SHORT.ttlMs + 50);
    // A relay nothing listens on: every attempt is deferred, so the directory is never drained.
    const worker = adopter(where, 0, 'relay', await freePort());
    worker.start();
    expect(await worker.scan()).toBe(1);
    await sleep(200);
    expect(worker.adopted).toHaveLength(1);
    const owner = ownerHere('gone', 1);
    await requestHandback(dir, { ...owner, pid: owner.pid + 1 });
    await waitFor(() => worker.adopted.length === 0, 'the directory handed back', 5000);
    const state = await readLease(dir);
    expect(state.record).toMatchObject({ released: true, messages: 3 });
    expect(leaseExpired(state, Date.now())).toBe(true);
    await worker.stop();
  });
});
