import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Script } from 'node:vm';
import { ABI_VERSION, HOOK_NAMES, HostStatus } from '../abi/hooks.js';
import { hostError, isHostError, type HostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { validateMetadata } from '../plugin/metadata.js';
import { DEFAULT_PLUGIN_OPTIONS, type PluginOptions } from '../plugin/options.js';
import type { Plugin, PluginMetadata } from '../plugin/plugin.js';
import { BUDGET_EXPORT, CHECK_IMPORT_MODULE, CHECK_IMPORT_NAME, instrument } from '../sandbox/instrument.js';
import { BUDGET_ITERATIONS, DeadlineExceeded, classifySandboxError } from '../sandbox/sandbox-errors.js';
import { transpiled } from './transpile.js';

/** The interfaces a component may import: the world's own. Nothing from WASI. */
export const GRANTED_INTERFACES: readonly string[] = ['smtp:plugin/types', 'smtp:plugin/host'];
/** The world's exports, as jco names them. */
const WORLD_EXPORTS = ['init', 'deinit', 'getMetadata', 'executeHook', 'enable', 'disable'] as const;
const PAGE_BYTES = 65_536;
/** Share of memory_mb past which a component instance is replaced between calls. */
const RECYCLE_AT_FRACTION = 0.75;
/** A component binary: the \0asm magic, then version 0x0d and layer 1 (a core module has version 1, layer 0). */
const COMPONENT_HEADER = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

export function isComponent(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && COMPONENT_HEADER.every((byte, i) => bytes[i] === byte);
}

interface WorldExports {
  init(config: string): number;
  deinit(): void;
  getMetadata(): {
    name: string;
    version: string;
    author: string;
    description: string;
    license: string;
    dependencies: string[];
    minServerVersion?: string;
    maxServerVersion?: string;
    handledHooks: bigint;
  };
  executeHook(context: unknown): number;
  enable(): number;
  disable(): number;
}

type Instantiate = (
  getCoreModule: (path: string) => WebAssembly.Module,
  imports: Record<string, unknown>,
  instantiateCore: (module: WebAssembly.Module, imports: WebAssembly.Imports) => WebAssembly.Instance,
) => WorldExports;

const HOOK_ENUM = HOOK_NAMES.map((name) => name.replace(/_/g, '-'));
const STATUS = ['ok', 'no-memory', 'too-large', 'invalid'] as const;

/**
 * A component-model plugin (any language with a WIT toolchain), behind the
 * same Plugin interface. jco's transpile turns it into core modules and JS
 * glue (cached by content hash); the host instruments the core modules as
 * it does core wasm plugins (memory cap, deadline), so the same limits and
 * failure policy apply. See docs/components.md.
 */
class ComponentPlugin implements Plugin {
  readonly kind = 'component' as const;
  readonly backend = 'component' as const;
  readonly path: string;
  readonly abiVersion = ABI_VERSION;
  readonly metadata: PluginMetadata;
  readonly #options: PluginOptions;
  readonly #logger: Logger;
  readonly #instantiate: Instantiate;
  readonly #modules = new Map<string, WebAssembly.Module>();
  readonly #dir: string;
  #exports: WorldExports | null = null;
  #budgets: WebAssembly.Global[] = [];
  /** The linear memories of the live instance's core modules. */
  #memories: WebAssembly.Memory[] = [];
  #deadline = 0;
  #config: string | null = null;
  #enabled = false;
  #broken: HostError | null = null;
  /** The context of the hook call in progress, reached by the host resource. */
  #context: HookContext | null = null;
  /** The resource object handed to the component (of the class its instance was given). */
  #resource: object | null = null;

  constructor(path: string, options: PluginOptions, logger: Logger) {
    this.path = path;
    this.#options = options;
    this.#logger = logger;
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch (cause) {
      throw hostError('SMTP_E_PLUGIN_NOT_FOUND', `${path}: no such readable file`, cause);
    }
    if (!isComponent(bytes)) throw hostError('SMTP_E_COMPONENT_INVALID', `${path}: not a WebAssembly component (no component-model header)`);
    const cache = transpiled(path, bytes);
    this.#dir = cache.dir;
    const foreign = cache.imports.filter((name) => !GRANTED_INTERFACES.includes(name.replace(/@.*$/, '')));
    if (foreign.length > 0) throw hostError('SMTP_E_COMPONENT_IMPORT', `${path}: imports ${foreign.join(', ')}, which the sandbox does not grant`);
    const missing = WORLD_EXPORTS.filter((name) => !cache.exports.includes(name));
    if (missing.length > 0) {
      throw hostError('SMTP_E_COMPONENT_WORLD', `${path}: not an smtp:plugin/smtp-plugin component (missing exports ${missing.join(', ')}; it exports ${cache.exports.join(', ') || 'nothing'})`);
    }
    // The glue is a self-contained module exporting instantiate(); run it as a function.
    const glue = readFileSync(join(cache.dir, 'plugin.js'), 'utf8').replace(/^export function instantiate\(/m, 'function instantiate(').replace(/^export const _util = /m, 'const _util = ');
    this.#instantiate = (new Script(`(function () {\n${glue}\nreturn instantiate;\n})`, { filename: join(cache.dir, 'plugin.js') }).runInThisContext() as () => Instantiate)();
    this.#live();
    const raw = this.#guard('get_metadata', () => this.#exports!.getMetadata());
    this.metadata = validateMetadata(
      {
        name: raw.name,
        version: raw.version,
        author: raw.author,
        description: raw.description,
        license: raw.license,
        dependencies: raw.dependencies,
        minServerVersion: raw.minServerVersion ?? null,
        maxServerVersion: raw.maxServerVersion ?? null,
        handledHooks: BigInt(raw.handledHooks),
        flags: 0n,
      },
      path,
    );
  }

  /** A core module of the component, instrumented like a core wasm plugin. */
  #module(file: string): WebAssembly.Module {
    let module = this.#modules.get(file);
    if (module) return module;
    const memoryPagesMax = Math.floor((this.#options.limits.memoryMb * 1024 * 1024) / PAGE_BYTES);
    try {
      const { bytes } = instrument(readFileSync(join(this.#dir, file)), { memoryPagesMax, budgetInitial: BUDGET_ITERATIONS });
      module = new WebAssembly.Module(bytes);
    } catch (error) {
      const reason = (error as { reason?: string }).reason;
      const code = reason === 'memory' ? 'SMTP_E_WASM_MEMORY' : reason === 'unsupported' ? 'SMTP_E_WASM_UNSUPPORTED' : 'SMTP_E_COMPONENT_INVALID';
      throw hostError(code, `${this.path}: core module ${file}: ${(error as Error).message}`, error);
    }
    this.#modules.set(file, module);
    return module;
  }

  /** The host's side of the world: the hook-context resource and the logger. */
  #imports(): Record<string, unknown> {
    const plugin = this;
    const limits = this.#options.limits;
    class ComponentHookContext {
      hookType(): string {
        return HOOK_ENUM[plugin.#context!.hookValue]!;
      }
      getMetadata(key: string): Uint8Array | undefined {
        return plugin.#context!.getMetadataBytes(key);
      }
      setMetadata(key: string, value: Uint8Array): string {
        const keyBytes = Buffer.byteLength(key);
        if (keyBytes === 0) return STATUS[HostStatus.INVALID];
        if (keyBytes > limits.metadataKeyBytesMax || value.byteLength > limits.metadataValueBytesMax) return STATUS[HostStatus.TOO_LARGE];
        try {
          plugin.#context!.applyPluginChange(key, Uint8Array.from(value));
        } catch {
          return STATUS[HostStatus.TOO_LARGE];
        }
        return STATUS[HostStatus.OK];
      }
      cancel(): void {
        plugin.#context!.cancel = true;
      }
    }
    const levels = { debug: 'debug', info: 'info', warn: 'warn', error: 'error' } as const;
    return {
      'smtp:plugin/types': { HookContext: ComponentHookContext },
      'smtp:plugin/host': {
        log: (level: keyof typeof levels, message: string) => this.#logger[levels[level] ?? 'info']({ stream: 'plugin' }, message),
      },
    };
  }

  #live(): WorldExports {
    if (this.#exports) return this.#exports;
    if (this.#broken) throw this.#broken;
    const budgets: WebAssembly.Global[] = [];
    const memories: WebAssembly.Memory[] = [];
    const check = (): void => {
      if (performance.now() > this.#deadline) throw new DeadlineExceeded();
      for (const budget of budgets) budget.value = BUDGET_ITERATIONS;
    };
    const imports = this.#imports();
    const ResourceClass = (imports['smtp:plugin/types'] as { HookContext: new () => object }).HookContext;
    this.#arm();
    try {
      this.#exports = this.#instantiate(
        (file) => this.#module(file),
        imports,
        (module, imports) => {
          const instance = new WebAssembly.Instance(module, { ...imports, [CHECK_IMPORT_MODULE]: { [CHECK_IMPORT_NAME]: check } });
          const budget = instance.exports[BUDGET_EXPORT];
          if (budget instanceof WebAssembly.Global) budgets.push(budget);
          for (const value of Object.values(instance.exports)) if (value instanceof WebAssembly.Memory) memories.push(value);
          return instance;
        },
      );
    } catch (error) {
      throw isHostError(error) ? error : classifySandboxError(error, `plugin ${this.path} start`, this.#options.limits.hookTimeoutMs);
    }
    this.#budgets = budgets;
    this.#memories = memories;
    this.#resource = new ResourceClass();
    return this.#exports;
  }

  #arm(): void {
    this.#deadline = performance.now() + this.#options.limits.hookTimeoutMs;
    for (const budget of this.#budgets) budget.value = BUDGET_ITERATIONS;
  }

  /** Runs a call into the component under the deadline; a failure replaces the instance. */
  #guard<T>(phase: string, run: () => T): T {
    this.#arm();
    try {
      return run();
    } catch (error) {
      const coded = classifySandboxError(error, `plugin "${this.metadata?.name ?? this.path}" ${phase}`, this.#options.limits.hookTimeoutMs);
      this.#replace(coded);
      throw coded;
    }
  }

  #replace(cause: HostError | null): void {
    this.#exports = null;
    if (this.#config === null) return;
    if (cause !== null) this.#logger.warn({ code: cause.code, err: cause.message }, 'component instance replaced; its in-memory state is lost');
    try {
      const fresh = this.#live();
      this.#arm();
      if (fresh.init(this.#config) !== 0) throw hostError('SMTP_E_PLUGIN_INIT', `plugin "${this.metadata.name}": init failed on restart`);
      if (this.#enabled) fresh.enable();
    } catch (error) {
      this.#broken = isHostError(error) ? error : classifySandboxError(error, `plugin "${this.metadata.name}" restart`, this.#options.limits.hookTimeoutMs);
      this.#exports = null;
      this.#logger.error({ code: this.#broken.code, err: this.#broken.message }, 'component could not be restarted');
    }
  }

  init(configJson: string): number {
    const code = this.#guard('init', () => this.#live().init(configJson));
    if (code === 0) this.#config = configJson;
    return code;
  }

  enable(): number {
    const code = this.#guard('enable', () => this.#live().enable());
    if (code === 0) this.#enabled = true;
    return code;
  }

  disable(): number {
    this.#enabled = false;
    return this.#guard('disable', () => this.#live().disable());
  }

  executeHook(context: HookContext): number {
    const exports = this.#live();
    const resource = this.#resource;
    this.#context = context;
    try {
      return this.#guard(context.hook, () => exports.executeHook(resource));
    } finally {
      this.#context = null;
      this.#recycleIfFull();
    }
  }

  /**
   * A JavaScript component's engine does not collect garbage when its
   * linear memory runs short: it grows until memory.grow fails, then traps.
   * Past the high-water mark the instance is replaced between two calls, so
   * no call fails for it (the plugin's in-memory state is lost, and logged).
   */
  #recycleIfFull(): void {
    const limit = this.#options.limits.memoryMb * 1024 * 1024 * RECYCLE_AT_FRACTION;
    const used = this.#memories.reduce((total, memory) => total + memory.buffer.byteLength, 0);
    if (used <= limit || this.#config === null) return;
    this.#logger.info({ used_mb: Math.round(used / 1048576) }, 'component instance recycled at its memory high-water mark; its in-memory state is lost');
    this.#replace(null);
  }

  deinit(): void {
    this.#config = null;
    if (this.#exports) this.#guard('deinit', () => this.#exports!.deinit());
  }

  unload(): void {
    this.#exports = null;
    this.#modules.clear();
  }
}

export interface ComponentLoadOptions {
  readonly options?: PluginOptions;
  readonly logger?: Logger;
}

/** Loads a component-model plugin; every failure is a coded error naming the file. */
export function loadComponentPlugin(path: string, load: ComponentLoadOptions = {}): Plugin {
  return new ComponentPlugin(path, load.options ?? DEFAULT_PLUGIN_OPTIONS, load.logger ?? silentLogger());
}
