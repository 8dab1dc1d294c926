import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { hostError, isErrorCode, type HostError } from '../errors.js';
import type { Logger } from '../log.js';
import { destroyRuntimeContext } from '../native/host-runtime.js';
import { PROJECT_ROOT } from '../paths.js';
import type { HookContext } from '../plugin/hook-context.js';
import { applyChanges, encodeMetadata } from '../plugin/metadata-wire.js';
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
  readonly control: Int32Array;
  readonly syncPort: MessagePort;
  readonly asyncPort: MessagePort;
  netContext: bigint | null;
}

function coded(failure: Failure): HostError {
  return hostError(isErrorCode(failure.code) ? failure.code : 'SMTP_E_WASM_TRAP', failure.message);
}

/**
 * A sandboxed plugin run in a worker thread of its own, so that its waits
 * (network I/O within its grants) never stall the event loop. Hook calls are
 * asynchronous; lifecycle calls (load, init, enable, disable, deinit) wait
 * synchronously for the worker, bounded by the deadline. A worker that does
 * not answer in time is terminated, its connections closed, and a fresh one
 * is brought back to the old one's state on the next call.
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

  #start(): { abiVersion: number; metadata: PluginMetadata } {
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
    hooks.port1.on('message', (message: HookReply | WorkerEvent) => ('id' in message ? this.#onHookReply(message) : this.#onEvent(live, message)));
    hooks.port1.unref();
    this.#live = live;
    const loaded = this.#sync({ kind: 'sync', op: 'load' }, WORKER_LOAD_TIMEOUT_MS) as { abiVersion: number; metadata: PluginMetadata };
    return { abiVersion: loaded.abiVersion, metadata: Object.freeze({ ...loaded.metadata, dependencies: Object.freeze([...loaded.metadata.dependencies]) }) };
  }

  #onEvent(live: Live, event: WorkerEvent): void {
    if (event.kind === 'log') this.#logger[event.level](event.fields, event.message);
    else live.netContext = event.pointer;
  }

  #onExit(live: Live): void {
    // A killed worker cannot close its connections: close them here.
    if (live.netContext !== null) destroyRuntimeContext(live.netContext);
    live.netContext = null;
    if (this.#live === live) this.#live = null;
  }

  /** Sends a lifecycle request and waits (blocking this thread) for the answer. */
  #sync(request: SyncRequest, timeoutMs: number): unknown {
    const live = this.#live ?? this.#restart();
    Atomics.store(live.control, 0, 0);
    live.worker.postMessage(request);
    if (Atomics.wait(live.control, 0, 0, timeoutMs) === 'timed-out') {
      this.#kill(live, `${request.op} did not answer within ${timeoutMs} ms`);
      throw hostError('SMTP_E_WASM_DEADLINE', `plugin "${this.metadata?.name ?? this.path}" ${request.op}: the sandbox worker did not answer within ${timeoutMs} ms`);
    }
    const reply = receiveMessageOnPort(live.syncPort)?.message as SyncReply | undefined;
    if (reply === undefined) throw hostError('SMTP_E_WASM_TRAP', `plugin "${this.metadata?.name ?? this.path}" ${request.op}: the sandbox worker gave no answer`);
    if (!reply.ok) throw coded(reply);
    return reply.value;
  }

  #kill(live: Live, why: string): void {
    this.#logger.warn({ code: 'SMTP_E_WASM_DEADLINE', why }, 'sandbox worker terminated; its in-memory state is lost');
    if (this.#live === live) this.#live = null;
    terminate(live.worker);
    const error = hostError('SMTP_E_WASM_DEADLINE', `plugin "${this.metadata.name}": the sandbox worker was terminated (${why})`);
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
      this.#pending.delete(id);
    }
  }

  /** A fresh worker, brought back to the old one's state. */
  #restart(): Live {
    this.#start();
    if (this.#config !== null) {
      const code = this.#sync({ kind: 'sync', op: 'init', config: this.#config }, this.#lifecycleTimeout()) as number;
      if (code !== 0) throw hostError('SMTP_E_PLUGIN_INIT', `plugin "${this.metadata.name}": init returned ${code} in a restarted sandbox worker`);
      if (this.#enabled) this.#sync({ kind: 'sync', op: 'enable' }, this.#lifecycleTimeout());
    }
    return this.#live!;
  }

  #lifecycleTimeout(): number {
    return this.#options.limits.hookTimeoutMs + WORKER_GRACE_MS;
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
    return this.#sync({ kind: 'sync', op: 'disable' }, this.#lifecycleTimeout() + this.#inFlightBound()) as number;
  }

  /** Lifecycle requests queue behind the hook calls in flight: wait for those too. */
  #inFlightBound(): number {
    return this.#pending.size * this.#lifecycleTimeout();
  }

  executeHook(context: HookContext): Promise<number> {
    const { buf, length } = encodeMetadata(context, undefined, `plugin "${this.metadata.name}"`);
    const metadata = new Uint8Array(length);
    metadata.set(buf.subarray(0, length));
    const id = this.#nextId++;
    let live: Live;
    try {
      live = this.#live ?? this.#restart();
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<number>((resolve, reject) => {
      // The worker's own deadline check answers first; this catches a worker stuck outside the guest.
      const timer = setTimeout(() => this.#kill(live, `${context.hook} did not answer within ${this.#lifecycleTimeout()} ms`), this.#lifecycleTimeout() + this.#inFlightBound());
      this.#pending.set(id, { resolve, reject, context, timer });
      const request: HookRequest = { kind: 'hook', id, hook: context.hook, metadata };
      live.worker.postMessage(request, [metadata.buffer]);
    });
  }

  #onHookReply(reply: HookReply): void {
    const pending = this.#pending.get(reply.id);
    if (pending === undefined) return;
    this.#pending.delete(reply.id);
    clearTimeout(pending.timer);
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
    if (this.#live) this.#sync({ kind: 'sync', op: 'deinit' }, this.#lifecycleTimeout() + this.#inFlightBound());
  }

  unload(): void {
    const live = this.#live;
    if (!live) return;
    try {
      this.#sync({ kind: 'sync', op: 'unload' }, this.#lifecycleTimeout() + this.#inFlightBound());
      // The worker freed its runtime context itself.
      live.netContext = null;
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
