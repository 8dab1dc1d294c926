// Shared by the bench scenarios: plugin builds, statistics, tools found on
// this machine, and small process helpers.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { join } from 'node:path';
import { buildPlugin } from '../dist/src/toolchain/build.js';
import { BUILD_DIR, PROJECT_ROOT, sharedLibraryName } from '../dist/src/paths.js';

export const FIXTURES = join(PROJECT_ROOT, 'test', 'fixtures', 'plugins');
export const EXAMPLES = join(PROJECT_ROOT, 'plugins');
/** Every plugin the bench uses is built here from source by the run itself, never taken from a stale build. */
export const BENCH_BUILD_DIR = join(BUILD_DIR, 'bench');

/** Builds a plugin source (native and wasm) into build/bench/ under `name`. */
export async function buildFixture(name, source = join(FIXTURES, `${name}.zig`)) {
  const [native, wasm] = await Promise.all([
    buildPlugin({ source, output: join(BENCH_BUILD_DIR, sharedLibraryName(name)) }),
    buildPlugin({ source, target: 'wasm', output: join(BENCH_BUILD_DIR, `${name}.wasm`) }),
  ]);
  return { native, wasm };
}

/** Builds an example plugin (plugins/<stem>.zig), native and wasm, once per bench run. */
const examples = new Map();
export function buildExample(stem) {
  if (!examples.has(stem)) examples.set(stem, buildFixture(stem, join(EXAMPLES, `${stem}.zig`)));
  return examples.get(stem);
}

export const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** The p-th percentile (0..100) of `values`, nearest rank. */
export function percentile(values, p) {
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Mean ns per call of `fn` over `calls` calls, after a warm-up. */
export function timePerCall(fn, calls) {
  for (let i = 0; i < Math.min(10_000, calls); i++) fn();
  const start = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) fn();
  return Number(process.hrtime.bigint() - start) / calls;
}

/** Formats a number for a table: integers with no decimals, small values with `digits`. */
/** The message_filtered keys the server gives a 1 KiB message from smtp-source (docs/hooks.md), the body last. */
export function messageFields(body, senderDomain = 'example.com') {
  return {
    session_id: 'abcdefghijklmnop',
    remote_ip: '127.0.0.1',
    client_hostname: '[127.0.0.1]',
    helo: 'bench.localdomain',
    sender: `a@${senderDomain}`,
    sender_domain: senderDomain,
    recipients: 'b@example.com',
    recipient: 'b@example.com',
    recipient_count: '1',
    message_id: '<1.bench@example.com>',
    subject: 'bench',
    size: String(body.length),
    message_body: body,
  };
}

export function fmt(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return '-';
  return value.toFixed(digits);
}

/** The path of `command` when it runs (`args` must make it exit 0 or print usage), else null. */
export function findTool(command, candidates = []) {
  for (const path of [...candidates, command]) {
    const run = spawnSync(path, ['-V'], { stdio: 'ignore' });
    if (run.error === undefined) return path;
  }
  return null;
}

/** A free TCP port on 127.0.0.1 (listen on 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function accepts(port) {
  return new Promise((done) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      done(true);
    });
    socket.on('error', () => done(false));
  });
}

/** Polls `ready` every 50 ms until it is true, at most `timeoutMs`. */
export async function waitFor(ready, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await ready()) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const TICKS_PER_SECOND = 100;

/** utime + stime of a process, in clock ticks; with `children`, of its waited-for children too. */
export function cpuTicks(pid, { children = false } = {}) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // fields[0] is the state (field 3): utime is field 14, stime 15, cutime 16, cstime 17.
  const own = Number(fields[11]) + Number(fields[12]);
  return children ? own + Number(fields[13]) + Number(fields[14]) : own;
}

/** `pid` and every process below it (a cluster primary's workers, their isolated plugin processes), read from /proc. */
export function processTree(pid) {
  const all = [];
  const pending = [pid];
  // Bounded: a process tree of a server is a handful of processes.
  while (pending.length > 0 && all.length < 1024) {
    const next = pending.pop();
    all.push(next);
    let tasks = [];
    try {
      tasks = readdirSync(`/proc/${next}/task`);
    } catch {
      continue;
    }
    for (const task of tasks) {
      try {
        pending.push(...readFileSync(`/proc/${next}/task/${task}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
      } catch {
        // The task ended meanwhile.
      }
    }
  }
  return all;
}

/**
 * CPU ticks of a whole process tree: each live process's own time, plus
 * what its children that already exited and were waited for used
 * (cutime/cstime), so that a worker restarted during a load still counts.
 */
export function treeCpuTicks(pid) {
  return processTree(pid).reduce((sum, each) => {
    try {
      return sum + cpuTicks(each, { children: true });
    } catch {
      return sum;
    }
  }, 0);
}

/** CPU ticks of this process's children that exited and were waited for (a load generator once it has finished). */
export function waitedChildrenTicks() {
  return cpuTicks(process.pid, { children: true }) - cpuTicks(process.pid);
}

/** A /proc/PID/status field in KiB summed over the process tree of `pid`. */
export function treeStatusKiB(pid, field) {
  return processTree(pid).reduce((sum, each) => {
    try {
      return sum + statusKiB(each, field);
    } catch {
      return sum;
    }
  }, 0);
}

/** A /proc/PID/status field in KiB (VmRSS, VmHWM). */
export function statusKiB(pid, field) {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) : NaN;
}

export const haveFile = (path) => existsSync(path);

/** BENCH_QUICK=1: one short round per scenario, to try the bench itself out (figures not for the report). */
export const QUICK = process.env.BENCH_QUICK === '1';
export const scaled = (n, quick) => (QUICK ? quick : n);
