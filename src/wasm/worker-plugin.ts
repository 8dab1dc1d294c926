import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { hostError, isErrorCode, type HostError } from '../errors.js';
import type { Logger } from '../log.js';
import { destroyRuntimeContext, ensureRuntimeLoaded } from '../runtime/host-runtime.js';
import { PROJECT_ROOT } from '../paths.js';
import type { HookContext } from '../plugin/hook-context.js';
import { applyChanges, copyWire, wireSize } from '../plugin/metadata-wire.js';
import type { PluginOptions } from '../plugin/options.js';
import type { Plugin, PluginMetadata, PluginRuntimeStats } from '../plugin/plugin.js';
import type { Failure, HookBatch, HookReply, HookRequest, LifecycleReply, LifecycleRequest, ReplyBatch, WorkerEvent } from './sandbox-worker.js';

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
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: HostError) => void;
  /** Set for a hook call: its changes land there. */
  readonly context: HookContext | null;
  readonly timer: NodeJS.Timeout;
}

/** One live worker and its port. */
interface Live {
  readonly worker: Worker;
  readonly port: MessagePort;
  /** The runtime context holding the plugin's connections; freed here when the worker exits. */
  netContext: bigint | null;
  /** Hook calls made this turn, not sent yet (sent together by #flush), and the buffers they move. */
  calls: HookRequest[];
  transfer: ArrayBuffer[];
}

type Lifecycle = LifecycleRequest extends infer R ? (R extends { readonly id: number } ? Omit<R, 'id' | 'kind'> : never) : never;

function coded(failure: Failure): HostError {
  return hostError(isErrorCode(failure.code) ? failure.code : 'SMTP_E_WASM_TRAP', failure.message);
}

/**
 * A sandboxed plugin run in a worker thread of its own, so that its waits
 * (network I/O within its grants) never stall the event loop. Every call,
 * lifecycle and hook alike, is a numbered message answered asynchronously;
 * the worker handles them in order, so a disable or an unload queued behind
 * hook calls runs after them. A call not answered in time terminates the
 * worker (its connections are closed), and the next call brings a fresh one
 * back to the old one's state.
 */
class WorkerWasmPlugin implements Plugin {
  readonly kind = 'wasm' as const;
  readonly backend = 'wasm' as const;
  readonly blocking = true;
  readonly path: string;
  abiVersion = 0;
  metadata!: PluginMetadata;
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
  }

  #name(): string {
    return this.metadata?.name ?? this.path;
  }

  /** Starts a worker and loads the module in it. */
  async start(): Promise<void> {
    // The worker loads the runtime library too; loaded here first, it stays
    // mapped when the worker's copy is released, so the context the worker
    // made can be freed here after it exits, and the counters (process-wide,
    // in the runtime) outlive the worker.
    if (this.#options.allowConnect.length > 0 || this.#options.allowCounters) ensureRuntimeLoaded();
    const channel = new MessageChannel();
    const worker = new Worker(workerEntry(), {
      workerData: { path: this.path, options: this.#options, port: channel.port2 },
      transferList: [channel.port2],
      // The plugin's memory is bounded by the sandbox; this bounds the JS around it.
      resourceLimits: { maxOldGenerationSizeMb: 64 },
    });
    worker.unref();
    const live: Live = { worker, port: channel.port1, netContext: null, calls: [], transfer: [] };
    worker.on('error', (error) => this.#logger.error({ code: 'SMTP_E_WASM_TRAP', err: String(error) }, 'sandbox worker failed'));
    worker.on('exit', () => this.#onExit(live));
    channel.port1.on('message', (message: ReplyBatch | LifecycleReply | WorkerEvent) => this.#onMessage(live, message));
    channel.port1.unref();
    this.#live = live;
    try {
      const loaded = (await this.#call(live, { op: 'load' }, WORKER_LOAD_TIMEOUT_MS)) as { abiVersion: number; metadata: PluginMetadata };
      this.abiVersion = loaded.abiVersion;
      this.metadata = Object.freeze({ ...loaded.metadata, dependencies: Object.freeze([...loaded.metadata.dependencies]) });
    } catch (error) {
      // A module that does not load leaves no thread behind.
      if (this.#live === live) this.#live = null;
      terminate(worker);
      throw error;
    }
  }

  #onMessage(live: Live, message: ReplyBatch | LifecycleReply | WorkerEvent): void {
    if ('id' in message) this.#onReply(message);
    else if (message.kind === 'replies') for (const reply of message.replies) this.#onReply(reply);
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
  }

  /**
   * Sends one numbered request; the worker is killed when it does not answer
   * within `timeoutMs`. A hook call waits for the end of this turn of the
   * event loop (setImmediate), to go with the others made in it: the
   * message_stored calls of one group commit, say, cost one message each
   * way instead of one per call. A lifecycle request sends the calls queued
   * before it first, so the worker still sees everything in call order.
   */
  #send(live: Live, request: (id: number) => LifecycleRequest | HookRequest, timeoutMs: number, what: string, context: HookContext | null, transfer: ArrayBuffer[] = []): Promise<unknown> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.#watchdog(live, id, `${what} did not answer within ${timeoutMs} ms`), timeoutMs);
      this.#pending.set(id, { resolve, reject, context, timer });
      const message = request(id);
      if (message.kind === 'hook') {
        if (live.calls.length === 0) setImmediate(() => this.#flush(live));
        live.calls.push(message);
        live.transfer.push(...transfer);
        return;
      }
      this.#flush(live);
      live.port.postMessage(message, transfer);
    });
  }

  /** Sends the hook calls queued for `live` (if any) as one batch. */
  #flush(live: Live): void {
    if (live.calls.length === 0) return;
    const batch: HookBatch = { kind: 'hooks', calls: live.calls };
    const { transfer } = live;
    live.calls = [];
    live.transfer = [];
    // A worker killed meanwhile has failed these calls already; its closed port drops the message.
    live.port.postMessage(batch, transfer);
  }

  #call(live: Live, request: Lifecycle, timeoutMs: number): Promise<unknown> {
    return this.#send(live, (id) => ({ ...request, kind: 'lifecycle', id }) as LifecycleRequest, timeoutMs, request.op, null);
  }

  /** A call's timer fired: replies already waiting on the port are read first (a blocked event loop may not have got to them). */
  #watchdog(live: Live, id: number, why: string): void {
    for (let next = receiveMessageOnPort(live.port); next !== undefined; next = receiveMessageOnPort(live.port)) {
      this.#onMessage(live, next.message as ReplyBatch | LifecycleReply | WorkerEvent);
    }
    if (this.#pending.has(id)) this.#kill(live, why);
  }

  #kill(live: Live, why: string): void {
    this.#logger.warn({ code: 'SMTP_E_WASM_DEADLINE', why }, 'sandbox worker terminated; its in-memory state is lost');
    if (this.#live === live) this.#live = null;
    terminate(live.worker);
    this.#failPending(hostError('SMTP_E_WASM_DEADLINE', `plugin "${this.#name()}": the sandbox worker was terminated (${why})`));
  }

  #restarts = 0;

  /** The live worker, or a fresh one brought back to the old one's state. */
  async #current(): Promise<Live> {
    if (this.#live !== null) return this.#live;
    await this.start();
    const live = this.#live!;
    try {
      if (this.#config !== null) {
        const code = (await this.#call(live, { op: 'init', config: this.#config }, this.#lifecycleTimeout())) as number;
        if (code !== 0) throw hostError('SMTP_E_PLUGIN_INIT', `plugin "${this.#name()}": init returned ${code} in a restarted sandbox worker`);
        if (this.#enabled) await this.#call(live, { op: 'enable' }, this.#lifecycleTimeout());
      }
    } catch (error) {
      // Not brought back: no call may reach a worker in another state than the plugin's.
      if (this.#live === live) this.#live = null;
      terminate(live.worker);
      throw error;
    }
    this.#restarts++;
    return live;
  }

  /** Restarts of the worker after a deadline kill (a trap inside it replaces the instance there, unseen here); its memory lives in the worker. */
  runtimeStats(): PluginRuntimeStats {
    return { restarts: this.#restarts, memoryBytes: null };
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

  /** Runs a lifecycle call on the live worker; the calls queued before it (hook calls) run first, so its timer allows for them. */
  async #lifecycle(request: Lifecycle): Promise<unknown> {
    const live = await this.#current();
    return this.#call(live, request, this.#lifecycleTimeout() + this.#hookTimeout() * this.#pending.size);
  }

  async init(configJson: string): Promise<number> {
    const code = (await this.#lifecycle({ op: 'init', config: configJson })) as number;
    if (code === 0) this.#config = configJson;
    return code;
  }

  async enable(): Promise<number> {
    const code = (await this.#lifecycle({ op: 'enable' })) as number;
    if (code === 0) this.#enabled = true;
    return code;
  }

  async disable(): Promise<number> {
    this.#enabled = false;
    if (this.#live === null) return 0;
    return (await this.#lifecycle({ op: 'disable' })) as number;
  }

  executeHook(context: HookContext): Promise<number> {
    // One copy, moved (not cloned) to the worker: the event's bytes, then what was set since.
    let metadata: Uint8Array;
    try {
      const { changes, bytes } = wireSize(context, undefined, `plugin "${this.metadata.name}"`);
      const out = Buffer.allocUnsafeSlow(bytes);
      copyWire(context, changes, out);
      metadata = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    } catch (error) {
      return Promise.reject(error);
    }
    const send = (live: Live): Promise<number> => {
      const limit = this.#hookTimeout() * (this.#pending.size + 1);
      const request = (id: number): HookRequest => ({ kind: 'hook', id, hook: context.hook, metadata });
      return this.#send(live, request, limit, context.hook, context, [metadata.buffer as ArrayBuffer]) as Promise<number>;
    };
    // Queued at once with a live worker: a lifecycle call made after this one, in the same turn, then reaches the worker after it.
    if (this.#live !== null) return send(this.#live);
    return this.#current().then(send);
  }

  #onReply(reply: HookReply | LifecycleReply): void {
    const pending = this.#pending.get(reply.id);
    if (pending === undefined) return;
    this.#pending.delete(reply.id);
    clearTimeout(pending.timer);
    if (!reply.ok) {
      pending.reject(coded(reply));
      return;
    }
    if (!('changes' in reply)) {
      pending.resolve(reply.value);
      return;
    }
    try {
      const { limits } = this.#options;
      applyChanges(reply.changes, 0, reply.changes.length, pending.context!, { keyBytesMax: limits.metadataKeyBytesMax, valueBytesMax: limits.metadataValueBytesMax, keysMax: limits.metadataKeysMax }, 'SMTP_E_WASM_BOUNDS', `plugin "${this.metadata.name}"`);
      if (reply.cancel) pending.context!.cancel = true;
      pending.resolve(reply.code);
    } catch (error) {
      pending.reject(error as HostError);
    }
  }

  async deinit(): Promise<void> {
    this.#config = null;
    if (this.#live === null) return;
    await this.#lifecycle({ op: 'deinit' });
  }

  async unload(): Promise<void> {
    const live = this.#live;
    if (live === null) return;
    try {
      // Queued behind the calls in flight: the worker answers in order.
      await this.#call(live, { op: 'unload' }, this.#lifecycleTimeout() + this.#hookTimeout() * this.#pending.size);
    } finally {
      if (this.#live === live) this.#live = null;
      terminate(live.worker);
    }
  }
}

/** Loads a sandboxed plugin into a worker thread of its own. */
export async function loadWorkerPlugin(path: string, options: PluginOptions, logger: Logger): Promise<Plugin> {
  const plugin = new WorkerWasmPlugin(path, options, logger);
  await plugin.start();
  return plugin;
}
