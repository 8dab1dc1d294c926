import { existsSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { HOOK_NAMES, handlesHook, hookValue, type HookName } from '../abi/hooks.js';
import { HostError, hostError, isHostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { PluginInstance, type HookAction, type HookCallResult } from '../plugin/lifecycle.js';
import { NATIVE_EXTENSIONS, WASM_EXTENSION, openPlugin, type BackendName } from '../plugin/backends.js';
import type { PluginEntryConfig, PluginsConfig } from '../config/plugins-config.js';
import { DEFAULT_PLUGIN_OPTIONS, type OnErrorPolicy, type PluginOptions } from '../plugin/options.js';
import { SERVER_VERSION } from '../version.js';
import type { DisableReason, PluginCallStats } from '../ops/plugin-call-stats.js';
import { DependencyError, checkDependencies, dependentsOf, resolveLoadOrder, type DependencyNode, type OrderedPlugin } from './dependencies.js';
import { nativeRuns, type NativeRunStart } from './native-runs.js';

export interface PluginManagerOptions {
  /** The directory of native plugin libraries loadAllPlugins() scans. */
  readonly directory: string;
  /** The directory of .wasm plugins it scans; default: wasm-plugins beside `directory`, if present. */
  readonly wasmDirectory?: string;
  readonly logger?: Logger;
  /** Log every plugin call (plugin, hook, result, duration): the guide's test mode. Otherwise at debug level. */
  readonly traceHooks?: boolean;
  /** Where each plugin call's verdict, error and latency is counted (the admin listener's metrics); none when absent. */
  readonly callStats?: PluginCallStats;
  /** Where each plugin call gets a trace span ([tracing]); none when absent. */
  readonly tracer?: PluginCallTracer;
}

/** Starts a span for a plugin call; the span is ended with the call's verdict. */
export interface PluginCallTracer {
  callStarted(instance: PluginInstance, context: HookContext): { end(verdict: HookAction | 'error', errorCode?: string): void };
}

type CallSpan = ReturnType<PluginCallTracer['callStarted']>;

/** Failures of a milter's service rather than of the plugin: on_error answers them, and they never disable the entry. */
const MILTER_ERROR_CODES: ReadonlySet<string> = new Set(['SMTP_E_MILTER_UNAVAILABLE', 'SMTP_E_MILTER_TIMEOUT', 'SMTP_E_MILTER_PROTOCOL']);

/** A plugin file to load, with what init and the policies need. */
export interface PluginSpec {
  readonly path: string;
  /** The name a config entry gives it: the plugin's metadata name must match (reloads find plugins by it). */
  readonly name?: string;
  readonly config?: string;
  readonly options?: PluginOptions;
  /** A plugin the server may run without (config `optional`): its failure to load does not stop start-up or a reload. */
  readonly optional?: boolean;
  /** A plugin that may approve a login (config `authenticator`): the only kind that gets the password at auth_started. */
  readonly authenticator?: boolean;
}

/** Which plugins of a chain run: all, only authenticators, or all but them (auth_started runs in two parts). */
export type ChainRole = 'all' | 'authenticators' | 'others';

/** Backends whose call copies the event's bytes into memory of the plugin's own (bodyCopies). */
const COPYING_BACKENDS: ReadonlySet<BackendName> = new Set<BackendName>(['wasm', 'component', 'process']);

/** A plugin that could not be loaded, initialised or enabled. */
export interface LoadFailure {
  readonly path: string;
  /** The config entry's name, when it has one. */
  readonly name: string | undefined;
  readonly optional: boolean;
  readonly error: HostError;
}

export interface LoadReport {
  readonly loaded: PluginInstance[];
  readonly failed: LoadFailure[];
}

/**
 * Plugins loaded, initialised and enabled beside the running ones but not
 * serving yet: commit() swaps them in, abort() takes them down. A reload is
 * staged this way so that a failure leaves the running set as it was.
 */
export interface StagedLoad extends LoadReport {
  /** Names the staged plugins replace (their running builds go down at commit). */
  readonly replacing: ReadonlySet<string>;
  readonly entries: readonly Entry[];
}

/** How one hook event ended. */
export interface HookOutcome {
  /** continue: every plugin ran; stop/cancel: `plugin` ended the chain; error: `plugin` failed. */
  readonly action: HookAction | 'error';
  readonly plugin?: string;
  readonly error?: HostError;
  /** For an error: the failing plugin's on_error policy, which ended the chain (the reply policy turns it into a reply). */
  readonly policy?: Exclude<OnErrorPolicy, 'continue'>;
  /** Plugins that failed and were skipped (on_error = "continue"): a security decision must not pass them by. */
  readonly skipped?: readonly string[];
  /**
   * For continue: how many plugins ran and answered continue. A plugin
   * disabled between the server's check and the run is not counted, so a
   * decision that needs an approval (a login) sees that nobody gave one.
   */
  readonly answered?: number;
}

/** A loaded plugin with its options and its run of failures. */
export interface Entry {
  readonly instance: PluginInstance;
  readonly options: PluginOptions;
  /** The file it was loaded from (before any private copy) and its init config. */
  readonly source: string;
  readonly config: string;
  readonly authenticator: boolean;
  failures: number;
}

/** A config entry as the manager loads it. */
export function pluginSpec(entry: PluginEntryConfig): PluginSpec {
  return { path: entry.file, name: entry.name, config: entry.config, options: entry.options, optional: entry.optional, authenticator: entry.authenticator };
}

function nodeOf(instance: PluginInstance): DependencyNode {
  const { metadata } = instance.plugin;
  return { name: metadata.name, version: metadata.version, dependencies: metadata.dependencies, minServerVersion: metadata.minServerVersion, maxServerVersion: metadata.maxServerVersion };
}

function coded(error: unknown, path: string): HostError {
  return isHostError(error) ? error : hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${path}: ${String(error)}`, error);
}

const CONTINUED_BY_NOBODY: HookOutcome = Object.freeze({ action: 'continue', answered: 0 });
const CONTINUED_BY_ONE: HookOutcome = Object.freeze({ action: 'continue', answered: 1 });

function continued(answered: number, skipped: string[] | undefined): HookOutcome {
  if (skipped) return { action: 'continue', skipped, answered };
  if (answered === 0) return CONTINUED_BY_NOBODY;
  return answered === 1 ? CONTINUED_BY_ONE : { action: 'continue', answered };
}

/**
 * The seed guide's PluginManager: loads plugins from a directory, runs each
 * hook through the enabled plugins in load order, and tears everything down
 * in reverse order. It never knows which backend runs a plugin.
 */
export class PluginManager {
  readonly directory: string;
  readonly wasmDirectory: string | undefined;
  readonly #logger: Logger;
  /** In load order. */
  #entries: Entry[] = [];
  /** Per hook value: the enabled plugins that handle it, in load order. */
  #chains: Entry[][] = HOOK_NAMES.map(() => []);
  /** Each chain's native runs (native-runs.ts), rebuilt with it. */
  #runs: (readonly (NativeRunStart | null)[])[] = HOOK_NAMES.map(() => []);
  /** handledAmong's answers, for the chains they were computed from. */
  #handled = { chains: this.#chains, among: new WeakMap<readonly HookName[], readonly HookName[]>() };

  constructor(options: PluginManagerOptions) {
    this.directory = options.directory;
    const sibling = join(dirname(resolve(options.directory)), 'wasm-plugins');
    this.wasmDirectory = options.wasmDirectory ?? (existsSync(sibling) ? sibling : undefined);
    this.#logger = options.logger ?? silentLogger();
    this.#trace = options.traceHooks === true ? 'info' : this.#logger.isLevelEnabled('debug') ? 'debug' : null;
    this.#stats = options.callStats ?? null;
    this.#tracer = options.tracer ?? null;
    this.#timed = this.#trace !== null || this.#stats !== null;
  }

  readonly #tracer: PluginCallTracer | null;

  /** The level plugin calls are traced at, or null when they are not. */
  readonly #trace: 'info' | 'debug' | null;
  readonly #stats: PluginCallStats | null;
  /** Whether calls are timed (traced or counted): otherwise no clock is read. */
  readonly #timed: boolean;

  /** The call statistics this manager records into, if any. */
  get callStats(): PluginCallStats | null {
    return this.#stats;
  }

  /** True when some enabled plugin handles `hook`: callers skip building a context otherwise. */
  handles(hook: HookName, role: ChainRole = 'all'): boolean {
    const chain = this.#chains[hookValue(hook)]!;
    return role === 'all' ? chain.length > 0 : chain.some((entry) => entry.authenticator === (role === 'authenticators'));
  }

  /**
   * The hooks of `hooks` some enabled plugin handles, in their order: asked
   * for every message (the body stages), answered from a cache until the
   * chains change.
   */
  handledAmong(hooks: readonly HookName[]): readonly HookName[] {
    if (this.#handled.chains !== this.#chains) this.#handled = { chains: this.#chains, among: new WeakMap() };
    let handled = this.#handled.among.get(hooks);
    if (handled === undefined) {
      handled = Object.freeze(hooks.filter((hook) => this.handles(hook)));
      this.#handled.among.set(hooks, handled);
    }
    return handled;
  }

  /**
   * How many enabled plugins handling any of `hooks` take a copy of the
   * event into memory of their own (a sandbox's linear memory, a component,
   * a process-isolated child): each holds the message body once more while
   * it is called. In-process native plugins read the host's bytes, and a
   * milter is sent the body in chunks: neither counts. A sandbox with the
   * lazy body (ABI 1.3) copies it only if its plugin reads it: counted all
   * the same, since that is known only during the call.
   */
  bodyCopies(hooks: readonly HookName[]): number {
    const copying = new Set<PluginInstance>();
    for (const hook of hooks) {
      for (const { instance } of this.#chains[hookValue(hook)]!) if (COPYING_BACKENDS.has(instance.plugin.backend)) copying.add(instance);
    }
    return copying.size;
  }

  /** Opens a plugin file with the backend it needs (metadata read, nothing initialised). */
  async #open(path: string, options: PluginOptions): Promise<PluginInstance> {
    return new PluginInstance(await openPlugin(path, { options, logger: this.#logger.child({ file: path }) }));
  }

  /** name -> version of the enabled plugins. */
  #running(except?: string): Map<string, string> {
    return new Map(
      this.#entries.filter(({ instance }) => instance.state === 'enabled' && instance.name !== except).map(({ instance }) => [instance.name, instance.plugin.metadata.version]),
    );
  }

  /**
   * Loads, inits and enables one plugin (native or .wasm, by extension),
   * after checking its dependencies against the enabled plugins and its
   * server version bounds; on failure nothing stays loaded.
   */
  async loadPlugin(path: string, configJson = '{}', options: PluginOptions = DEFAULT_PLUGIN_OPTIONS): Promise<PluginInstance> {
    const report = await this.loadPlugins([{ path, config: configJson, options }]);
    if (report.failed.length > 0) throw report.failed[0]!.error;
    return report.loaded[0]!;
  }

  /**
   * Loads several plugins: opens every file, resolves their order (each after
   * the plugins it depends on, ties in the given order; already enabled
   * plugins satisfy dependencies too), then inits and enables them in that
   * order. A plugin that fails, or whose dependency is missing, disabled,
   * out of range, failed, or on a cycle, is refused with a coded error naming
   * it, and so are the plugins that depend on it; the others load.
   */
  async loadPlugins(specs: readonly PluginSpec[]): Promise<LoadReport> {
    const staged = await this.stage(specs);
    await this.commit(staged);
    return { loaded: staged.loaded, failed: staged.failed };
  }

  /**
   * Loads, inits and enables plugins beside the running ones without
   * putting them in service (see loadPlugins for the order and refusals).
   * Plugins named in `replacing` are treated as gone: their names may be
   * loaded again, and they satisfy no dependency.
   */
  async stage(specs: readonly PluginSpec[], replacing: ReadonlySet<string> = new Set()): Promise<StagedLoad> {
    const loaded: PluginInstance[] = [];
    const entries: Entry[] = [];
    const failed: LoadFailure[] = [];
    const refuse = async (instance: PluginInstance | null, spec: PluginSpec, error: HostError): Promise<void> => {
      const optional = spec.optional === true;
      this.#logger[optional ? 'warn' : 'error']({ plugin: instance?.name ?? spec.name, path: spec.path, code: error.code, err: error.message, optional }, 'plugin refused');
      failed.push({ path: spec.path, name: spec.name, optional, error });
      try {
        await instance?.shutdown();
      } catch {
        // A plugin failing to shut down is already out of the chain.
      }
    };
    const running = (): Map<string, string> => {
      const names = this.#running();
      for (const name of replacing) names.delete(name);
      for (const { instance } of entries) names.set(instance.name, instance.plugin.metadata.version);
      return names;
    };
    let pending: { instance: PluginInstance; spec: PluginSpec; config: string; options: PluginOptions }[] = [];
    for (const spec of specs) {
      const config = spec.config ?? '{}';
      const options = spec.options ?? DEFAULT_PLUGIN_OPTIONS;
      try {
        JSON.parse(config);
      } catch (cause) {
        await refuse(null, spec, hostError('SMTP_E_PLUGIN_CONFIG', `${spec.path}: config is not JSON (${(cause as Error).message})`, cause));
        continue;
      }
      let instance: PluginInstance;
      try {
        instance = await this.#open(spec.path, options);
      } catch (error) {
        await refuse(null, spec, coded(error, spec.path));
        continue;
      }
      if (spec.name !== undefined && spec.name !== instance.name) {
        await refuse(instance, spec, hostError('SMTP_E_CONFIG', `${spec.path}: the config entry is named "${spec.name}" but the plugin is "${instance.name}"`));
        continue;
      }
      const existing = (replacing.has(instance.name) ? undefined : this.get(instance.name)) ?? pending.find((p) => p.instance.name === instance.name)?.instance;
      if (existing) {
        await refuse(instance, spec, hostError('SMTP_E_PLUGIN_DUPLICATE', `${spec.path}: a plugin named "${instance.name}" is already loaded from ${existing.plugin.path}`));
        continue;
      }
      pending.push({ instance, spec, config, options });
    }
    // Resolve; each refusal drops the plugins it names and those that depend on them.
    let order: OrderedPlugin[] = [];
    for (;;) {
      const nodes = pending.map(({ instance }) => nodeOf(instance));
      try {
        order = resolveLoadOrder(nodes, SERVER_VERSION, { available: running() });
        break;
      } catch (error) {
        if (!(error instanceof DependencyError) || error.plugins.length === 0) throw error;
        const dropped = new Set(error.plugins.flatMap((name) => [name, ...dependentsOf(name, nodes)]));
        for (const item of pending.filter((p) => dropped.has(p.instance.name))) {
          const because = error.plugins.includes(item.instance.name) ? error : hostError('SMTP_E_PLUGIN_DEPENDENCY', `plugin "${item.instance.name}" depends on a refused plugin: ${error.message}`);
          await refuse(item.instance, item.spec, because);
        }
        pending = pending.filter((p) => !dropped.has(p.instance.name));
      }
    }
    for (const { name } of order) {
      const item = pending.find((p) => p.instance.name === name)!;
      try {
        // A dependency that failed to start just now is not running: refuse in turn.
        checkDependencies(nodeOf(item.instance), running(), SERVER_VERSION);
        await item.instance.init(item.config);
        await item.instance.enable();
      } catch (error) {
        await refuse(item.instance, item.spec, coded(error, item.spec.path));
        continue;
      }
      entries.push({ instance: item.instance, options: item.options, source: item.spec.path, config: item.config, authenticator: item.spec.authenticator === true, failures: 0 });
      loaded.push(item.instance);
    }
    return { loaded, failed, replacing, entries };
  }

  /**
   * Puts staged plugins in service: the builds they replace, and `removing`,
   * leave the chains at once, the staged ones join them (a replacement at
   * its predecessor's place in the load order), then the old ones are taken
   * down. Refused (SMTP_E_PLUGIN_DEPENDENCY, nothing changed) when a running
   * plugin that stays would lose a dependency.
   */
  commit(staged: StagedLoad, removing: ReadonlySet<string> = new Set()): Promise<void> {
    const gone = new Set([...staged.replacing, ...removing]);
    const after = new Map(this.#entries.filter(({ instance }) => instance.state === 'enabled' && !gone.has(instance.name)).map(({ instance }) => [instance.name, instance.plugin.metadata.version]));
    for (const { instance } of staged.entries) after.set(instance.name, instance.plugin.metadata.version);
    for (const { instance } of this.#entries) {
      if (gone.has(instance.name) || instance.state !== 'enabled') continue;
      checkDependencies(nodeOf(instance), after, SERVER_VERSION);
    }
    const byName = new Map(staged.entries.map((entry) => [entry.instance.name, entry]));
    const old: Entry[] = [];
    const next: Entry[] = [];
    for (const entry of this.#entries) {
      const replacement = byName.get(entry.instance.name);
      if (replacement !== undefined && staged.replacing.has(entry.instance.name)) {
        next.push(replacement);
        byName.delete(entry.instance.name);
        old.push(entry);
      } else if (gone.has(entry.instance.name)) {
        old.push(entry);
      } else {
        next.push(entry);
      }
    }
    next.push(...byName.values());
    this.#entries = next;
    this.#rebuildChains();
    for (const { instance } of staged.entries) this.#logger.info({ plugin: instance.name, path: instance.plugin.path, kind: instance.plugin.kind, version: instance.plugin.metadata.version }, 'plugin loaded');
    // Taken down after the swap, in reverse load order.
    return old.reverse().reduce((done, entry) => done.then(() => this.#shutdown(entry.instance)), Promise.resolve());
  }

  /** Takes staged plugins down again: the running set stays as it was. */
  async abort(staged: StagedLoad): Promise<void> {
    for (const { instance } of [...staged.entries].reverse()) await this.#shutdown(instance);
  }

  /**
   * Loads every plugin file in the directories (native libraries, then
   * .wasm modules, each sorted by name) that is not loaded yet, in
   * dependency order. `configs` maps file names to their JSON config.
   */
  loadAllPlugins(configs: Readonly<Record<string, string>> = {}, accept: (path: string) => boolean = () => true): Promise<LoadReport> {
    const present = new Set(this.#entries.map(({ source }) => resolve(source)));
    const list = (dir: string | undefined, wanted: (extension: string) => boolean): string[] =>
      dir === undefined ? [] : readdirSync(dir).filter((file) => wanted(extname(file).toLowerCase())).sort().map((file) => join(dir, file));
    const paths = [
      ...list(this.directory, (extension) => NATIVE_EXTENSIONS.includes(extension)),
      ...list(this.wasmDirectory, (extension) => extension === WASM_EXTENSION),
    ].filter((path) => !present.has(resolve(path)) && accept(path));
    // Found, not configured: the server runs without any of them that fails.
    return this.loadPlugins(paths.map((path) => ({ path, config: configs[basename(path)] ?? '{}', optional: true })));
  }

  /**
   * Loads the plugins a config.toml [plugins] section names, each from its
   * native or sandboxed build as configured, in dependency order (ties in
   * config order); with auto_load, then every other plugin file found.
   */
  async loadFromConfig(config: PluginsConfig): Promise<LoadReport> {
    if (!config.enabled) return { loaded: [], failed: [] };
    const report = await this.loadPlugins(config.plugins.filter((entry) => entry.enabled).map(pluginSpec));
    if (!config.autoLoad) return report;
    // Files a config entry names (enabled or not) are never auto-loaded.
    const configured = new Set(config.plugins.flatMap((entry) => entry.builds.map((path) => resolve(path))));
    const rest = await this.loadAllPlugins({}, (path) => !configured.has(resolve(path)));
    return { loaded: [...report.loaded, ...rest.loaded], failed: [...report.failed, ...rest.failed] };
  }

  /** The order loadPlugins would use for these plugin files, with reasons: `smtp-server plugins order`. */
  async resolveOrder(specs: readonly PluginSpec[]): Promise<{ order: OrderedPlugin[]; versions: Map<string, string> }> {
    const opened: PluginInstance[] = [];
    try {
      for (const spec of specs) opened.push(await this.#open(spec.path, spec.options ?? DEFAULT_PLUGIN_OPTIONS));
      const nodes = opened.map(nodeOf);
      return { order: resolveLoadOrder(nodes, SERVER_VERSION, { available: this.#running() }), versions: new Map(nodes.map((n) => [n.name, n.version])) };
    } finally {
      for (const instance of opened) await instance.shutdown();
    }
  }


  get(name: string): PluginInstance | undefined {
    return this.#entries.find(({ instance }) => instance.name === name)?.instance;
  }

  /** Loaded plugins, in load (init) order. */
  list(): readonly PluginInstance[] {
    return this.#entries.map(({ instance }) => instance);
  }

  /** The name of the loaded plugin whose file is `path`, if any (for hot reload). */
  pluginAt(path: string): string | undefined {
    const wanted = resolve(path);
    return this.#entries.find(({ source }) => resolve(source) === wanted)?.instance.name;
  }

  #require(name: string): Entry {
    const entry = this.#entries.find(({ instance }) => instance.name === name);
    if (!entry) throw hostError('SMTP_E_PLUGIN_UNKNOWN', `no loaded plugin is named "${name}"`);
    return entry;
  }

  /** Enabled plugins that depend on `name`, directly or not, in the order to take them down. */
  #enabledDependents(name: string): string[] {
    const enabled = this.#entries.filter(({ instance }) => instance.state === 'enabled');
    return dependentsOf(name, enabled.map(({ instance }) => nodeOf(instance)));
  }

  /** The plugins to take down with `name`, dependents first; refuses without cascade when there are any. */
  #takeDown(name: string, verb: 'disable' | 'unload', cascade: boolean): string[] {
    this.#require(name);
    const dependents = this.#enabledDependents(name);
    if (dependents.length > 0 && !cascade) {
      throw hostError('SMTP_E_PLUGIN_DEPENDENCY', `cannot ${verb} "${name}": enabled plugins depend on it (${dependents.join(', ')}); ask to cascade`);
    }
    return [...dependents, name];
  }

  /** Enables a disabled plugin, once its own dependencies are enabled. */
  async enablePlugin(name: string): Promise<void> {
    const entry = this.#require(name);
    checkDependencies(nodeOf(entry.instance), this.#running(name), SERVER_VERSION);
    await entry.instance.enable();
    entry.failures = 0;
    this.#rebuildChains();
  }

  /**
   * Disables a plugin. If enabled plugins depend on it, refuses unless
   * `cascade`, which disables them first. Returns the names disabled.
   * `reason` (default admin) is what the call statistics count it under.
   */
  async disablePlugin(name: string, options: { cascade?: boolean; reason?: DisableReason } = {}): Promise<string[]> {
    const names = this.#takeDown(name, 'disable', options.cascade === true);
    for (const each of names) this.#stats?.disabled(each, each === name ? (options.reason ?? 'admin') : 'dependency');
    // Out of the chains at once, before any plugin's disable runs.
    const disabling = names.map((each) => this.#require(each).instance.disable());
    this.#rebuildChains();
    const results = await Promise.allSettled(disabling);
    const failed = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    return names;
  }

  /**
   * Disables, deinits and unloads a plugin. If enabled plugins depend on it,
   * refuses unless `cascade`, which unloads them first. Returns the names unloaded.
   */
  async unloadPlugin(name: string, options: { cascade?: boolean } = {}): Promise<string[]> {
    const names = this.#takeDown(name, 'unload', options.cascade === true);
    for (const each of names) {
      const entry = this.#require(each);
      this.#entries = this.#entries.filter((other) => other !== entry);
      this.#rebuildChains();
      await this.#shutdown(entry.instance);
    }
    return names;
  }

  /**
   * Hot reload: loads the plugin's file again beside the running build,
   * inits and enables it with the same config, and swaps it in for the next
   * hook call; then takes the old build down. A call still running on the
   * old build (a blocking plugin, off the event loop) finishes first: the
   * backend defers the old build's disable, deinit and unload until then. If
   * the new build fails to load or init, or no longer satisfies a plugin
   * that depends on it, it is discarded and the old build keeps serving (the
   * error is thrown).
   */
  async replacePlugin(name: string): Promise<PluginInstance> {
    const old = this.#require(name);
    const staged = await this.stage([{ path: old.source, config: old.config, options: old.options, authenticator: old.authenticator }], new Set([name]));
    const next = staged.loaded[0];
    if (next === undefined) throw staged.failed[0]!.error;
    if (next.name !== name) {
      await this.abort(staged);
      throw hostError('SMTP_E_PLUGIN_DEPENDENCY', `${old.source}: the new build is named "${next.name}", not "${name}"`);
    }
    // The old build may have been unloaded meanwhile (a reload of the config): then the new one is not wanted either.
    if (this.#entries.find((entry) => entry.instance.name === name) !== old) {
      await this.abort(staged);
      throw hostError('SMTP_E_PLUGIN_UNKNOWN', `plugin "${name}" was unloaded while its new build was loading`);
    }
    if (old.instance.state !== 'enabled') await next.disable();
    try {
      await this.commit(staged);
    } catch (error) {
      await this.abort(staged);
      throw error;
    }
    return next;
  }

  /**
   * Runs `hook` through the enabled plugins that handle it, in load order,
   * until one stops or cancels. A plugin that fails follows its on_error
   * policy: continue (the chain goes on), tempfail or reject (the chain ends
   * with an `error` outcome naming the policy); after
   * max_consecutive_failures failures in a row it is disabled.
   */
  async executeHook(hook: HookName, context: HookContext): Promise<HookOutcome> {
    if (context.hook !== hook) throw hostError('SMTP_E_HOOK_UNKNOWN', `executeHook(${hook}) was given a ${context.hook} context`);
    return this.runChain(context);
  }

  /**
   * executeHook for the server's path: plugins that answer at once (native
   * and sandboxed in this thread) are called one after another and the
   * outcome comes back without a promise; a promise is returned only from
   * the first plugin whose hooks run off the event loop.
   */
  runChain(context: HookContext, role: ChainRole = 'all'): HookOutcome | Promise<HookOutcome> {
    const chain = this.#chains[context.hookValue]!;
    if (role === 'all') return this.#runFrom(chain, this.#runs[context.hookValue]!, 0, context, undefined, 0);
    return this.#runFrom(chain.filter((entry) => entry.authenticator === (role === 'authenticators')), null, 0, context, undefined, 0);
  }

  /**
   * Calls chain[from...] in order. `runs` (null: none) gives the native runs
   * of the chain, whose plugins are called in one crossing when nothing
   * times each call (no call statistics, no trace, no tracing).
   */
  #runFrom(chain: readonly Entry[], runs: readonly (NativeRunStart | null)[] | null, from: number, context: HookContext, skipped: string[] | undefined, answered: number): HookOutcome | Promise<HookOutcome> {
    let last: Entry | undefined;
    const fuse = runs !== null && !this.#timed && this.#tracer === null;
    for (let index = from; index < chain.length; index++) {
      const entry = chain[index]!;
      // The chain was taken before an earlier plugin's await: a plugin
      // disabled, unloaded or replaced meanwhile is skipped, not called.
      if (entry.instance.state !== 'enabled') continue;
      last = entry;
      const start = fuse ? runs[index]! : null;
      if (start !== null && start.run.enabledFrom(start.offset)) {
        const { run, offset } = start;
        let made: number;
        try {
          made = run.call(offset, context);
        } catch (error) {
          // What the first plugin's own call would have thrown (its context refused): its failure.
          const failed = this.#failed(entry, context, error, 0, null, skipped);
          if ('action' in failed) return failed;
          skipped = failed.skipped;
          continue;
        }
        // Every call but the last answered continue.
        for (let k = offset; k < offset + made - 1; k++) run.entries[k]!.failures = 0;
        answered += made - 1;
        index += made - 1;
        last = chain[index]!;
        let action: HookAction;
        try {
          action = last.instance.resultOf(run.code(made), context).action;
        } catch (error) {
          const failed = this.#failed(last, context, error, 0, null, skipped);
          if ('action' in failed) return failed;
          skipped = failed.skipped;
          continue;
        }
        const ended = this.#answered(last, context, action, 0, null, skipped);
        if (ended !== null) return this.#settled(last, context, ended, skipped);
        answered++;
        continue;
      }
      const started = this.#timed ? performance.now() : 0;
      const span = this.#tracer === null ? null : this.#tracer.callStarted(entry.instance, context);
      let result: HookCallResult | Promise<HookCallResult>;
      try {
        result = entry.instance.executeHookAsync(context);
      } catch (error) {
        const failed = this.#failed(entry, context, error, started, span, skipped);
        if ('action' in failed) return failed;
        skipped = failed.skipped;
        continue;
      }
      if (result instanceof Promise) {
        return result.then(
          ({ action }) => this.#answered(entry, context, action, started, span, skipped) ?? this.#runFrom(chain, runs, index + 1, context, skipped, answered + 1),
          (error: unknown) => {
            const failed = this.#failed(entry, context, error, started, span, skipped);
            return 'action' in failed ? failed : this.#runFrom(chain, runs, index + 1, context, failed.skipped, answered);
          },
        );
      }
      const ended = this.#answered(entry, context, result.action, started, span, skipped);
      if (ended !== null) return this.#settled(entry, context, ended, skipped);
      answered++;
    }
    return last === undefined ? continued(answered, skipped) : this.#settled(last, context, null, skipped, answered);
  }

  /**
   * The chain's outcome once the keys native plugins set are copied back into
   * `context` (they wait in the native copy while native plugins follow one
   * another: HookContext.deferChanges). A change the host refuses then is
   * the failure of `last`, the last plugin called, under its on_error policy.
   */
  #settled(last: Entry, context: HookContext, ended: HookOutcome | null, skipped: string[] | undefined, answered = 0): HookOutcome {
    try {
      context.settle();
    } catch (error) {
      const failed = this.#failed(last, context, error, performance.now(), null, skipped);
      if ('action' in failed) return failed;
      skipped = failed.skipped;
    }
    return ended ?? continued(answered, skipped);
  }

  /** A plugin answered: the outcome when it ended the chain, else null. */
  #answered(entry: Entry, context: HookContext, action: HookAction, started: number, span: CallSpan | null, skipped: string[] | undefined): HookOutcome | null {
    entry.failures = 0;
    span?.end(action);
    if (this.#timed) {
      const ms = performance.now() - started;
      this.#stats?.of(entry.instance.name, context.hookValue).answered(action, ms / 1000);
      if (this.#trace !== null) this.#logger[this.#trace]({ plugin: entry.instance.name, hook: context.hook, result: action, duration_us: Math.round(ms * 1000) }, 'hook call');
    }
    if (action === 'continue') return null;
    this.#logger.debug({ plugin: entry.instance.name, hook: context.hook, action }, 'hook chain ended by plugin');
    return skipped ? { action, plugin: entry.instance.name, skipped } : { action, plugin: entry.instance.name };
  }

  /** A plugin failed: the error outcome when its policy ends the chain, else the plugins skipped so far (with it). */
  #failed(entry: Entry, context: HookContext, error: unknown, started: number, span: CallSpan | null, skipped: string[] | undefined): HookOutcome | { skipped: string[] } {
    const { instance } = entry;
    const coded = isHostError(error) ? error : hostError('SMTP_E_PLUGIN_HOOK_CODE', `plugin "${instance.name}": ${String(error)}`, error);
    span?.end('error', coded.code);
    this.#stats?.of(instance.name, context.hookValue).failed(coded.code, (performance.now() - started) / 1000);
    const policy = entry.options.onError;
    this.#logger.error({ plugin: instance.name, hook: context.hook, code: coded.code, err: coded.message, on_error: policy }, 'plugin hook failed');
    // A limit the host enforced before the plugin ran is not the plugin's failure. Nor is a milter
    // that is down or slow: each session tries it afresh, and disabling it would let mail through unfiltered.
    if (coded.code !== 'SMTP_E_METADATA_LIMIT' && !MILTER_ERROR_CODES.has(coded.code)) this.#countFailure(entry);
    if (policy === 'continue') return { skipped: [...(skipped ?? []), instance.name] };
    return { action: 'error', plugin: instance.name, error: coded, policy };
  }

  #countFailure(entry: Entry): void {
    entry.failures++;
    if (entry.failures < entry.options.maxConsecutiveFailures || entry.instance.state !== 'enabled') return;
    // Its dependents go down with it: an enabled plugin's dependencies are enabled.
    const names = [...this.#enabledDependents(entry.instance.name), entry.instance.name];
    this.#logger.error({ plugin: entry.instance.name, failures: entry.failures, disabled: names }, 'plugin disabled after failing too many times in a row');
    // disable() leaves the chain at once, even when the plugin's disable then fails.
    this.disablePlugin(entry.instance.name, { cascade: true, reason: 'failures' }).catch((error: unknown) => {
      this.#logger.error({ plugin: entry.instance.name, err: String(error) }, 'plugin failed to disable');
    });
  }

  /** Takes a plugin out of service; its failure to shut down is logged, never thrown (it is out of the chain already). */
  async #shutdown(instance: PluginInstance): Promise<void> {
    try {
      await instance.shutdown();
    } catch (error) {
      this.#logger.error({ plugin: instance.name, code: isHostError(error) ? error.code : undefined, err: String(error) }, 'plugin failed to shut down');
    }
  }

  /** Disables, deinits and unloads every plugin, in reverse load order. */
  async deinit(): Promise<void> {
    const instances = this.#entries.map(({ instance }) => instance).reverse();
    this.#entries = [];
    this.#rebuildChains();
    for (const instance of instances) await this.#shutdown(instance);
  }

  #rebuildChains(): void {
    this.#chains = HOOK_NAMES.map((hook) =>
      this.#entries.filter(({ instance }) => instance.state === 'enabled' && handlesHook(instance.plugin.metadata.handledHooks, hook)),
    );
    this.#runs = this.#chains.map(nativeRuns);
  }
}
