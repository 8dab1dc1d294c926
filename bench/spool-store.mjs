// Scenario: the spool alone, in this process. 20 concurrent writers each
// store a 1 KiB message and remove it again (what delivery mode none does),
// on a fresh spool directory per round, peers interleaved round by round:
// (a) fsync off on tmpfs, where the CPU per message is the spool's own cost
// (the target: at most 25 us for store + remove), and (b) fsync on in the
// temporary folder on disk, with batches per second and messages per fsync
// (group commit). CPU is process.cpuUsage(): every thread of the process,
// libuv's pool included.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../dist/src/storage/spool.js';
import { fmt, median, scaled } from './_support.mjs';

const ROUNDS = scaled(5, 1);
const WRITERS = 20;
const MESSAGE_BYTES = 1024;
const CPU_US_TARGET = 25;
const ENVELOPE = { from: 'bench@example.org', to: ['sink@example.net'] };
/** The previous layout (two files per message), measured on this machine before the segment log: ../shared/notes/facts.md. */
const BEFORE = { tmpfs: { rate: 6334, cpu: 239 }, disk: { rate: 1736, cpu: 466 } };

function diskOf(path) {
  const df = spawnSync('df', ['--output=source,fstype', path], { encoding: 'utf8' });
  return df.status === 0 ? df.stdout.trim().split('\n')[1]?.trim().replace(/\s+/, ', ') : 'unknown';
}

const SHM = existsSync('/dev/shm') ? '/dev/shm' : null;

/** One round: a fresh spool, `messages` store + remove pairs from WRITERS writers; the figures of the loop alone (open and close excluded). */
async function round(peer) {
  const base = mkdtempSync(join(peer.parent, 'spool-bench-'));
  const spool = new Spool({ dir: join(base, 'spool'), fsync: peer.fsync, groupCommitMs: peer.groupCommitMs });
  const body = Buffer.alloc(MESSAGE_BYTES, 'x');
  body.write('Subject: bench\r\n\r\n');
  try {
    await spool.open();
    globalThis.gc?.();
    const before = { ...spool.stats };
    let started = 0;
    const writer = async () => {
      while (started < peer.messages) {
        started++;
        const message = await spool.store(ENVELOPE, body);
        await spool.remove(message.id);
      }
    };
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: WRITERS }, writer));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const batches = spool.stats.batches - before.batches;
    const fsyncs = spool.stats.fsyncs - before.fsyncs;
    return {
      rate: peer.messages / seconds,
      cpuUs: (cpu.user + cpu.system) / peer.messages,
      batchesPerSecond: batches / seconds,
      perFsync: fsyncs === 0 ? null : peer.messages / fsyncs,
      recordsPerBatch: (spool.stats.records - before.records) / batches,
    };
  } finally {
    await spool.close();
    rmSync(base, { recursive: true, force: true });
  }
}

export async function run() {
  const title = 'Spool: store + remove, 20 concurrent writers, 1 KiB messages';
  const peers = [];
  const skipped = [];
  if (SHM !== null) peers.push({ name: 'fsync off, tmpfs (/dev/shm)', parent: SHM, fsync: false, messages: scaled(100_000, 10_000), role: 'tmpfs', color: 'host' });
  else skipped.push('/dev/shm is missing: the tmpfs row (and its CPU target) is not measured');
  peers.push({ name: `fsync on, disk (${tmpdir()})`, parent: tmpdir(), fsync: true, messages: scaled(20_000, 2_000), role: 'disk', color: 'native' });
  peers.push({ name: `fsync on, disk (${tmpdir()}), group commit 2 ms`, parent: tmpdir(), fsync: true, groupCommitMs: 2, messages: scaled(20_000, 2_000), role: 'group', color: 'native' });

  // A short warm-up so the first measured round is not the one that compiles the code.
  await round({ ...peers[0], messages: scaled(10_000, 2_000) });
  const samples = new Map(peers.map((p) => [p.name, []]));
  for (let r = 0; r < ROUNDS; r++) for (const peer of peers) samples.get(peer.name).push(await round(peer));

  const stats = new Map(
    peers.map((peer) => {
      const s = samples.get(peer.name);
      const pick = (key) => median(s.map((x) => x[key]));
      return [peer.name, { rate: pick('rate'), min: Math.min(...s.map((x) => x.rate)), max: Math.max(...s.map((x) => x.rate)), cpu: pick('cpuUs'), batches: pick('batchesPerSecond'), perFsync: s[0].perFsync === null ? null : pick('perFsync'), perBatch: pick('recordsPerBatch') }];
    }),
  );
  const tmpfs = peers.find((p) => p.role === 'tmpfs');
  const tmpfsCpu = tmpfs ? stats.get(tmpfs.name).cpu : undefined;
  const before = (peer) => (peer.role === 'tmpfs' ? BEFORE.tmpfs : BEFORE.disk);
  return {
    title,
    description:
      `The spool in the bench process, no SMTP: ${WRITERS} writers each loop on \`store(envelope, 1 KiB)\` then \`remove(id)\`, ` +
      'a fresh spool directory per round (open and close not timed). CPU is `process.cpuUsage()` over the loop: every thread of the process. ' +
      `Disk rows: ${diskOf(tmpdir())}. A message here is two records (STORE, then DONE); DONE needs no fsync of its own.`,
    commands: ['npm run bench -- spool-store'],
    tables: [
      {
        header: ['spool', 'messages per round', 'median msg/s', 'min', 'max', 'CPU us/msg', 'batches/s', 'records per batch', 'msg per fsync', 'before: msg/s', 'before: CPU us/msg'],
        rows: peers.map((peer) => {
          const s = stats.get(peer.name);
          const b = before(peer);
          return [peer.name, String(peer.messages), fmt(s.rate), fmt(s.min), fmt(s.max), fmt(s.cpu, 1), fmt(s.batches), fmt(s.perBatch, 1), s.perFsync === null ? '-' : fmt(s.perFsync, 1), peer.role === 'group' ? '-' : fmt(b.rate), peer.role === 'group' ? '-' : fmt(b.cpu)];
        }),
      },
    ],
    notes: [
      `${ROUNDS} rounds, peers interleaved, medians. "before": the two-files-per-message spool this replaced, as measured on this machine (../shared/notes/facts.md: tmpfs ${BEFORE.tmpfs.rate} msg/s at ${BEFORE.tmpfs.cpu} us, disk ${BEFORE.disk.rate} msg/s at ${BEFORE.disk.cpu} us).`,
    ],
    targets: [
      {
        scenario: 'spool',
        name: `spool store + remove, fsync off on tmpfs, at most ${CPU_US_TARGET} us of CPU per message`,
        measured: tmpfsCpu === undefined ? 'not measured' : `${tmpfsCpu.toFixed(1)} us`,
        met: tmpfsCpu === undefined ? null : tmpfsCpu <= CPU_US_TARGET,
      },
    ],
    skipped,
    chart: {
      type: 'bars',
      title: 'Spool alone: store + remove msg/s (median)',
      unit: 'msg/s',
      groups: [{ label: '', bars: peers.map((peer) => ({ label: peer.name, value: stats.get(peer.name).rate, color: peer.color })) }],
    },
  };
}
