import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { hostError, isErrorCode, type HostError } from '../errors.js';
import type { Logger } from '../log.js';
import { destroyRuntimeContext, ensureRuntimeLoaded } from '../native/host-runtime.js';
import { PROJECT_ROOT } from '../paths.js';
import type { HookContext } from '../plugin/hook-context.js';
import { applyChanges, wireSize, writeEntries } from '../plugin/metadata-wire.js';
import type { PluginOptions } from '../plugin/options.js';
import type { Plugin, PluginMetadata } from '../plugin/plugin.js';
import type { Failure, HookReply, HookRequest, SyncReply, SyncRequest, WorkerEvent } from './sandbox-worker.js';

/** Beyond the hook deadline, how long the worker may take to answer before it is killed (its own deadline check should answer first). */
export const WORKER_GRACE_MS = 1000;
/** How long loading (compiling) the module in a fresh worker may take. */
export const WORKER_LOAD_TIMEOUT_MS = 30_000;

/** The compiled worker entry: beside this file when running from dist/, else dist's copy (tests run the TypeScript sources). */
function workerEntry(): string {
  const here = fileURLToPath(new URL('./sandbox-worker.js', import.meta.url));
  return existsSync(here) ? here : join(PROJECT_ROOT, 'dist', 'src', 'wasm', 'sandbox-worker.js');
}

/** Workers being terminated: a process must not exit before they have (koffi, loaded in a worker, crashes an exit that races its teardown). */
const stopping = new Set<Promise<unknown>>();

function terminate(worker: Worker): void {
  const done = worker.terminate().catch(() => undefined);
  stopping.add(done);
  void done.finally(() => stopping.delete(done));
}

/** Resolves when every sandbox worker told to stop has exited. */
export async function workersStopped(): Promise<void> {
  while (stopping.size > 0) await Promise.all([...stopping]);
}

interface Pending {
  readonly resolve: (code: number) => void;
  readonly reject: (error: HostError) => void;
  readonly context: HookContext;
  readonly timer: NodeJS.Timeout;
}

/** One live worker and the channels to it. */
interface Live {
  readonly worker: Worker;
  /** Bumped by the worker after each lifecycle reply (the main thread waits on it). */
  readonly control: Int32Array;
  readonly syncPort: MessagePort;
  readonly asyncPort: MessagePort;
  /** The runtime context holding the plugin's connections; freed here when the worker exits. */
  netContext: bigint | null;
}

function coded(failure: Failure): HostError {
  return hostError(isErrorCode(failure.code) ? failure.code : 'SMTP_E_WASM_TRAP', failure.message);
}

/**
 * A sandboxed plugin run in a worker thread of its own, so that its waits
 * (network I/O within its grants) never stall the event loop. Hook calls are
 * asynchronous. Lifecycle calls (load, init, enable) wait synchronously for
 * the worker, bounded by the deadline; disable, deinit and unload do too when
 * no hook call is queued, and otherwise are queued behind those calls
 * without waiting (the worker answers in order). A worker that does not
 * answer in time is terminated, its connections closed, and a fresh one is
 * brought back to the old one's state on the next call.
 */
class WorkerWasmPlugin implements Plugin {
  readonly kind = 'wasm' as const;
  readonly blocking = true;
  readonly path: string;
  readonly abiVersion: number;
  readonly metadata: PluginMetadata;
  readonly #options: PluginOptions;
  readonly #logger: Logger;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #seq = 0;
  /** Run when no hook call is pending any more. */
  #idleWaiters: (() => void)[] = [];
  #live: Live | null = null;
  #config: string | null = null;
  #enabled = false;

  constructor(path: string, options: PluginOptions, logger: Logger) {
    this.path = path;
    this.#options = options;
    this.#logger = logger;
    const loaded = this.#start();
    this.abiVersion = loaded.abiVersion;
    this.metadata = loaded.metadata;
  }

  #name(): string {
    return this.metadata?.name ?? this.path;
  }

  #start(): { abiVersion: number; metadata: PluginMetadata } {
    // The worker loads the runtime library too; loaded here first, it stays
    // mapped when the worker's copy is released, so the context the worker
    // made can be freed here after it exits.
    if (this.#options.allowConnect.length > 0) ensureRuntimeLoaded();
    const control = new Int32Array(new SharedArrayBuffer(4));
    const sync = new MessageChannel();
    const hooks = new MessageChannel();
    const worker = new Worker(workerEntry(), {
      workerData: { path: this.path, options: this.#options, control: control.buffer, syncPort: sync.port2, asyncPort: hooks.port2 },
      transferList: [sync.port2, hooks.port2],
      // The plugin's memory is bounded by the sandbox; this bounds the JS around it.
      resourceLimits: { maxOldGenerationSizeMb: 64 },
    });
    worker.unref();
    const live: Live = { worker, control, syncPort: sync.port1, asyncPort: hooks.port1, netContext: null };
    worker.on('error', (error) => this.#logger.error({ code: 'SMTP_E_WASM_TRAP', err: String(error) }, 'sandbox worker failed'));
    worker.on('exit', () => this.#onExit(live));
    hooks.port1.on('message', (message: HookReply | WorkerEvent) => this.#onMessage(live, message));
    hooks.port1.unref();
    this.#live = live;
    try {
      const loaded = this.#sync({ kind: 'sync', op: 'load' }, WORKER_LOAD_TIMEOUT_MS) as { abiVersion: number; metadata: PluginMetadata };
      return { abiVersion: loaded.abiVersion, metadata: Object.freeze({ ...loaded.metadata, dependencies: Object.freeze([...loaded.metadata.dependencies]) }) };
    } catch (error) {
      // A module that does not load leaves no thread behind.
      if (this.#live === live) this.#live = null;
      terminate(worker);
      throw error;
    }
  }

  #onMessage(live: Live, message: HookReply | WorkerEvent): void {
    if ('id' in message) this.#onHookReply(message);
    else if (message.kind === 'log') this.#logger[message.level](message.fields, message.message);
    else live.netContext = message.pointer;
  }

  #onExit(live: Live): void {
    // The worker never frees its runtime context itself: freed here, once, whatever way it ended.
    if (live.netContext !== null) destroyRuntimeContext(live.netContext);
    live.netContext = null;
    if (this.#live !== live) return;
    // It died on its own (not killed): the calls it held will not be answered.
    this.#live = null;
    this.#failPending(hostError('SMTP_E_WASM_TRAP', `plugin "${this.#name()}": the sandbox worker exited`));
  }

  #failPending(error: HostError): void {
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
      this.#pending.delete(id);
    }
    this.#settled();
  }

  #settled(): void {
    if (this.#pending.size > 0) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const waiter of waiters) waiter();
  }

  /** Reads lifecycle replies until the one for `seq`; earlier ones (requests not waited for) are logged if they failed. */
  #takeReply(live: Live, seq: number): SyncReply | undefined {
    for (let next = receiveMessageOnPort(live.syncPort); next !== undefined; next = receiveMessageOnPort(live.syncPort)) {
      const reply = next.message as SyncReply & { seq: number };
      if (reply.seq === seq) return reply;
      if (!reply.ok) this.#logger.error({ code: reply.code, err: reply.message }, 'queued plugin lifecycle call failed');
    }
    return undefined;
  }

  /** Sends a lifecycle request and waits (blocking this thread) for its answer. */
  #sync(request: SyncRequest, timeoutMs: number): unknown {
    const live = this.#live ?? this.#restart();
    const seq = ++this.#seq;
    live.worker.postMessage({ ...request, seq });
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      // Load the counter before looking at the port: a reply posted after the
      // look bumps the counter after this load, so the wait returns at once.
      const seen = Atomics.load(live.control, 0);
      const reply = this.#takeReply(live, seq);
      if (reply !== undefined) {
        if (!reply.ok) throw coded(reply);
        return reply.value;
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#kill(live, `${request.op} did not answer within ${timeoutMs} ms`);
        throw hostError('SMTP_E_WASM_DEADLINE', `plugin "${this.#name()}" ${request.op}: the sandbox worker did not answer within ${timeoutMs} ms`);
      }
      Atomics.wait(live.control, 0, seen, left);
    }
  }

  /** Queues a lifecycle request behind the hook calls in flight, without waiting for it. */
  #post(request: SyncRequest): void {
    this.#live?.worker.postMessage({ ...request, seq: ++this.#seq });
  }

  #kill(live: Live, why: string): void {
    this.#logger.warn({ code: 'SMTP_E_WASM_DEADLINE', why }, 'sandbox worker terminated; its in-memory state is lost');
    if (this.#live === live) this.#live = null;
    terminate(live.worker);
    this.#failPending(hostError('SMTP_E_WASM_DEADLINE', `plugin "${this.#name()}": the sandbox worker was terminated (${why})`));
  }

  /** A fresh worker, brought back to the old one's state. */
  #restart(): Live {
    this.#start();
    const live = this.#live!;
    try {
      if (this.#config !== null) {
        const code = this.#sync({ kind: 'sync', op: 'init', config: this.#config }, this.#lifecycleTimeout()) as number;
        if (code !== 0) throw hostError('SMTP_E_PLUGIN_INIT', `plugin "${this.#name()}": init returned ${code} in a restarted sandbox worker`);
        if (this.#enabled) this.#sync({ kind: 'sync', op: 'enable' }, this.#lifecycleTimeout());
      }
    } catch (error) {
      // Not brought back: no call may reach a worker in another state than the plugin's.
      if (this.#live === live) this.#live = null;
      terminate(live.worker);
      throw error;
    }
    return live;
  }

  #lifecycleTimeout(): number {
    return this.#options.limits.hookTimeoutMs + WORKER_GRACE_MS;
  }

  /**
   * How long a hook call may take before the worker is presumed stuck: its
   * own deadline, and, when it hit that deadline, the instance replacement
   * that follows in the same call (instantiate, init, enable, each under the
   * deadline).
   */
  #hookTimeout(): number {
    return 3 * this.#options.limits.hookTimeoutMs + WORKER_GRACE_MS;
  }

  init(configJson: string): number {
    const code = this.#sync({ kind: 'sync', op: 'init', config: configJson }, this.#lifecycleTimeout()) as number;
    if (code === 0) this.#config = configJson;
    return code;
  }

  enable(): number {
    const code = this.#sync({ kind: 'sync', op: 'enable' }, this.#lifecycleTimeout()) as number;
    if (code === 0) this.#enabled = true;
    return code;
  }

  disable(): number {
    this.#enabled = false;
    if (this.#live === null) return 0;
    if (this.#pending.size > 0) {
      this.#post({ kind: 'sync', op: 'disable' });
      return 0;
    }
    return this.#sync({ kind: 'sync', op: 'disable' }, this.#lifecycleTimeout()) as number;
  }

  executeHook(context: HookContext): Promise<number> {
    // One copy, moved (not cloned) to the worker: the event's bytes, then what was set since.
    let metadata: Uint8Array;
    try {
      const { changes, bytes } = wireSize(context, undefined, `plugin "${this.metadata.name}"`);
      const out = Buffer.allocUnsafeSlow(bytes);
      writeEntries(changes, out, context.base.copyTo(out, 0));
      metadata = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    } catch (error) {
      return Promise.reject(error);
    }
    const id = this.#nextId++;
    let live: Live;
    try {
      live = this.#live ?? this.#restart();
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<number>((resolve, reject) => {
      const limit = this.#hookTimeout() * (this.#pending.size + 1);
      const timer = setTimeout(() => this.#watchdog(live, id, `${context.hook} did not answer within ${limit} ms`), limit);
      this.#pending.set(id, { resolve, reject, context, timer });
      const request: HookRequest = { kind: 'hook', id, hook: context.hook, metadata };
      live.worker.postMessage(request, [metadata.buffer as ArrayBuffer]);
    });
  }

  /** A hook call's timer fired: replies already waiting on the port are read first (a blocked event loop may not have got to them). */
  #watchdog(live: Live, id: number, why: string): void {
    for (let next = receiveMessageOnPort(live.asyncPort); next !== undefined; next = receiveMessageOnPort(live.asyncPort)) {
      this.#onMessage(live, next.message as HookReply | WorkerEvent);
    }
    if (this.#pending.has(id)) this.#kill(live, why);
  }

  #onHookReply(reply: HookReply): void {
    const pending = this.#pending.get(reply.id);
    if (pending === undefined) return;
    this.#pending.delete(reply.id);
    clearTimeout(pending.timer);
    this.#settled();
    if (!reply.ok) {
      pending.reject(coded(reply));
      return;
    }
    try {
      const { limits } = this.#options;
      applyChanges(reply.changes, reply.changes.length, pending.context, { keyBytesMax: limits.metadataKeyBytesMax, valueBytesMax: limits.metadataValueBytesMax, keysMax: limits.metadataKeysMax }, 'SMTP_E_WASM_BOUNDS', `plugin "${this.metadata.name}"`);
      if (reply.cancel) pending.context.cancel = true;
      pending.resolve(reply.code);
    } catch (error) {
      pending.reject(error as HostError);
    }
  }

  deinit(): void {
    this.#config = null;
    if (this.#live === null) return;
    if (this.#pending.size > 0) this.#post({ kind: 'sync', op: 'deinit' });
    else this.#sync({ kind: 'sync', op: 'deinit' }, this.#lifecycleTimeout());
  }

  unload(): void {
    const live = this.#live;
    if (!live) return;
    this.#live = null;
    if (this.#pending.size > 0) {
      // Terminated once the calls queued before it have been answered.
      live.worker.postMessage({ kind: 'sync', op: 'unload', seq: ++this.#seq });
      this.#idleWaiters.push(() => terminate(live.worker));
      return;
    }
    try {
      this.#live = live;
      this.#sync({ kind: 'sync', op: 'unload' }, this.#lifecycleTimeout());
    } finally {
      this.#live = null;
      terminate(live.worker);
    }
  }
}

/** Loads a sandboxed plugin into a worker thread of its own. */
export function loadWorkerPlugin(path: string, options: PluginOptions, logger: Logger): Plugin {
  return new WorkerWasmPlugin(path, options, logger);
}
