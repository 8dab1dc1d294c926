import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { ABI_VERSION, formatAbiVersion, isAbiCompatible } from '../abi/hooks.js';
import { WASM32_METADATA, WASM32_POINTER_BYTES, WASM_CONTEXT_STATUS, WASM_GUEST_EXPORTS, WASM_PLUGIN_EXPORTS, WASM_TAIL_IMPORT_NAME, wasmMetadataSize } from '../abi/wasm-layout.js';
import { HostError, hostError, isHostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { METADATA_LIMITS, validateMetadata, type RawMetadata } from '../plugin/metadata.js';
import { applyChanges, copyWire, wireSize, type WireBounds } from '../plugin/metadata-wire.js';
import { DEFAULT_PLUGIN_OPTIONS, type PluginOptions } from '../plugin/options.js';
import type { Plugin, PluginMetadata, PluginRuntimeStats } from '../plugin/plugin.js';
import { BUDGET_EXPORT, CHECK_IMPORT_MODULE, CHECK_IMPORT_NAME, WasmInstrumentError, instrument } from '../sandbox/instrument.js';
import { BUDGET_ITERATIONS, DeadlineExceeded, classifySandboxError } from '../sandbox/sandbox-errors.js';
import { NET_IMPORT_MODULE, NET_IMPORT_NAMES, deniedNet, netImports, type GuestNet } from '../sandbox/guest-net.js';
import { COUNTER_IMPORT_NAMES, counterImports, deniedCounters, type GuestCounters } from '../sandbox/guest-counters.js';
import { WASI_MODULE, WASI_PREVIEW1_FUNCTIONS, createWasi, type WasiHost } from '../sandbox/wasi.js';

const PAGE_BYTES = 65_536;
/** Up to this size the host's buffers in guest memory grow by doubling; beyond, exactly to fit. */
const SCRATCH_DOUBLING_BYTES_MAX = 1024 * 1024;
/** A message-sized input buffer is given back when the next context needs less than this share of it. */
const INPUT_SHRINK_FRACTION = 4;
const WASM_MAGIC = [0x00, 0x61, 0x73, 0x6d];

/** What a module must export: the plugin's six functions, the marker, and the guest half of the binding. */
const PLUGIN_EXPORTS = WASM_PLUGIN_EXPORTS;
const GUEST_EXPORTS = WASM_GUEST_EXPORTS;

interface GuestExports {
  memory?: WebAssembly.Memory;
  smtp_plugin_abi_version(): number;
  smtp_plugin_init(allocator: number, config: number): number;
  smtp_plugin_deinit(): void;
  smtp_plugin_get_metadata(): number;
  smtp_plugin_execute_hook(context: number): number;
  smtp_plugin_enable(): number;
  smtp_plugin_disable(): number;
  smtp_wasm_alloc(len: number): number;
  smtp_wasm_free(ptr: number, len: number): void;
  smtp_wasm_host_allocator(): number;
  smtp_wasm_context_create(keyBytesMax: number, valueBytesMax: number, keysMax: number): number;
  smtp_wasm_context_load(context: number, hook: number, buf: number, len: number): number;
  /** Optional (guest halves before it lack it): the load of a text the host checked, given its entry count. */
  smtp_wasm_context_load_checked?(context: number, hook: number, buf: number, len: number, entries: number): number;
  /** Optional (ABI 1.3): the checked load without the tail's bytes, which the guest copies in through the context_tail import when read. */
  smtp_wasm_context_load_lazy?(context: number, hook: number, buf: number, len: number, entries: number, tailAt: number, tailLen: number): number;
  smtp_wasm_context_status(context: number): number;
  smtp_wasm_take_changes(context: number, out: number, cap: number): number;
}

/** One live instance of the module and what the host keeps in its memory. */
interface Live {
  readonly exports: GuestExports;
  readonly memory: WebAssembly.Memory;
  readonly budget: WebAssembly.Global;
  context: number;
  /** The host's buffer for config text and the changes copied out. */
  scratch: number;
  scratchBytes: number;
  /** The loaded context's bytes: the guest's entries point into them, so they stay unchanged until the next load. */
  input: number;
  inputBytes: number;
  /** How much of the input buffer the loaded context takes: the changes are copied out behind it when they fit. */
  loadedBytes: number;
  loadedId: number;
  loadedVersion: number;
  /** The tail a lazy load left out (the message body), during the call only: what the context_tail import copies in; null when the load had none, or once copied. */
  tail: Buffer | null;
  /** The whole memory as a plain Uint8Array, made again once growth detaches it (its length then reads 0). */
  view: Uint8Array;
}

function fail(code: Parameters<typeof hostError>[0], message: string, cause?: unknown): never {
  throw hostError(code, message, cause);
}

/** The "smtp_host" functions a module may import: the clock, the network, the counters and the lazy load's tail. */
const HOST_IMPORT_NAMES: readonly string[] = [...NET_IMPORT_NAMES, ...COUNTER_IMPORT_NAMES, WASM_TAIL_IMPORT_NAME];

/** Validates imports: WASI preview1 functions, env.memory, the host's clock, network and counters, and its own deadline check only. */
function checkImports(module: WebAssembly.Module, path: string): void {
  for (const entry of WebAssembly.Module.imports(module)) {
    const ok =
      (entry.module === WASI_MODULE && entry.kind === 'function' && WASI_PREVIEW1_FUNCTIONS.includes(entry.name)) ||
      (entry.module === 'env' && entry.name === 'memory' && entry.kind === 'memory') ||
      (entry.module === NET_IMPORT_MODULE && entry.kind === 'function' && HOST_IMPORT_NAMES.includes(entry.name)) ||
      (entry.module === CHECK_IMPORT_MODULE && entry.name === CHECK_IMPORT_NAME && entry.kind === 'function');
    if (!ok) fail('SMTP_E_WASM_IMPORT', `${path}: imports ${entry.kind} "${entry.module}.${entry.name}", which the sandbox does not grant`);
  }
  const exported = new Set(WebAssembly.Module.exports(module).map((e) => e.name));
  const missing = [...PLUGIN_EXPORTS, ...GUEST_EXPORTS].filter((name) => !exported.has(name));
  if (missing.length > 0) {
    const guest = missing.some((name) => name.startsWith('smtp_wasm_'));
    fail('SMTP_E_PLUGIN_MISSING_EXPORT', `${path}: missing exports ${missing.join(', ')}${guest ? ' (build it with "smtp-server plugin build --target wasm", which links the guest half of the binding)' : ''}`);
  }
}

/** Compiles (once per file content and memory limit) the instrumented module. */
function compile(path: string, options: PluginOptions): { module: WebAssembly.Module; importsMemory: boolean; initialPages: number } {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (cause) {
    fail('SMTP_E_PLUGIN_NOT_FOUND', `${path}: no such readable file`, cause);
  }
  if (bytes.length < 8 || WASM_MAGIC.some((byte, i) => bytes[i] !== byte)) fail('SMTP_E_WASM_INVALID', `${path}: not a WebAssembly module (no \\0asm header)`);
  const memoryPagesMax = Math.floor((options.limits.memoryMb * 1024 * 1024) / PAGE_BYTES);
  let result;
  try {
    result = instrument(bytes, { memoryPagesMax, budgetInitial: BUDGET_ITERATIONS });
  } catch (error) {
    if (error instanceof WasmInstrumentError) {
      const code = error.reason === 'memory' ? 'SMTP_E_WASM_MEMORY' : error.reason === 'unsupported' ? 'SMTP_E_WASM_UNSUPPORTED' : 'SMTP_E_WASM_INVALID';
      fail(code, `${path}: ${error.message}`, error);
    }
    throw error;
  }
  let module: WebAssembly.Module;
  try {
    module = new WebAssembly.Module(result.bytes);
  } catch (cause) {
    fail('SMTP_E_WASM_INVALID', `${path}: does not compile (${(cause as Error).message})`, cause);
  }
  checkImports(module, path);
  return { module, importsMemory: result.importsMemory, initialPages: result.importedMemoryPagesMin ?? 1 };
}

class WasmPlugin implements Plugin {
  readonly kind = 'wasm' as const;
  readonly backend = 'wasm' as const;
  readonly path: string;
  readonly abiVersion: number;
  readonly metadata: PluginMetadata;
  readonly #module: WebAssembly.Module;
  readonly #options: PluginOptions;
  readonly #bounds: WireBounds;
  readonly #logger: Logger;
  readonly #net: GuestNet;
  readonly #counters: GuestCounters;
  readonly #importsMemory: boolean;
  readonly #initialPages: number;
  #wasi!: WasiHost;
  #live: Live | null = null;
  #restarts = 0;

  runtimeStats(): PluginRuntimeStats {
    return { restarts: this.#restarts, memoryBytes: this.#live === null ? 0 : this.#live.memory.buffer.byteLength };
  }
  /** When the current call's time is up (performance.now() ms), once #clock has started it. */
  #deadline = 0;
  /** Bumped by #arm: which call #deadline belongs to is #deadlineCall. */
  #call = 0;
  #deadlineCall = -1;
  /** What a fresh instance must be brought back to after a failure. */
  #config: string | null = null;
  #enabled = false;
  #broken: HostError | null = null;

  constructor(path: string, options: PluginOptions, logger: Logger, net: GuestNet, counters: GuestCounters) {
    this.path = path;
    this.#options = options;
    this.#logger = logger;
    this.#net = net;
    this.#counters = counters;
    const { limits } = options;
    this.#bounds = { keyBytesMax: limits.metadataKeyBytesMax, valueBytesMax: limits.metadataValueBytesMax, keysMax: limits.metadataKeysMax };
    const compiled = compile(path, options);
    this.#module = compiled.module;
    this.#importsMemory = compiled.importsMemory;
    this.#initialPages = compiled.initialPages;
    const live = this.#instantiate();
    const abiVersion = this.#guard('smtp_plugin_abi_version', () => live.exports.smtp_plugin_abi_version() >>> 0);
    if (!isAbiCompatible(abiVersion)) {
      fail('SMTP_E_PLUGIN_ABI_VERSION', `${path}: built for ABI ${formatAbiVersion(abiVersion)}, this host runs ABI ${formatAbiVersion(ABI_VERSION)}`);
    }
    this.abiVersion = abiVersion;
    this.metadata = this.#readMetadata(live, this.#guard('get_metadata', () => live.exports.smtp_plugin_get_metadata() >>> 0), abiVersion);
  }

  #instantiate(): Live {
    const memoryLimitPages = Math.floor((this.#options.limits.memoryMb * 1024 * 1024) / PAGE_BYTES);
    const imported = this.#importsMemory ? new WebAssembly.Memory({ initial: this.#initialPages, maximum: memoryLimitPages }) : undefined;
    let memory: WebAssembly.Memory | undefined = imported;
    let budget: WebAssembly.Global | undefined;
    this.#wasi = createWasi(() => memory!, this.#logger);
    // Until the instance exists (a start function running) the budget cannot
    // be refilled, so the check runs on every iteration: slower, still bounded.
    const budgetExhausted = (): void => {
      if (this.#clock() > this.#deadline) throw new DeadlineExceeded();
      if (budget) budget.value = BUDGET_ITERATIONS;
    };
    const remainingMs = (): number => {
      const now = this.#clock();
      return this.#deadline - now;
    };
    let live: Live | undefined;
    const imports: WebAssembly.Imports = {
      [WASI_MODULE]: this.#wasi.imports as WebAssembly.ModuleImports,
      [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: budgetExhausted },
      [NET_IMPORT_MODULE]: {
        ...netImports(() => memory!, this.#net, remainingMs),
        // The counters are the plugin's by name: none before its metadata is read.
        ...counterImports(() => memory!, this.#counters, () => this.metadata?.name, remainingMs),
        [WASM_TAIL_IMPORT_NAME]: (dst: number, len: number): number => this.#copyTail(live, dst >>> 0, len >>> 0),
      },
      ...(imported ? { env: { memory: imported } } : {}),
    };
    let instance: WebAssembly.Instance;
    this.#arm();
    try {
      instance = new WebAssembly.Instance(this.#module, imports);
    } catch (error) {
      throw this.#classify(error, 'start');
    }
    const exports = instance.exports as unknown as GuestExports & Record<string, unknown>;
    memory = imported ?? exports.memory;
    if (!(memory instanceof WebAssembly.Memory)) fail('SMTP_E_PLUGIN_MISSING_EXPORT', `${this.path}: exports no memory and imports none`);
    budget = exports[BUDGET_EXPORT] as WebAssembly.Global;
    live = {
      exports,
      memory,
      budget,
      context: 0,
      scratch: 0,
      scratchBytes: 0,
      input: 0,
      inputBytes: 0,
      loadedBytes: 0,
      loadedId: 0,
      loadedVersion: -1,
      tail: null,
      view: new Uint8Array(memory.buffer),
    };
    const { limits } = this.#options;
    live.context = this.#guard('context_create', () => exports.smtp_wasm_context_create(limits.metadataKeyBytesMax, limits.metadataValueBytesMax, limits.metadataKeysMax) >>> 0);
    if (live.context === 0) fail('SMTP_E_WASM_MEMORY', `${this.path}: no memory for a hook context within ${limits.memoryMb} MiB`);
    this.#live = live;
    return live;
  }

  /**
   * Starts a guest call: its deadline starts at its first clock read
   * (#clock), not here. Reading the clock and refilling the budget global on
   * every call cost about 80 ns, a sixth of a sandboxed call's host side; a
   * call that neither exhausts a budget nor waits on the host never needs
   * them. The budget left by the previous call may run out early in this
   * one: that only starts this call's deadline sooner.
   */
  #arm(): void {
    this.#call++;
  }

  /** The clock (performance.now() ms); the first read of a call starts its deadline (hook_timeout_ms from now). */
  #clock(): number {
    const now = performance.now();
    if (this.#deadlineCall !== this.#call) {
      this.#deadlineCall = this.#call;
      this.#deadline = now + this.#options.limits.hookTimeoutMs;
    }
    return now;
  }

  #classify(error: unknown, phase: string): HostError {
    return classifySandboxError(error, `plugin "${this.metadata?.name ?? this.path}" ${phase}`, this.#options.limits.hookTimeoutMs);
  }

  /** Runs guest code under the deadline; a failure is classified, and the instance replaced. */
  #guard<T>(phase: string, run: () => T): T {
    this.#arm();
    try {
      return run();
    } catch (error) {
      throw this.#failed(error, phase);
    }
  }

  /** A guest call failed: the coded error, with the instance replaced unless only a metadata limit was hit. */
  #failed(error: unknown, phase: string): HostError {
    const coded = this.#classify(error, phase);
    this.#wasi.flush();
    if (coded.code !== 'SMTP_E_METADATA_LIMIT') this.#replace(coded);
    return coded;
  }

  /** Drops a failed instance; brings a fresh one back to the old one's state. */
  #replace(cause: HostError): void {
    this.#live = null;
    // The new instance knows none of the old one's connections.
    this.#net.closeAll();
    if (this.#config === null) return; // not initialized yet: the failure is the load's
    this.#logger.warn({ code: cause.code, err: cause.message }, 'sandboxed plugin instance replaced; its in-memory state is lost');
    try {
      const live = this.#instantiate();
      this.#initialize(live, this.#config);
      if (this.#enabled) this.#guard('enable', () => live.exports.smtp_plugin_enable());
      this.#restarts++;
    } catch (error) {
      this.#broken = isHostError(error) ? error : hostError('SMTP_E_WASM_TRAP', String(error), error);
      this.#live = null;
      this.#logger.error({ code: this.#broken.code, err: this.#broken.message }, 'sandboxed plugin could not be restarted');
    }
  }

  #current(): Live {
    if (this.#live) return this.#live;
    if (this.#broken) throw this.#broken;
    return this.#instantiate();
  }

  /** memory[ptr, ptr + len), checked against the memory's size (the guest hands back pointers and lengths). */
  #memoryBytes(live: Live, ptr: number, len: number, what: string): Uint8Array {
    const view = this.#view(live);
    if (!Number.isInteger(ptr) || ptr < 0 || len < 0 || ptr + len > view.length) this.#outside(live, ptr, len, what);
    return view.subarray(ptr, ptr + len);
  }

  /**
   * The guest's memory as one Uint8Array, kept between calls: a hook call copies
   * in and out through it instead of building a view per copy. Growth
   * detaches the old buffer, whose views then read as empty.
   */
  #view(live: Live): Uint8Array {
    let view = live.view;
    if (view.length === 0) view = live.view = new Uint8Array(live.memory.buffer);
    return view;
  }

  #outside(live: Live, ptr: number, len: number, what: string): never {
    throw hostError('SMTP_E_WASM_BOUNDS', `plugin "${this.metadata?.name ?? this.path}": ${what} at ${ptr}+${len} is outside its ${this.#view(live).length}-byte memory`);
  }

  #cString(live: Live, ptr: number, max: number, what: string): string | null {
    if (ptr === 0) return null;
    const memory = new Uint8Array(live.memory.buffer);
    if (ptr >= memory.length) fail('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata ${what} points outside the module's memory`);
    const end = memory.subarray(ptr, Math.min(memory.length, ptr + max + 1)).indexOf(0);
    if (end < 0) fail('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata ${what} is longer than ${max} bytes or not NUL-terminated`);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(memory.subarray(ptr, ptr + end));
    } catch {
      fail('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata ${what} is not valid UTF-8`);
    }
  }

  /** smtp_plugin_metadata on wasm32: eight 4-byte pointers, then a u64 (and from ABI 1.1 the u64 flags). */
  #readMetadata(live: Live, ptr: number, abiVersion: number): PluginMetadata {
    if (ptr === 0) fail('SMTP_E_PLUGIN_METADATA', `${this.path}: get_metadata returned NULL`);
    const size = wasmMetadataSize(abiVersion);
    const { offsets } = WASM32_METADATA;
    const struct = this.#memoryBytes(live, ptr, size, 'metadata');
    const view = new DataView(struct.buffer, struct.byteOffset, size);
    const pointer = (field: keyof typeof offsets): number => view.getUint32(offsets[field], true);
    const field = (name: keyof typeof offsets, max: number = METADATA_LIMITS.fieldBytesMax): string | null => this.#cString(live, pointer(name), max, name);
    const dependencies: string[] = [];
    const list = pointer('dependencies');
    if (list !== 0) {
      for (let index = 0; ; index++) {
        if (index > METADATA_LIMITS.dependenciesMax) fail('SMTP_E_PLUGIN_METADATA', `${this.path}: metadata dependencies has more than ${METADATA_LIMITS.dependenciesMax} entries or no NULL terminator`);
        const entryBytes = this.#memoryBytes(live, list + index * WASM32_POINTER_BYTES, WASM32_POINTER_BYTES, 'dependencies');
        const entry = new DataView(entryBytes.buffer, entryBytes.byteOffset, WASM32_POINTER_BYTES).getUint32(0, true);
        if (entry === 0) break;
        dependencies.push(this.#cString(live, entry, METADATA_LIMITS.fieldBytesMax, `dependencies[${index}]`)!);
      }
    }
    const raw: RawMetadata = {
      name: field('name'),
      version: field('version'),
      author: field('author'),
      description: field('description', METADATA_LIMITS.descriptionBytesMax),
      license: field('license'),
      dependencies,
      minServerVersion: field('min_server_version'),
      maxServerVersion: field('max_server_version'),
      handledHooks: view.getBigUint64(offsets.handled_hooks, true),
      flags: size > offsets.flags ? view.getBigUint64(offsets.flags, true) : 0n,
    };
    return validateMetadata(raw, this.path);
  }

  /** Ensures the host's scratch buffer in guest memory holds `bytes`. */
  #scratch(live: Live, bytes: number): number {
    if (live.scratchBytes >= bytes && live.scratch !== 0) return live.scratch;
    // Small buffers double (few regrowths); a large one is sized to fit, since
    // doubling a message-sized buffer can need more memory than the limit allows.
    const size = bytes > SCRATCH_DOUBLING_BYTES_MAX ? bytes : Math.max(bytes, live.scratchBytes * 2, 4096);
    this.#releaseScratch(live);
    live.scratch = live.exports.smtp_wasm_alloc(size) >>> 0;
    live.scratchBytes = live.scratch === 0 ? 0 : size;
    if (live.scratch === 0) {
      throw hostError('SMTP_E_METADATA_LIMIT', `plugin "${this.metadata.name}": no room for ${size} bytes of metadata within ${this.#options.limits.memoryMb} MiB`);
    }
    return live.scratch;
  }

  #releaseScratch(live: Live): void {
    if (live.scratch !== 0) live.exports.smtp_wasm_free(live.scratch, live.scratchBytes);
    live.scratch = 0;
    live.scratchBytes = 0;
  }

  #initialize(live: Live, configJson: string): number {
    const config = Buffer.from(`${configJson}\0`, 'utf8');
    return this.#guard('init', () => {
      const ptr = this.#scratch(live, config.length);
      this.#memoryBytes(live, ptr, config.length, 'config buffer').set(config);
      return live.exports.smtp_plugin_init(live.exports.smtp_wasm_host_allocator() >>> 0, ptr);
    });
  }

  init(configJson: string): number {
    const code = this.#initialize(this.#current(), configJson);
    if (code === 0) this.#config = configJson;
    return code;
  }

  enable(): number {
    const live = this.#current();
    const code = this.#guard('enable', () => live.exports.smtp_plugin_enable());
    if (code === 0) this.#enabled = true;
    return code;
  }

  disable(): number {
    const live = this.#current();
    this.#enabled = false;
    return this.#guard('disable', () => live.exports.smtp_plugin_disable());
  }

  /** How errors name this plugin: made once, not at every call (a template string each time). */
  get #who(): string {
    return (this.#whoText ??= `plugin "${this.metadata.name}"`);
  }

  #whoText: string | undefined;

  executeHook(context: HookContext): number {
    const live = this.#current();
    // #guard's work written out: this runs for every plugin of every event, and the closure cost more than the rest of the wrapper.
    this.#arm();
    try {
      const { exports } = live;
      if (live.loadedId !== context.id || live.loadedVersion !== context.version) this.#load(live, context);
      const code = exports.smtp_plugin_execute_hook(live.context);
      const status = exports.smtp_wasm_context_status(live.context) >>> 0;
      if (status >>> WASM_CONTEXT_STATUS.CHANGED_SHIFT !== 0) this.#collect(live, context);
      if ((status & WASM_CONTEXT_STATUS.CANCEL) !== 0) {
        context.cancel = true;
        live.loadedId = 0; // the guest copy now carries cancel
      }
      if (live.tail !== null) {
        // The body was not read: the host's buffer is the call's only (it is reused for the next message), so it is not kept for a later call, which reloads.
        live.tail = null;
        live.loadedId = 0;
      }
      return code;
    } catch (error) {
      throw this.#failed(error, context.hook);
    }
  }

  /**
   * Copies the event's encoded bytes, then every change made since, into the
   * input buffer in guest memory (one contiguous wire text: later entries
   * replace earlier ones), and loads the guest's context from it in place.
   */
  #load(live: Live, context: HookContext): void {
    const { exports } = live;
    const who = this.#who;
    const { changes, bytes: wholeBytes } = wireSize(context, this.#bounds, who);
    // A guest with the lazy load gets the body only if its plugin reads it (most never do).
    const tail = context.base.tail;
    const lazy = tail !== null && exports.smtp_wasm_context_load_lazy !== undefined;
    const bytes = lazy ? wholeBytes - tail.length : wholeBytes;
    const shrink = live.inputBytes > SCRATCH_DOUBLING_BYTES_MAX && bytes < live.inputBytes / INPUT_SHRINK_FRACTION;
    if (bytes > live.inputBytes || live.input === 0 || shrink) {
      // Empty the guest's context first: its entries point into the old buffer.
      exports.smtp_wasm_context_load(live.context, context.hookValue, 0, 0);
      live.loadedId = 0;
      if (live.input !== 0) exports.smtp_wasm_free(live.input, live.inputBytes);
      const size = bytes > SCRATCH_DOUBLING_BYTES_MAX ? bytes : Math.max(bytes, shrink ? 0 : live.inputBytes * 2, 4096);
      live.input = exports.smtp_wasm_alloc(size) >>> 0;
      live.inputBytes = live.input === 0 ? 0 : size;
      if (live.input === 0) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: no room for ${size} bytes of metadata within ${this.#options.limits.memoryMb} MiB`);
    }
    const view = this.#view(live);
    if (live.input + bytes > view.length) this.#outside(live, live.input, bytes, 'metadata buffer');
    // The guest's copy is about to be overwritten: until the load succeeds it is no context's.
    live.loadedId = 0;
    live.tail = null;
    const entries = context.base.count + changes.encoded;
    if (lazy) {
      copyWire(context, changes, view, live.input, false);
      const status = exports.smtp_wasm_context_load_lazy!(live.context, context.hookValue, live.input, bytes, entries, context.base.head.length, tail.length);
      if (status !== 0) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: the sandbox could not hold the metadata (status ${status})`);
      live.tail = tail;
    } else {
      copyWire(context, changes, view, live.input);
      // wireSize checked the text against this context's bounds: a guest that can skip its own walk is told so.
      const checked = exports.smtp_wasm_context_load_checked;
      const status = checked !== undefined
        ? checked(live.context, context.hookValue, live.input, bytes, entries)
        : exports.smtp_wasm_context_load(live.context, context.hookValue, live.input, bytes);
      if (status !== 0) throw hostError('SMTP_E_METADATA_LIMIT', `${who}: the sandbox could not hold the metadata (status ${status})`);
    }
    live.loadedId = context.id;
    live.loadedVersion = context.version;
    live.loadedBytes = bytes;
  }

  /**
   * The context_tail import: copies the tail the current load left out (the
   * message body) to `dst` in guest memory, when the plugin first reads it.
   * Anything but the exact request ends the call: a guest out of memory
   * (`dst` 0) with its memory limit named, a length or place that is not the
   * tail's as a bounds error. Both replace the instance, whose call was cut.
   */
  #copyTail(live: Live | undefined, dst: number, len: number): number {
    const tail = live?.tail ?? null;
    if (live === undefined || tail === null || len !== tail.length) {
      throw hostError('SMTP_E_WASM_BOUNDS', `${this.#who}: asked for a ${len}-byte message body, ${tail === null ? 'with none left out of its load' : `which has ${tail.length} bytes`}`);
    }
    if (dst === 0) throw hostError('SMTP_E_WASM_MEMORY', `${this.#who}: no room for the ${len}-byte message body within ${this.#options.limits.memoryMb} MiB`);
    const view = this.#view(live);
    if (dst + len > view.length) this.#outside(live, dst, len, 'message body');
    view.set(tail, dst);
    // The guest holds its own copy now, for as long as this load.
    live.tail = null;
    return 0;
  }

  /**
   * Copies out what the plugin set. First into the input buffer, behind the
   * loaded context (which stays unchanged): memory this call has touched
   * already. A buffer of its own was one more cold page in each of a chain's
   * instances per event, in a server whose other work leaves them out of
   * the caches. The scratch buffer takes what does not fit there.
   */
  #collect(live: Live, context: HookContext): void {
    const { exports } = live;
    let at = live.input + live.loadedBytes;
    let room = live.input === 0 ? 0 : live.inputBytes - live.loadedBytes;
    // Asked even with no room: the answer is then the bytes needed (cap 0 is valid).
    let written = exports.smtp_wasm_take_changes(live.context, at, room) | 0;
    if (written < 0) {
      // Nothing was taken: the guest reported the bytes it needs.
      this.#scratch(live, -written);
      at = live.scratch;
      room = live.scratchBytes;
      written = exports.smtp_wasm_take_changes(live.context, at, room) | 0;
    }
    if (written < 0 || written > room) {
      throw hostError('SMTP_E_WASM_BOUNDS', `plugin "${this.metadata.name}": take_changes reported ${written} bytes for a ${room}-byte buffer`);
    }
    const view = this.#view(live);
    if (at + written > view.length) this.#outside(live, at, written, 'changed metadata');
    applyChanges(view, at, written, context, this.#bounds, 'SMTP_E_WASM_BOUNDS', this.#who);
    live.loadedVersion = context.version; // the guest copy already holds these changes
  }

  deinit(): void {
    const live = this.#live;
    this.#config = null;
    if (live) this.#guard('deinit', () => live.exports.smtp_plugin_deinit());
    this.#wasi.flush();
  }

  unload(): void {
    this.#wasi.flush();
    this.#net.closeAll();
    this.#live = null;
  }
}

export interface WasmLoadOptions {
  readonly options?: PluginOptions;
  readonly logger?: Logger;
  /** Where the plugin's connections go; by default every connect is refused (no grants in this thread). */
  readonly net?: GuestNet;
  /** The host counters (src/runtime/counters.ts sandboxCounters); by default every call is refused. */
  readonly counters?: GuestCounters;
}

/** Loads a sandboxed plugin from a .wasm file; every failure is a coded error naming the file. */
export function loadWasmPlugin(path: string, load: WasmLoadOptions = {}): Plugin {
  const logger = load.logger ?? silentLogger();
  return new WasmPlugin(path, load.options ?? DEFAULT_PLUGIN_OPTIONS, logger, load.net ?? deniedNet(logger), load.counters ?? deniedCounters(logger));
}
