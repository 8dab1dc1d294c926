import { accessSync, constants, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import koffi from 'koffi';
import { formatAbiVersion, isAbiCompatible, ABI_VERSION, ABI_VERSION_1_1 } from '../abi/hooks.js';
import { AbiVersionProto, INTERFACE_FIELDS, InitProto, IntProto, PluginInterfaceStruct, PluginMetadataStruct, PluginMetadataV10Struct, PointerProto, VoidProto } from '../abi/layout.js';
import { hostError } from '../errors.js';
import type { HookContext } from '../plugin/hook-context.js';
import { METADATA_LIMITS, validateMetadata, type RawMetadata } from '../plugin/metadata.js';
import type { Plugin, PluginMetadata, SharedNativeHook } from '../plugin/plugin.js';
import { silentLogger, type Logger } from '../log.js';
import type { MetadataLimits } from '../plugin/hook-context.js';
import { DEFAULT_PLUGIN_OPTIONS, type PluginOptions } from '../plugin/options.js';
import { PluginFlag } from '../abi/hooks.js';
import { denialLog, type DenialLog } from '../plugin/denied-log.js';
import { NativeContextSlot, boundedStrlen, callNativeHook, hostAllocator, type ContextGrants, type NativePointer } from '../runtime/host-runtime.js';
import { checkLibraryFile } from './library-file.js';
import { lateCallsAtLimit, LATE_CALLS_MAX } from './pool-calls.js';
import { BlockingCalls } from './blocking-calls.js';

type Library = ReturnType<typeof koffi.load>;
type InterfacePointers = Record<(typeof INTERFACE_FIELDS)[number], NativePointer>;

const INDIVIDUAL_EXPORTS: Record<(typeof INTERFACE_FIELDS)[number], string> = {
  init: 'smtp_plugin_init',
  deinit: 'smtp_plugin_deinit',
  get_metadata: 'smtp_plugin_get_metadata',
  execute_hook: 'smtp_plugin_execute_hook',
  enable: 'smtp_plugin_enable',
  disable: 'smtp_plugin_disable',
};

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function isNull(pointer: unknown): boolean {
  return pointer === null || pointer === undefined || pointer === 0n;
}

function symbolAddress(lib: Library, name: string): NativePointer | null {
  try {
    const address = lib.symbol(name) as NativePointer | null;
    return isNull(address) ? null : address;
  } catch {
    return null;
  }
}

/** Reads a NUL-terminated UTF-8 string of at most `maxBytes` from plugin memory. */
function readCString(pointer: unknown, maxBytes: number, describe: () => string): string | null {
  if (isNull(pointer)) return null;
  const address = pointer as NativePointer;
  const length = boundedStrlen(address, maxBytes);
  if (length < 0) throw hostError('SMTP_E_PLUGIN_METADATA', `${describe()} is longer than ${maxBytes} bytes or not NUL-terminated`);
  if (length === 0) return '';
  const bytes = new Uint8Array(koffi.view(address, length).slice(0));
  try {
    return utf8Strict.decode(bytes);
  } catch {
    throw hostError('SMTP_E_PLUGIN_METADATA', `${describe()} is not valid UTF-8`);
  }
}

function readMetadata(pointer: unknown, path: string, abiVersion: number): PluginMetadata {
  if (isNull(pointer)) throw hostError('SMTP_E_PLUGIN_METADATA', `${path}: get_metadata returned NULL`);
  // A 1.0 plugin's struct ends before `flags`: never read past it.
  const struct = koffi.decode(pointer, abiVersion >= ABI_VERSION_1_1 ? PluginMetadataStruct : PluginMetadataV10Struct) as Record<string, unknown>;
  const field = (name: string, max: number = METADATA_LIMITS.fieldBytesMax): string | null =>
    readCString(struct[name], max, () => `${path}: metadata ${name}`);
  const dependencies: string[] = [];
  if (!isNull(struct.dependencies)) {
    const pointerSize = koffi.sizeof('void *');
    for (let index = 0; ; index++) {
      if (index > METADATA_LIMITS.dependenciesMax) {
        throw hostError('SMTP_E_PLUGIN_METADATA', `${path}: metadata dependencies has more than ${METADATA_LIMITS.dependenciesMax} entries or no NULL terminator`);
      }
      const entry = koffi.decode(struct.dependencies, index * pointerSize, 'void *');
      if (isNull(entry)) break;
      dependencies.push(readCString(entry, METADATA_LIMITS.fieldBytesMax, () => `${path}: metadata dependencies[${index}]`)!);
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
    handledHooks: BigInt(struct.handled_hooks as number | bigint),
    flags: struct.flags === undefined ? 0n : BigInt(struct.flags as number | bigint),
  };
  return validateMetadata(raw, path);
}

function resolveInterface(lib: Library, path: string): InterfacePointers {
  const entry = symbolAddress(lib, 'smtp_plugin_get_interface');
  if (entry !== null) {
    const getInterface = koffi.decode(entry, PointerProto) as () => unknown;
    const table = getInterface();
    if (isNull(table)) throw hostError('SMTP_E_PLUGIN_MISSING_EXPORT', `${path}: smtp_plugin_get_interface returned NULL`);
    const fields = koffi.decode(table, PluginInterfaceStruct) as Record<string, unknown>;
    const missing = INTERFACE_FIELDS.filter((name) => isNull(fields[name]));
    if (missing.length > 0) {
      throw hostError('SMTP_E_PLUGIN_MISSING_EXPORT', `${path}: smtp_plugin_get_interface has NULL ${missing.join(', ')}`);
    }
    return fields as InterfacePointers;
  }
  const pointers: Partial<InterfacePointers> = {};
  const missing: string[] = [];
  for (const name of INTERFACE_FIELDS) {
    const address = symbolAddress(lib, INDIVIDUAL_EXPORTS[name]);
    if (address === null) missing.push(INDIVIDUAL_EXPORTS[name]);
    else pointers[name] = address;
  }
  if (missing.length > 0) {
    throw hostError('SMTP_E_PLUGIN_MISSING_EXPORT', `${path}: no smtp_plugin_get_interface, and the individual exports ${missing.join(', ')} are missing`);
  }
  return pointers as InterfacePointers;
}

class NativePlugin implements Plugin {
  readonly kind = 'native' as const;
  readonly backend = 'native' as const;
  readonly path: string;
  readonly abiVersion: number;
  readonly metadata: PluginMetadata;
  /** Hooks run on koffi's thread pool, one at a time (in batches: src/native/blocking-calls.ts), and executeHook returns a promise. */
  readonly blocking: boolean;
  /** Its allow_connect grants and, with allow_counters, the counters under its name. */
  readonly #grants: ContextGrants;
  readonly #logger: Logger;
  readonly #deniedListener: DenialLog;
  /** This plugin's own context when it has grants and runs on the event loop, by metadata limits. */
  readonly #slots = new Map<MetadataLimits, NativeContextSlot>();
  readonly #hookTimeoutMs: number;
  /** Its calls on the pool, when it blocks. */
  readonly #blockingCalls: BlockingCalls | null;
  /** Lifecycle calls that came while a hook ran on the pool: run after it, in order. */
  #deferred: { readonly what: 'disable' | 'deinit' | 'unload'; readonly run: () => void }[] = [];
  #lib: Library | null;
  #executeHook: NativePointer;
  #init: (allocator: NativePointer, config: string) => number;
  #deinit: () => void;
  #enable: () => number;
  #disable: () => number;

  constructor(path: string, lib: Library, abiVersion: number, pointers: InterfacePointers, options: PluginOptions, logger: Logger) {
    this.path = path;
    this.#lib = lib;
    this.#hookTimeoutMs = options.limits.hookTimeoutMs;
    this.#logger = logger;
    this.#deniedListener = denialLog(logger);
    this.abiVersion = abiVersion;
    this.#executeHook = pointers.execute_hook;
    this.#init = koffi.decode(pointers.init, InitProto) as (allocator: NativePointer, config: string) => number;
    this.#deinit = koffi.decode(pointers.deinit, VoidProto) as () => void;
    this.#enable = koffi.decode(pointers.enable, IntProto) as () => number;
    this.#disable = koffi.decode(pointers.disable, IntProto) as () => number;
    const getMetadata = koffi.decode(pointers.get_metadata, PointerProto) as () => unknown;
    this.metadata = readMetadata(getMetadata(), path, abiVersion);
    this.#grants = Object.freeze({ connect: options.allowConnect, counters: options.allowCounters ? this.metadata.name : null });
    this.blocking = options.blocking ?? (this.metadata.flags & PluginFlag.BLOCKING) !== 0n;
    this.#blockingCalls = this.blocking
      ? new BlockingCalls({ plugin: this.metadata.name, executeHook: this.#executeHook, hookTimeoutMs: this.#hookTimeoutMs, grants: this.#grants, onDenied: this.#deniedListener, logger, onIdle: () => this.#drain() })
      : null;
  }

  /** Hook calls waiting or running on the pool. */
  get #inFlight(): number {
    return this.#blockingCalls?.inFlight ?? 0;
  }

  init(configJson: string): number {
    return this.#init(hostAllocator(), configJson);
  }

  enable(): number {
    // Re-enabled before a deferred disable ran: the plugin never saw itself
    // disabled, so dropping that disable is the whole answer (and calling in
    // now would enter the plugin while its hook runs on the pool).
    const pending = this.#deferred.findIndex((each) => each.what === 'disable');
    if (pending >= 0 && this.#deferred.length === pending + 1) {
      this.#deferred.splice(pending, 1);
      return 0;
    }
    if (this.#inFlight > 0) {
      throw hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.metadata.name}": cannot enable while a hook call runs on another thread`);
    }
    return this.#enable();
  }

  /**
   * While a hook runs on the pool the plugin must not be entered from this
   * thread too (abi/smtp_plugin.h), so disable, deinit and unload then wait
   * for it: disable reports success now and its failure, if any, is logged.
   */
  disable(): number {
    if (this.#inFlight === 0) return this.#disable();
    this.#defer('disable', () => {
      const code = this.#disable();
      if (code !== 0) this.#logger.error({ code }, 'plugin disable failed (run after its last hook call)');
    });
    return 0;
  }

  #defer(what: 'disable' | 'deinit' | 'unload', run: () => void): void {
    this.#logger.debug({ what }, 'waiting for the hook call in flight');
    this.#deferred.push({ what, run });
  }


  #slot(limits: MetadataLimits): NativeContextSlot {
    let slot = this.#slots.get(limits);
    if (!slot) {
      slot = new NativeContextSlot(limits, this.#grants, this.#deniedListener);
      this.#slots.set(limits, slot);
    }
    return slot;
  }

  /** Plugin.sharedNativeHook: set when this plugin has no grants and does not block (both fixed at load). */
  get sharedNativeHook(): SharedNativeHook | null {
    if (this.#blockingCalls !== null || this.#grants.connect.length > 0 || this.#grants.counters !== null) return null;
    return (this.#sharedNativeHook ??= Object.freeze({ executeHook: this.#executeHook, onDenied: this.#deniedListener }));
  }

  #sharedNativeHook: SharedNativeHook | undefined;

  executeHook(context: HookContext): number | Promise<number> {
    const blockingCalls = this.#blockingCalls;
    if (blockingCalls === null) {
      // Without grants, the context shared by every such plugin serves it (a counter call there is refused).
      const shared = this.#grants.connect.length === 0 && this.#grants.counters === null;
      return shared ? callNativeHook(this.#executeHook, context, this.#deniedListener) : this.#slot(context.limits).call(this.#executeHook, context, this.#deniedListener);
    }
    const refused = this.#refusal(blockingCalls);
    if (refused !== null) return Promise.reject(refused);
    return blockingCalls.call(context);
  }

  /** Why a call must fail at once, without taking a thread: a call of this plugin is late, or late calls hold every thread they may. */
  #refusal(blockingCalls: BlockingCalls): Error | null {
    const running = blockingCalls.running;
    if (running?.late === true) {
      return hostError('SMTP_E_PLUGIN_DEADLINE', `plugin "${this.metadata.name}": its ${running.hook} call ran past its ${this.#hookTimeoutMs} ms deadline and has not returned after ${Math.round(performance.now() - running.startedMs)} ms; calls fail at once until it does`);
    }
    if (lateCallsAtLimit()) {
      return hostError('SMTP_E_PLUGIN_DEADLINE', `plugin "${this.metadata.name}": ${LATE_CALLS_MAX} native hook calls are stuck past their deadlines, as many pool threads as may be held (the rest serve file I/O); blocking native calls fail at once until one returns`);
    }
    return null;
  }

  #drain(): void {
    const pending = this.#deferred;
    this.#deferred = [];
    for (const { run } of pending) {
      try {
        run();
      } catch (error) {
        this.#logger.error({ err: String(error) }, 'deferred plugin call failed');
      }
    }
  }

  deinit(): void {
    if (this.#inFlight === 0) this.#deinit();
    else this.#defer('deinit', () => this.#deinit());
  }

  unload(): void {
    const release = (): void => {
      for (const slot of this.#slots.values()) slot.destroy();
      this.#slots.clear();
      this.#blockingCalls?.release();
      this.#lib?.unload();
      this.#lib = null;
    };
    if (this.#inFlight === 0) release();
    else this.#defer('unload', release);
  }
}

/**
 * dlopen from a private copy: dlopen caches by path, so a reload (or a second
 * server in the process) would share the old instance's globals, and a build
 * that rewrites a mapped library would crash the server. Once mapped, the
 * copy's name is not needed: it is removed at once, leaving nothing behind.
 */
function loadPrivateCopy(path: string): Library {
  const dir = mkdtempSync(join(tmpdir(), 'smtp-plugin-'));
  try {
    const copy = join(dir, basename(path));
    copyFileSync(path, copy);
    // The copy is what dlopen maps: a file truncated or half-written (even while it was copied) is refused with a coded error instead of a SIGBUS.
    checkLibraryFile(copy);
    return koffi.load(copy);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Loads a native plugin: dlopen (of a private copy) through koffi, the ABI
 * marker first, then the interface and the metadata. Any failure unloads
 * the library again and throws a coded error naming the file.
 */
export function loadNativePlugin(path: string, load: { readonly options?: PluginOptions; readonly logger?: Logger } = {}): Plugin {
  try {
    accessSync(path, constants.R_OK);
  } catch (cause) {
    throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${path}: no such readable file`, cause);
  }
  let lib: Library;
  try {
    lib = loadPrivateCopy(resolve(path));
  } catch (cause) {
    throw hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${path}: not a loadable shared library (${(cause as Error).message})`, cause);
  }
  try {
    const marker = symbolAddress(lib, 'smtp_plugin_abi_version');
    if (marker === null) {
      throw hostError('SMTP_E_PLUGIN_MISSING_EXPORT', `${path}: no smtp_plugin_abi_version export (is it built against abi/smtp_plugin.h?)`);
    }
    const abiVersion = (koffi.decode(marker, AbiVersionProto) as () => number)();
    if (!isAbiCompatible(abiVersion)) {
      throw hostError('SMTP_E_PLUGIN_ABI_VERSION', `${path}: built for ABI ${formatAbiVersion(abiVersion)}, this host runs ABI ${formatAbiVersion(ABI_VERSION)}`);
    }
    return new NativePlugin(path, lib, abiVersion, resolveInterface(lib, path), load.options ?? DEFAULT_PLUGIN_OPTIONS, load.logger ?? silentLogger());
  } catch (error) {
    lib.unload();
    throw error;
  }
}
