import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import type { Socket } from 'node:net';
import { resolve } from 'node:path';
import { ABI_VERSION, ABI_VERSION_1_1, formatAbiVersion, isAbiCompatible } from '../abi/hooks.js';
import { hostError, isHostError, type HostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { CHILD_PROGRAM } from '../paths.js';
import { denialLog, type DenialLog } from '../plugin/denied-log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { METADATA_LIMITS, validateMetadata, type RawMetadata } from '../plugin/metadata.js';
import { applyChanges, copyWire, scratchBuffer, wireSize, type WireBounds } from '../plugin/metadata-wire.js';
import { DEFAULT_PLUGIN_OPTIONS, type PluginOptions, type SandboxLimits } from '../plugin/options.js';
import type { Plugin, PluginMetadata, PluginRuntimeStats } from '../plugin/plugin.js';
import { Channel, Fault, Op, Outcome, STATUS_CANCEL, type OpCode } from './channel.js';
import { logChildOutput } from './child-output.js';

/**
 * How long the event loop's thread spins for a child's answer before it
 * hands the wait to a thread of koffi's pool and answers with a promise.
 * A hook that answers within it costs no promise and no thread hop.
 */
export const SYNC_SPIN_NS = 50_000;
/** How long a child spins for its next request after answering, before it sleeps on the futex (a call to a sleeping child pays a wake-up). */
export const CHILD_SPIN_NS = 100_000;
/** Starting a child: spawn, copy and dlopen the library, metadata, confinement. */
export const LOAD_TIMEOUT_MS = 10_000;
/** Lifecycle calls (init may connect to services) get the hook deadline, but at least this. */
export const LIFECYCLE_TIMEOUT_MIN_MS = 10_000;
/** Restarts after the second failure in a row wait this long, doubling up to the maximum; calls meanwhile fail at once with the last error. */
export const RESTART_BACKOFF_MIN_MS = 100;
export const RESTART_BACKOFF_MAX_MS = 10_000;
/** How long an error waits for the dead child's exit status (reaped by Node) to name it. */
const EXIT_STATUS_WAIT_MS = 1000;
/** Each shared area holds at least this much, and at most this much. */
export const AREA_BYTES_MIN = 64 * 1024;
export const AREA_BYTES_MAX = 1024 * 1024 * 1024;
/** After a transfer larger than this, the pages past it are given back to the system. */
export const RELEASE_ABOVE_BYTES = 1024 * 1024;
/**
 * RLIMIT_CPU: a child may use this many CPU seconds beyond what it had used
 * when the host last re-armed the limit, which it does after a completed
 * hook call at most every CPU_REARM_INTERVAL_MS. A child that burns CPU
 * while its calls do not complete (a runaway thread) is ended by SIGXCPU.
 */
export const CPU_BUDGET_SECONDS = 30;
export const CPU_REARM_INTERVAL_MS = 10_000;
/** Environment variables a child inherits (nothing else of the server's environment reaches a plugin). */
const INHERITED_ENVIRONMENT = ['TZ', 'LANG', 'LC_ALL'];

/** Bytes of one shared area: every key at its bound plus two values at theirs (a message body and one more). */
export function areaBytes(limits: SandboxLimits): number {
  const bytes = limits.metadataKeysMax * (8 + limits.metadataKeyBytesMax) + 2 * limits.metadataValueBytesMax;
  return Math.min(AREA_BYTES_MAX, Math.max(AREA_BYTES_MIN, bytes));
}

interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** One child process and its channel. */
interface Live {
  readonly channel: Channel;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<ExitStatus>;
  cpuArmedAt: number;
}

// Every child of this process, killed if the process exits with them still running
// (they also die by PR_SET_PDEATHSIG when the server dies any other way).
const running = new Set<ChildProcess>();
const stopping = new Set<Promise<unknown>>();
let exitHookInstalled = false;

function track(child: ChildProcess, exited: Promise<unknown>): void {
  running.add(child);
  void exited.finally(() => running.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const each of running) each.kill('SIGKILL');
  });
}

/** Resolves when every plugin child told to stop has exited (and was reaped). */
export async function processesStopped(): Promise<void> {
  while (stopping.size > 0) await Promise.all([...stopping]);
}

function describeExit(status: ExitStatus | null): string {
  if (status === null) return 'ended';
  return status.signal !== null ? `was killed by ${status.signal}` : `exited with status ${status.code}`;
}

function within<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  return new Promise((done) => {
    const timer = setTimeout(() => done(null), ms);
    void promise.then((value) => {
      clearTimeout(timer);
      done(value);
    });
  });
}

function childEnvironment(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const name of INHERITED_ENVIRONMENT) if (process.env[name] !== undefined) env[name] = process.env[name];
  return env;
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * A native plugin run in a child process of its own (`isolation =
 * "process"`), behind the same Plugin interface as the in-process backend.
 * A crash, an exit() or a hang there fails only that call, with
 * SMTP_E_PLUGIN_CRASHED or SMTP_E_PLUGIN_DEADLINE; the next call brings a
 * fresh child back to the old one's state (init with the same config,
 * enable if it was enabled), with a backoff when restarts keep failing.
 * Calls never overlap: each waits for the one before it.
 */
class ProcessPlugin implements Plugin {
  readonly kind = 'native' as const;
  readonly backend = 'process' as const;
  /** Hooks run in another process: executeHook may answer with a promise (one that answers within SYNC_SPIN_NS still answers at once). */
  readonly blocking = true;
  readonly path: string;
  abiVersion = 0;
  metadata!: PluginMetadata;
  readonly #options: PluginOptions;
  readonly #logger: Logger;
  readonly #bounds: WireBounds;
  readonly #onDenied: DenialLog;
  readonly #hookTimeoutMs: number;
  readonly #lifecycleTimeoutMs: number;
  #live: Live | null = null;
  /** What a fresh child must be brought back to. */
  #config: string | null = null;
  #enabled = false;
  #unloaded = false;
  /** The last call queued: the next waits for it. */
  #queue: Promise<unknown> = Promise.resolve();
  #inFlight = 0;
  /** Deaths and failed restarts in a row, the last one's error, and when the next restart may be tried. */
  #failures = 0;
  #restarts = 0;
  #lastError: HostError | null = null;
  #retryAt = 0;

  constructor(path: string, options: PluginOptions, logger: Logger) {
    this.path = path;
    this.#options = options;
    this.#logger = logger;
    const { limits } = options;
    this.#bounds = { keyBytesMax: limits.metadataKeyBytesMax, valueBytesMax: limits.metadataValueBytesMax, keysMax: limits.metadataKeysMax };
    this.#onDenied = denialLog(logger);
    this.#hookTimeoutMs = limits.hookTimeoutMs;
    this.#lifecycleTimeoutMs = Math.max(limits.hookTimeoutMs, LIFECYCLE_TIMEOUT_MIN_MS);
  }

  #name(): string {
    return this.metadata?.name ?? this.path;
  }

  /** Starts the first child and reads the plugin's metadata from it. */
  async open(): Promise<void> {
    this.#live = await this.#start();
  }

  /** Spawns a child, has it load the library, and checks what it found. */
  async #start(): Promise<Live> {
    const { limits } = this.#options;
    const area = areaBytes(limits);
    const channel = new Channel({
      requestBytesMax: area,
      replyBytesMax: area,
      keyBytesMax: limits.metadataKeyBytesMax,
      valueBytesMax: limits.metadataValueBytesMax,
      keysMax: limits.metadataKeysMax,
      memoryBytesMax: limits.memoryMb * 1024 * 1024,
      childSpinNs: CHILD_SPIN_NS,
    });
    let child: ChildProcess;
    try {
      channel.setGrants(this.#options.allowConnect);
      const [memfd, socket] = channel.childFds();
      child = spawn(CHILD_PROGRAM, [resolve(this.path), String(process.pid)], { stdio: ['ignore', 'pipe', 'pipe', memfd, socket], env: childEnvironment(), cwd: '/' });
    } catch (cause) {
      channel.destroy();
      throw hostError('SMTP_E_PLUGIN_CRASHED', `plugin "${this.#name()}": its process could not be started (${(cause as Error).message})`, cause);
    }
    const exited = new Promise<ExitStatus>((done) => child.once('exit', (code, signal) => done({ code, signal })));
    child.on('error', (error) => this.#logger.error({ code: 'SMTP_E_PLUGIN_CRASHED', err: error.message }, 'plugin process failed'));
    if (child.pid === undefined) {
      channel.destroy();
      throw hostError('SMTP_E_RUNTIME_MISSING', `plugin "${this.#name()}": ${CHILD_PROGRAM} could not be started`);
    }
    track(child, exited);
    // When the child is already gone the load below reports it.
    channel.attach(child.pid);
    child.unref();
    for (const [stream, name] of [[child.stdout, 'stdout'], [child.stderr, 'stderr']] as const) {
      (stream as Socket).unref();
      logChildOutput(stream!, this.#logger, name);
    }
    const live: Live = { channel, child, pid: child.pid, exited, cpuArmedAt: 0 };
    try {
      await this.#exchange(live, Op.LOAD, 0, 0, LOAD_TIMEOUT_MS, 'load');
      this.#checkLoad(live);
      // Its counters are the server's (served by this process), under its name.
      channel.setCounters(this.#options.allowCounters ? this.metadata.name : null);
    } catch (error) {
      this.#discard(live);
      throw error;
    }
    this.#armCpu(live, Date.now());
    this.#logger.debug({ pid: live.pid, landlock_abi: channel.landlockAbi }, 'plugin process started');
    return live;
  }

  /** Turns the child's load report into the metadata, or into the error the in-process backend would raise. */
  #checkLoad(live: Live): void {
    const { channel } = live;
    const text = (): string => channel.reply.toString('utf8', 0, Math.max(0, Math.min(channel.replyLen, 1024)));
    switch (channel.fault) {
      case Fault.NONE:
        break;
      case Fault.LOAD_READ:
        throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${this.path}: no such readable file (${text()})`);
      case Fault.LOAD_DLOPEN:
        throw hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${this.path}: not a loadable shared library (${text()})`);
      case Fault.LOAD_NO_MARKER:
        throw hostError('SMTP_E_PLUGIN_MISSING_EXPORT', `${this.path}: no smtp_plugin_abi_version export (is it built against abi/smtp_plugin.h?)`);
      case Fault.LOAD_ABI:
        throw hostError('SMTP_E_PLUGIN_ABI_VERSION', `${this.path}: built for ABI ${formatAbiVersion(channel.abiVersion)}, this host runs ABI ${formatAbiVersion(ABI_VERSION)}`);
      case Fault.LOAD_MISSING_EXPORT:
        throw hostError('SMTP_E_PLUGIN_MISSING_EXPORT', `${this.path}: ${text()}`);
      case Fault.LOAD_NULL_METADATA:
        throw hostError('SMTP_E_PLUGIN_METADATA', `${this.path}: get_metadata returned NULL${text() === '' ? '' : ` (${text()})`}`);
      case Fault.CONFINE:
        throw hostError('SMTP_E_PLUGIN_CRASHED', `${this.path}: the plugin's process could not confine itself (${text()}) and was stopped`);
      default:
        throw hostError('SMTP_E_PLUGIN_STATE', `${this.path}: the plugin's process refused the load (fault ${channel.fault}: ${text()})`);
    }
    const abiVersion = channel.abiVersion;
    if (!isAbiCompatible(abiVersion)) throw hostError('SMTP_E_PLUGIN_ABI_VERSION', `${this.path}: built for ABI ${formatAbiVersion(abiVersion)}, this host runs ABI ${formatAbiVersion(ABI_VERSION)}`);
    const metadata = this.#readMetadata(channel, abiVersion);
    if (this.metadata !== undefined && metadata.name !== this.metadata.name) {
      throw hostError('SMTP_E_PLUGIN_STATE', `${this.path}: the restarted process found plugin "${metadata.name}", not "${this.metadata.name}"`);
    }
    this.abiVersion = abiVersion;
    this.metadata ??= metadata;
  }

  /** The metadata the child wrote as wire entries (untrusted: every length is checked). */
  #readMetadata(channel: Channel, abiVersion: number): PluginMetadata {
    const bytes = channel.reply;
    const length = channel.replyLen;
    const malformed = (): never => {
      throw hostError('SMTP_E_PLUGIN_METADATA', `${this.path}: the plugin's process sent malformed metadata`);
    };
    if (length < 0 || length > bytes.length) malformed();
    const strings = new Map<string, string>();
    const dependencies: string[] = [];
    let handledHooks = 0n;
    let flags = 0n;
    for (let at = 0; at < length; ) {
      if (length - at < 4) malformed();
      const keyLen = bytes.readUInt32LE(at);
      if (length - at - 4 < keyLen + 4) malformed();
      const key = bytes.toString('latin1', at + 4, at + 4 + keyLen);
      at += 4 + keyLen;
      const valueLen = bytes.readUInt32LE(at);
      if (length - at - 4 < valueLen) malformed();
      const value = bytes.subarray(at + 4, at + 4 + valueLen);
      at += 4 + valueLen;
      if (key === 'handled_hooks' || key === 'flags') {
        if (valueLen !== 8) malformed();
        if (key === 'handled_hooks') handledHooks = value.readBigUInt64LE(0);
        else flags = value.readBigUInt64LE(0);
        continue;
      }
      const max = key === 'description' ? METADATA_LIMITS.descriptionBytesMax : METADATA_LIMITS.fieldBytesMax;
      const what = key === 'dependency' ? `dependencies[${dependencies.length}]` : key;
      if (valueLen > max) throw hostError('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata ${what} is longer than ${max} bytes or not NUL-terminated`);
      let text: string;
      try {
        text = utf8Strict.decode(value);
      } catch {
        throw hostError('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata ${what} is not valid UTF-8`);
      }
      if (key === 'dependency') dependencies.push(text);
      else strings.set(key, text);
    }
    if (dependencies.length > METADATA_LIMITS.dependenciesMax) {
      throw hostError('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata dependencies has more than ${METADATA_LIMITS.dependenciesMax} entries or no NULL terminator`);
    }
    const field = (name: string): string | null => strings.get(name) ?? null;
    const raw: RawMetadata = {
      name: field('name'),
      version: field('version'),
      author: field('author'),
      description: field('description'),
      license: field('license'),
      dependencies,
      minServerVersion: field('min_server_version'),
      maxServerVersion: field('max_server_version'),
      handledHooks,
      flags: abiVersion >= ABI_VERSION_1_1 ? flags : 0n,
    };
    return validateMetadata(raw, this.path);
  }

  /**
   * Posts `op`, and, unless the child answers within SYNC_SPIN_NS, waits
   * for it on a pool thread. The child's death, or a deadline (the child
   * is then killed), becomes the call's coded error.
   */
  async #exchange(live: Live, op: OpCode, hook: number, length: number, timeoutMs: number, what: string): Promise<void> {
    let outcome = live.channel.call(op, hook, length, SYNC_SPIN_NS);
    if (outcome === Outcome.PENDING) outcome = await this.#wait(live, timeoutMs);
    if (outcome !== Outcome.DONE) throw await this.#lost(live, outcome, what, timeoutMs);
  }

  async #wait(live: Live, timeoutMs: number): Promise<number> {
    const outcome = await live.channel.wait(timeoutMs);
    // Connections are asked for (and refused) only while the host waits here.
    const denied = live.channel.deniedAddress();
    if (denied !== null) this.#onDenied.connect(denied);
    return outcome;
  }

  /** The child died or was killed in `what`: it is dropped, and the error names the signal or status. */
  async #lost(live: Live, outcome: number, what: string, timeoutMs: number): Promise<HostError> {
    this.#discard(live);
    const restart = this.#config !== null && !this.#unloaded ? '; it is restarted on the next call' : '';
    let error: HostError;
    if (outcome === Outcome.DEADLINE) {
      error = hostError('SMTP_E_PLUGIN_DEADLINE', `plugin "${this.#name()}": ${what} ran past its ${timeoutMs} ms deadline; its process was killed (SIGKILL)${restart}`);
    } else {
      const status = await within(live.exited, EXIT_STATUS_WAIT_MS);
      error = hostError('SMTP_E_PLUGIN_CRASHED', `plugin "${this.#name()}": its process ${describeExit(status)} during ${what}${restart}`);
    }
    this.#logger.warn({ code: error.code, pid: live.pid, err: error.message }, 'plugin process lost; its in-memory state is gone');
    this.#failed(error);
    return error;
  }

  #failed(error: HostError): void {
    this.#failures++;
    this.#lastError = error;
    // The first restart is immediate; the ones after a failure in a row back off.
    const backoff = this.#failures <= 1 ? 0 : Math.min(RESTART_BACKOFF_MAX_MS, RESTART_BACKOFF_MIN_MS * 2 ** (this.#failures - 2));
    this.#retryAt = Date.now() + backoff;
  }

  /** Kills a child (if it runs) and frees its channel; no wait may be in flight on it. */
  #discard(live: Live): void {
    if (this.#live === live) this.#live = null;
    live.channel.destroy();
    stopping.add(live.exited);
    void live.exited.finally(() => stopping.delete(live.exited));
  }

  #armCpu(live: Live, now: number): void {
    live.cpuArmedAt = now;
    if (!live.channel.limitCpu(live.pid, CPU_BUDGET_SECONDS)) this.#logger.debug({ pid: live.pid }, 'could not set the plugin process\'s CPU limit');
  }

  runtimeStats(): PluginRuntimeStats {
    return { restarts: this.#restarts, memoryBytes: null };
  }

  /** The live child, or a fresh one brought back to the old one's state. */
  async #current(): Promise<Live> {
    if (this.#live !== null) return this.#live;
    if (this.#unloaded) throw hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.#name()}" was unloaded`);
    const wait = this.#retryAt - Date.now();
    if (wait > 0 && this.#lastError !== null) {
      throw hostError(this.#lastError.code as Parameters<typeof hostError>[0], `${this.#lastError.message} (restart backing off: next try in ${wait} ms)`);
    }
    let live: Live | null = null;
    try {
      live = await this.#start();
      if (this.#config !== null) {
        const init = await this.#lifecycleOn(live, Op.INIT, 'init', this.#config);
        if (init !== 0) throw hostError('SMTP_E_PLUGIN_INIT', `plugin "${this.#name()}": init returned ${init} in a restarted process`);
        if (this.#enabled) {
          const enable = await this.#lifecycleOn(live, Op.ENABLE, 'enable');
          if (enable !== 0) throw hostError('SMTP_E_PLUGIN_ENABLE', `plugin "${this.#name()}": enable returned ${enable} in a restarted process`);
        }
      }
    } catch (error) {
      if (live !== null) this.#discard(live);
      const coded = isHostError(error) ? error : hostError('SMTP_E_PLUGIN_CRASHED', `plugin "${this.#name()}": ${String(error)}`, error);
      if (coded !== this.#lastError) this.#failed(coded);
      this.#logger.error({ code: coded.code, err: coded.message, failures: this.#failures }, 'plugin process could not be restarted');
      throw coded;
    }
    this.#live = live;
    this.#restarts++;
    this.#logger.info({ pid: live.pid, after_failures: this.#failures }, 'plugin process restarted');
    return live;
  }

  /** A lifecycle call on `live`; returns the plugin's code. */
  async #lifecycleOn(live: Live, op: OpCode, what: string, config?: string): Promise<number> {
    let length = 0;
    if (config !== undefined) {
      const text = Buffer.from(`${config}\0`, 'utf8');
      if (text.length > live.channel.request.length) throw hostError('SMTP_E_PLUGIN_CONFIG', `plugin "${this.#name()}": the config (${text.length} bytes) is larger than the ${live.channel.request.length}-byte channel to its process`);
      text.copy(live.channel.request);
      length = text.length;
    }
    await this.#exchange(live, op, 0, length, this.#lifecycleTimeoutMs, what);
    if (live.channel.fault !== Fault.NONE) throw hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.#name()}": its process refused ${what} (fault ${live.channel.fault})`);
    return live.channel.code;
  }

  /** Runs `run` after every call queued before it. */
  #serial<T>(run: () => Promise<T>): Promise<T> {
    this.#inFlight++;
    const result = this.#queue.then(run);
    const settled = result.finally(() => {
      this.#inFlight--;
    });
    this.#queue = settled.catch(() => undefined);
    return settled;
  }

  init(configJson: string): Promise<number> {
    return this.#serial(async () => {
      const code = await this.#lifecycleOn(await this.#current(), Op.INIT, 'init', configJson);
      if (code === 0) this.#config = configJson;
      return code;
    });
  }

  enable(): Promise<number> {
    return this.#serial(async () => {
      const code = await this.#lifecycleOn(await this.#current(), Op.ENABLE, 'enable');
      if (code === 0) this.#enabled = true;
      return code;
    });
  }

  disable(): Promise<number> {
    return this.#serial(async () => {
      this.#enabled = false;
      // No child (it died): a restart will simply not enable it.
      if (this.#live === null) return 0;
      return this.#lifecycleOn(this.#live, Op.DISABLE, 'disable');
    });
  }

  deinit(): Promise<void> {
    return this.#serial(async () => {
      this.#config = null;
      if (this.#live === null) return;
      await this.#lifecycleOn(this.#live, Op.DEINIT, 'deinit');
    });
  }

  unload(): Promise<void> {
    return this.#serial(async () => {
      this.#unloaded = true;
      const live = this.#live;
      if (live === null) return;
      this.#discard(live);
      await within(live.exited, EXIT_STATUS_WAIT_MS);
    });
  }

  executeHook(context: HookContext): number | Promise<number> {
    const live = this.#live;
    if (live === null || this.#inFlight > 0) return this.#serial(() => this.#hookQueued(context));
    // The fast path: nothing queued, the child is up. Spin briefly for it in this thread.
    const length = this.#write(live, context);
    if (live.channel.call(Op.HOOK, context.hookValue, length, SYNC_SPIN_NS) === Outcome.DONE) return this.#finish(live, context, length);
    return this.#serial(async () => {
      const outcome = await this.#wait(live, this.#hookTimeoutMs);
      if (outcome !== Outcome.DONE) throw await this.#lost(live, outcome, context.hook, this.#hookTimeoutMs);
      return this.#finish(live, context, length);
    });
  }

  async #hookQueued(context: HookContext): Promise<number> {
    const live = await this.#current();
    const length = this.#write(live, context);
    await this.#exchange(live, Op.HOOK, context.hookValue, length, this.#hookTimeoutMs, context.hook);
    return this.#finish(live, context, length);
  }

  /** Copies the event's encoding, then what was set since, into the request area; returns the bytes. */
  #write(live: Live, context: HookContext): number {
    const who = `plugin "${this.metadata.name}"`;
    const { changes, bytes } = wireSize(context, this.#bounds, who);
    const { request } = live.channel;
    if (bytes > request.length) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: the hook context takes ${bytes} bytes, more than the ${request.length}-byte channel to its process`);
    copyWire(context, changes, request);
    return bytes;
  }

  /** Reads the child's answer to a hook: its changes and cancel flag land in `context`; returns the code. */
  #finish(live: Live, context: HookContext, length: number): number {
    const { channel } = live;
    const who = `plugin "${this.metadata.name}"`;
    const fault = channel.fault;
    if (fault === Fault.CONTEXT_REFUSED) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: its process refused the hook context (status ${channel.code})`);
    if (fault === Fault.CHANGES_TOO_LARGE) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: the metadata it set (${-channel.replyLen} bytes) does not fit the ${channel.reply.length}-byte channel`);
    if (fault !== Fault.NONE) throw hostError('SMTP_E_PLUGIN_STATE', `${who}: its process refused the hook call (fault ${fault})`);
    const replyLen = channel.replyLen;
    // Copied out first: the reply area is memory the child (a plugin not trusted) can still write while it is read.
    if (replyLen > 0) {
      const copy = scratchBuffer(replyLen);
      channel.reply.copy(copy, 0, 0, replyLen);
      applyChanges(copy, 0, replyLen, context, this.#bounds, 'SMTP_E_METADATA_LIMIT', who);
    }
    if ((channel.status & STATUS_CANCEL) !== 0) context.cancel = true;
    if (channel.countersDenied()) this.#onDenied.counters();
    if (length > RELEASE_ABOVE_BYTES || replyLen > RELEASE_ABOVE_BYTES) channel.releaseBeyond(RELEASE_ABOVE_BYTES);
    this.#failures = 0;
    const now = Date.now();
    if (now - live.cpuArmedAt >= CPU_REARM_INTERVAL_MS) this.#armCpu(live, now);
    return channel.code;
  }
}

/**
 * Loads a native plugin into a child process of its own: the child copies
 * and dlopens the library, checks its ABI marker and exports, and reports
 * the metadata; any failure is the coded error the in-process backend
 * would raise, and leaves no process behind.
 */
export async function loadProcessPlugin(path: string, load: { readonly options?: PluginOptions; readonly logger?: Logger } = {}): Promise<Plugin> {
  try {
    accessSync(path, constants.R_OK);
  } catch (cause) {
    throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${path}: no such readable file`, cause);
  }
  const plugin = new ProcessPlugin(path, load.options ?? DEFAULT_PLUGIN_OPTIONS, load.logger ?? silentLogger());
  await plugin.open();
  return plugin;
}
