/**
 * The worker thread of a sandboxed plugin that may block (it has
 * allow_connect grants, or declares SMTP_PLUGIN_FLAG_BLOCKING). It runs the
 * same WasmPlugin as the event loop's thread would, with one difference: the
 * plugin's network calls really connect (through the native runtime, which
 * checks the grants) and may wait, because only this thread waits.
 *
 * Protocol (src/wasm/worker-plugin.ts is the other side): one port, every
 * request numbered and answered with its number; requests are handled
 * strictly in order, so a plugin is never entered twice at once. Hook calls
 * come in batches (HookBatch: the calls the main thread made in one turn of
 * its event loop) and are answered together, in order, in one message.
 * Lifecycle requests and hook calls alike are asynchronous for the main
 * thread: it never blocks waiting for this one.
 */
import { type MessagePort, workerData } from 'node:worker_threads';
import { isHookName } from '../abi/hooks.js';
import { isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import { deniedConnectLogger } from '../plugin/denied-log.js';
import { deniedCounters, type GuestCounters } from '../sandbox/guest-counters.js';
import { HookContext } from '../plugin/hook-context.js';
import { encodeEntries, wireMetadata } from '../plugin/metadata-wire.js';
import type { PluginOptions } from '../plugin/options.js';
import type { Plugin } from '../plugin/plugin.js';
import { deniedNet, type GuestNet } from '../sandbox/guest-net.js';
import { loadWasmPlugin } from './wasm-plugin.js';

export interface WorkerData {
  readonly path: string;
  readonly options: PluginOptions;
  readonly port: MessagePort;
}

export type LifecycleRequest = { readonly kind: 'lifecycle'; readonly id: number } & (
  | { readonly op: 'load' }
  | { readonly op: 'init'; readonly config: string }
  | { readonly op: 'enable' | 'disable' | 'deinit' | 'unload' }
);

export interface HookRequest {
  readonly kind: 'hook';
  readonly id: number;
  readonly hook: string;
  readonly metadata: Uint8Array;
}

/** Hook calls sent together (one message each way instead of one per call): run in order, answered by a ReplyBatch. */
export interface HookBatch {
  readonly kind: 'hooks';
  readonly calls: readonly HookRequest[];
}

/** The replies to a HookBatch, in its order. */
export interface ReplyBatch {
  readonly kind: 'replies';
  readonly replies: readonly HookReply[];
}

export type Failure = { readonly ok: false; readonly code: string; readonly message: string };
export type LifecycleReply = { readonly id: number } & ({ readonly ok: true; readonly value: unknown } | Failure);
export type HookReply = { readonly id: number } & ({ readonly ok: true; readonly code: number; readonly cancel: boolean; readonly changes: Uint8Array } | Failure);
/** Sent unasked: a log line, or the runtime context holding the plugin's connections. */
export type WorkerEvent =
  | { readonly kind: 'log'; readonly level: 'debug' | 'info' | 'warn' | 'error'; readonly fields: Record<string, unknown>; readonly message: string }
  | { readonly kind: 'net-context'; readonly pointer: bigint | null };

const data = workerData as WorkerData;

/** Events travel on the same port, ahead of the reply to the call that caused them: a call's log lines are logged before its result is seen. */
function post(event: WorkerEvent): void {
  data.port.postMessage(event);
}

/** A logger whose lines go to the main thread's logger for this plugin. */
function forwardingLogger(): Logger {
  const at = (level: 'debug' | 'info' | 'warn' | 'error') => (fields: unknown, message?: string) => {
    if (typeof fields === 'string') post({ kind: 'log', level, fields: {}, message: fields });
    else post({ kind: 'log', level, fields: (fields ?? {}) as Record<string, unknown>, message: message ?? '' });
  };
  const logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), trace: () => undefined, fatal: at('error') } as Record<string, unknown>;
  logger.child = () => logger;
  return logger as unknown as Logger;
}

const logger = forwardingLogger();

/** The runtime's network with this plugin's grants; reports its context so the main thread can close it if this thread is killed. */
async function runtimeNet(): Promise<GuestNet> {
  if (data.options.allowConnect.length === 0) return deniedNet(logger);
  const { RuntimeNet } = await import('../runtime/host-runtime.js');
  const net = new RuntimeNet(data.options.allowConnect, deniedConnectLogger(logger, 'sandboxed plugin asked for a connection it was not granted (allow_connect)'));
  post({ kind: 'net-context', pointer: net.contextPointer() });
  return {
    connect: (address, timeoutMs) => net.connect(address, timeoutMs),
    send: (handle, bytes, timeoutMs) => net.send(handle, bytes, timeoutMs),
    recv: (handle, cap, timeoutMs) => net.recv(handle, cap, timeoutMs),
    close: (handle) => net.close(handle),
    closeAll: () => net.closeAll(),
  };
}

/** The host counters: the runtime's (loaded in this thread too) with allow_counters. */
async function runtimeCounters(): Promise<GuestCounters> {
  if (!data.options.allowCounters) return deniedCounters(logger);
  const { sandboxCounters } = await import('../runtime/counters.js');
  return sandboxCounters(true, logger);
}

const net = await runtimeNet();
const counters = await runtimeCounters();
let plugin: Plugin | null = null;

function failure(error: unknown): Failure {
  if (isHostError(error)) return { ok: false, code: error.code, message: error.message };
  return { ok: false, code: 'SMTP_E_WASM_TRAP', message: String(error) };
}

function loaded(): Plugin {
  if (plugin === null) throw new Error('the sandbox worker has no plugin loaded');
  return plugin;
}

function runLifecycle(request: LifecycleRequest): unknown {
  switch (request.op) {
    case 'load': {
      plugin = loadWasmPlugin(data.path, { options: data.options, logger, net, counters });
      return { abiVersion: plugin.abiVersion, metadata: plugin.metadata };
    }
    case 'init':
      return loaded().init(request.config);
    case 'enable':
      return loaded().enable();
    case 'disable':
      return loaded().disable();
    case 'deinit':
      void loaded().deinit();
      return null;
    case 'unload':
      void plugin?.unload();
      plugin = null;
      // The context itself is freed by the main thread once this thread has exited.
      net.closeAll();
      return null;
  }
}

function runHook(request: HookRequest): HookReply {
  if (!isHookName(request.hook)) return { id: request.id, ok: false, code: 'SMTP_E_HOOK_UNKNOWN', message: `unknown hook "${request.hook}"` };
  try {
    // The bytes as they came are the event's encoding: the plugin's copy-in reads them as they are.
    const context = new HookContext(request.hook, undefined, wireMetadata(request.metadata));
    const code = loaded().executeHook(context) as number;
    return { id: request.id, ok: true, code, cancel: context.cancel, changes: encodeEntries(context.pluginChanges(), true) };
  } catch (error) {
    return { id: request.id, ...failure(error) };
  }
}

data.port.on('message', (request: LifecycleRequest | HookBatch) => {
  if (request.kind === 'hooks') {
    const replies = request.calls.map(runHook);
    const transfer: ArrayBuffer[] = [];
    for (const reply of replies) if (reply.ok) transfer.push(reply.changes.buffer as ArrayBuffer);
    data.port.postMessage({ kind: 'replies', replies } satisfies ReplyBatch, transfer);
    return;
  }
  let reply: LifecycleReply;
  try {
    reply = { id: request.id, ok: true, value: runLifecycle(request) };
  } catch (error) {
    reply = { id: request.id, ...failure(error) };
  }
  data.port.postMessage(reply);
});
