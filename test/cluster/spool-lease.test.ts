import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { SpoolLease, leaseExpired, ownerDeadHere, ownerHere, readLease, type LeaseOwner, type LeaseTimes } from '../../src/storage/spool-lease.js';

/** Short lease times, so that expiry happens within a test; renewals far apart unless a test wants them. */
const SHORT: LeaseTimes = { ttlMs: 300, renewMs: 60_000, marginMs: 100 };
const freeOnly = (state: Parameters<typeof leaseExpired>[0], now: number): boolean => leaseExpired(state, now, SHORT);

function leaseDir(): string {
  return join(mkdtempSync(join(tmpdir(), 'lease-')), 'spool');
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function claimant(worker: number): LeaseOwner {
  return { ...ownerHere('test-instance', worker), worker };
}

function leaseFiles(dir: string): string[] {
  return readdirSync(dir).filter((name) => /^lease\.\d+$/.test(name));
}

/** An owner whose process has exited (a real pid, reaped). */
async function deadOwner(): Promise<LeaseOwner> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.once('exit', resolve));
  return { ...ownerHere('test-instance', 7), pid: child.pid!, pidStart: null };
}

describe('SpoolLease', () => {
  it('refuses a directory with a live lease to a second claimant', async () => {
    const dir = leaseDir();
    const first = await SpoolLease.claim(dir, claimant(0), { mayTake: freeOnly, fsync: false, times: SHORT });
    expect(first).not.toBeNull();
    const second = await SpoolLease.claim(dir, claimant(1), { mayTake: freeOnly, fsync: false, times: SHORT });
    expect(second).toBeNull();
    const state = await readLease(dir);
    expect(state.record).toMatchObject({ generation: 1, released: false, owner: { worker: 0, pid: process.pid } });
    first!.abandon();
  });

  it('gives an expired lease to exactly one of several claimants at once, round after round', async () => {
    const dir = leaseDir();
    let holder = await SpoolLease.claim(dir, claimant(0), { mayTake: freeOnly, fsync: false, times: SHORT });
    const ROUNDS = 10;
    const CLAIMANTS = 8;
    for (let round = 0; round < ROUNDS; round++) {
      // The holder stops renewing (as a process that died or stalled): the lease runs out.
      holder!.abandon();
      await sleep(SHORT.ttlMs + 50);
      const claims = await Promise.all(Array.from({ length: CLAIMANTS }, (_, i) => SpoolLease.claim(dir, claimant(i + 1), { mayTake: freeOnly, fsync: false, times: SHORT })));
      const winners = claims.filter((lease) => lease !== null);
      expect(winners, `round ${round}`).toHaveLength(1);
      holder = winners[0]!;
      const state = await readLease(dir);
      expect(state.record?.owner.worker).toBe(holder.owner.worker);
      expect(state.generation).toBe(holder.generation);
    }
    holder!.abandon();
    // Older generations are swept by each claim.
    expect(leaseFiles(dir)).toEqual([`lease.${holder!.generation}`]);
  });

  it('gives an expired lease to exactly one of several processes claiming it at once', async () => {
    const dir = leaseDir();
    const first = await SpoolLease.claim(dir, claimant(0), { mayTake: freeOnly, fsync: false, times: SHORT });
    first!.abandon();
    await sleep(SHORT.ttlMs + 50);
    const module = join(PROJECT_ROOT, 'dist', 'src', 'storage', 'spool-lease.js');
    const script = `
      const { SpoolLease, leaseExpired, ownerHere } = await import(${JSON.stringify(module)});
      const times = ${JSON.stringify(SHORT)};
      const start = Number(process.argv[1]);
      while (Date.now() < start) {}
      const lease = await SpoolLease.claim(${JSON.stringify(dir)}, ownerHere('proc', 0), { mayTake: (s, now) => leaseExpired(s, now, times), fsync: false, times });
      console.log(lease === null ? 'refused' : 'claimed ' + lease.generation);
      lease?.abandon();
    `;
    // Every process spins until the same instant, then claims.
    const start = Date.now() + 1500;
    const runs = await Promise.all(Array.from({ length: 4 }, () => new Promise<string>((resolve) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script, String(start)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (chunk) => (out += chunk));
      child.once('exit', () => resolve(out.trim()));
    })));
    expect(runs.filter((line) => line === 'claimed 2')).toHaveLength(1);
    expect(runs.filter((line) => line === 'refused')).toHaveLength(3);
  });

  it('lets the rightful owner take back a lease whose process is dead on this host, before it expires', async () => {
    const dir = leaseDir();
    const dead = await deadOwner();
    const held = await SpoolLease.claim(dir, dead, { mayTake: freeOnly, fsync: false });
    held!.abandon();
    expect(ownerDeadHere(dead)).toBe(true);
    expect(ownerDeadHere(claimant(0))).toBe(false);
    // Not expired (the default TTL is 15 s): a peer that goes by expiry only is refused; the owner that checks the pid is not.
    expect(await SpoolLease.claim(dir, claimant(1), { mayTake: (state, now) => leaseExpired(state, now), fsync: false })).toBeNull();
    const back = await SpoolLease.claim(dir, claimant(7), { mayTake: (state, now) => leaseExpired(state, now) || (state.record !== null && ownerDeadHere(state.record.owner)), fsync: false });
    expect(back?.generation).toBe(2);
    back!.abandon();
  });

  it('renews by writing the next generation, and a holder that let its lease expire learns that it lost it', async () => {
    const dir = leaseDir();
    const renewing = await SpoolLease.claim(dir, claimant(0), { mayTake: freeOnly, fsync: false, times: { ttlMs: 400, renewMs: 50, marginMs: 100 } });
    await sleep(300);
    expect(renewing!.generation).toBeGreaterThan(2);
    expect(renewing!.held).toBe(true);
    expect(leaseFiles(dir)).toEqual([`lease.${renewing!.generation}`]);
    await renewing!.release(4);
    expect((await readLease(dir)).record).toMatchObject({ released: true, messages: 4 });

    // A holder that renews too late: another claimant took the expired lease first.
    const lost: string[] = [];
    const late = await SpoolLease.claim(dir, claimant(1), { mayTake: freeOnly, fsync: false, times: { ttlMs: 200, renewMs: 600, marginMs: 50 }, onLost: (why) => lost.push(why) });
    await sleep(300);
    const taker = await SpoolLease.claim(dir, claimant(2), { mayTake: freeOnly, fsync: false, times: SHORT });
    expect(taker).not.toBeNull();
    await sleep(500);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toContain('another process wrote generation');
    expect(late!.held).toBe(false);
    expect((await readLease(dir)).record?.owner.worker).toBe(2);
    taker!.abandon();
  });

  it('lets a released lease be claimed at once, and an unreadable lease file only a TTL after it was written', async () => {
    const dir = leaseDir();
    const first = await SpoolLease.claim(dir, claimant(0), { mayTake: freeOnly, fsync: false });
    await first!.release(0);
    const second = await SpoolLease.claim(dir, claimant(1), { mayTake: (state, now) => leaseExpired(state, now), fsync: false });
    expect(second?.generation).toBe(3);
    second!.abandon();
    writeFileSync(join(dir, 'lease.9'), 'not json');
    const state = await readLease(dir);
    expect(state).toMatchObject({ generation: 9, record: null });
    expect(leaseExpired(state, Date.now())).toBe(false);
    expect(leaseExpired(state, Date.now() + 16_000)).toBe(true);
  });
});
