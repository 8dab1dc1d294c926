/**
 * Native hook calls running on pool threads (in-process plugins with
 * SMTP_PLUGIN_FLAG_BLOCKING), and those of them past their deadline. A
 * thread cannot be stopped from JavaScript, so a late call keeps its thread
 * until the plugin returns; this module bounds how many may, and names the
 * calls still running for the shutdown log (src/cli/serve-command.ts).
 *
 * koffi's async calls run on libuv's thread pool, the one Node's file I/O
 * (the spool's writes and fsyncs) also uses: a late call is a pool thread
 * the spool no longer has.
 */

/** libuv's default pool size, used when UV_THREADPOOL_SIZE is unset or not a number. */
const LIBUV_POOL_THREADS_DEFAULT = 4;
/** libuv's own upper bound on UV_THREADPOOL_SIZE. */
const LIBUV_POOL_THREADS_MAX = 1024;

/** The size of libuv's thread pool, read as libuv reads it (UV_THREADPOOL_SIZE, 1 to 1024, default 4). */
export function poolThreads(env: NodeJS.ProcessEnv = process.env): number {
  const asked = Number.parseInt(env.UV_THREADPOOL_SIZE ?? '', 10);
  if (!Number.isFinite(asked) || asked <= 0) return LIBUV_POOL_THREADS_DEFAULT;
  return Math.min(asked, LIBUV_POOL_THREADS_MAX);
}

/**
 * At most this many pool threads may be held by late calls before every
 * new blocking native call fails at once: one thread always stays for file
 * I/O, so the spool can still accept and deliver mail.
 */
export const LATE_CALLS_MAX = Math.max(1, poolThreads() - 1);

/** One batch of a plugin's calls on a pool thread (src/native/blocking-calls.ts); most often a single call. */
export interface PoolCall {
  readonly plugin: string;
  /** The hooks of the batch's calls, "/"-separated when they differ. */
  readonly hook: string;
  /** performance.now() when the call was made. */
  readonly startedMs: number;
  /** Past its deadline: its session has been answered, and the thread is still held. */
  late: boolean;
}

const running = new Set<PoolCall>();

export function callStarted(plugin: string, hook: string): PoolCall {
  const call: PoolCall = { plugin, hook, startedMs: performance.now(), late: false };
  running.add(call);
  return call;
}

/** The call returned: its thread is back in the pool. */
export function callReturned(call: PoolCall): void {
  running.delete(call);
}

/** True when late calls hold as many pool threads as they may. */
export function lateCallsAtLimit(): boolean {
  let late = 0;
  for (const call of running) if (call.late) late++;
  return late >= LATE_CALLS_MAX;
}

/** The calls still running, for a log line: plugin, hook, how long each has run and whether it is past its deadline. */
export function runningPoolCalls(nowMs: number = performance.now()): { plugin: string; hook: string; running_ms: number; late: boolean }[] {
  return [...running].map((call) => ({ plugin: call.plugin, hook: call.hook, running_ms: Math.round(nowMs - call.startedMs), late: call.late }));
}

/** True while some call past its deadline still runs: it may still read the bytes it was given. */
export function lateCallRunning(): boolean {
  for (const call of running) if (call.late) return true;
  return false;
}
