import { existsSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { dirname, extname, join, resolve } from 'node:path';
import { HOOK_NAMES, handlesHook, hookValue, type HookName } from '../abi/hooks.js';
import { HostError, hostError, isHostError, type SmtpReply } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { PluginInstance, type HookAction } from '../plugin/lifecycle.js';
import { NATIVE_EXTENSIONS, WASM_EXTENSION, loadPluginFile } from '../plugin/load.js';
import type { PluginsConfig } from '../config/plugins-config.js';
import { DEFAULT_PLUGIN_OPTIONS, type OnErrorPolicy, type PluginOptions } from '../plugin/options.js';

export interface PluginManagerOptions {
  /** The directory of native plugin libraries loadAllPlugins() scans. */
  readonly directory: string;
  /** The directory of .wasm plugins it scans; default: wasm-plugins beside `directory`, if present. */
  readonly wasmDirectory?: string;
  readonly logger?: Logger;
  /** Log every plugin call (plugin, hook, result, duration): the guide's test mode. Otherwise at debug level. */
  readonly traceHooks?: boolean;
}

/** How one hook event ended. */
export interface HookOutcome {
  /** continue: every plugin ran; stop/cancel: `plugin` ended the chain; error: `plugin` failed. */
  readonly action: HookAction | 'error';
  readonly plugin?: string;
  readonly error?: HostError;
  /** For an error: the reply its on_error policy asks for (tempfail 451, reject 554). */
  readonly reply?: SmtpReply;
}

/** The SMTP reply of each failure policy that refuses. */
export const POLICY_REPLIES: Readonly<Record<Exclude<OnErrorPolicy, 'continue'>, SmtpReply>> = Object.freeze({
  tempfail: { code: 451, enhanced: '4.3.0' },
  reject: { code: 554, enhanced: '5.3.0' },
});

/** A loaded plugin with its options and its run of failures. */
interface Entry {
  readonly instance: PluginInstance;
  readonly options: PluginOptions;
  failures: number;
}

const CONTINUE: HookOutcome = Object.freeze({ action: 'continue' });

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

  constructor(options: PluginManagerOptions) {
    this.directory = options.directory;
    const sibling = join(dirname(resolve(options.directory)), 'wasm-plugins');
    this.wasmDirectory = options.wasmDirectory ?? (existsSync(sibling) ? sibling : undefined);
    this.#logger = options.logger ?? silentLogger();
    this.#trace = options.traceHooks === true ? 'info' : this.#logger.isLevelEnabled('debug') ? 'debug' : null;
  }

  /** The level plugin calls are traced at, or null when they are not. */
  readonly #trace: 'info' | 'debug' | null;

  /** True when some enabled plugin handles `hook`: callers skip building a context otherwise. */
  handles(hook: HookName): boolean {
    return this.#chains[hookValue(hook)]!.length > 0;
  }

  /**
   * Loads, inits and enables one plugin (native or .wasm, by extension);
   * on failure nothing stays loaded.
   */
  loadPlugin(path: string, configJson = '{}', options: PluginOptions = DEFAULT_PLUGIN_OPTIONS): PluginInstance {
    try {
      JSON.parse(configJson);
    } catch (cause) {
      throw hostError('SMTP_E_PLUGIN_CONFIG', `${path}: config is not JSON (${(cause as Error).message})`, cause);
    }
    const instance = new PluginInstance(loadPluginFile(path, { options, logger: this.#logger.child({ file: path }) }));
    const log = this.#logger.child({ plugin: instance.name });
    try {
      if (this.get(instance.name)) {
        throw hostError('SMTP_E_PLUGIN_DUPLICATE', `${path}: a plugin named "${instance.name}" is already loaded from ${this.get(instance.name)!.plugin.path}`);
      }
      instance.init(configJson);
      instance.enable();
    } catch (error) {
      instance.shutdown();
      throw error;
    }
    this.#entries.push({ instance, options, failures: 0 });
    this.#rebuildChains();
    log.info({ path, kind: instance.plugin.kind, version: instance.plugin.metadata.version }, 'plugin loaded');
    return instance;
  }

  /**
   * Loads every plugin library in the directory (sorted by file name) that
   * is not loaded yet. A plugin that fails is logged and skipped; the others
   * still load. `configs` maps plugin file names to their JSON config.
   */
  loadAllPlugins(
    configs: Readonly<Record<string, string>> = {},
    accept: (path: string) => boolean = () => true,
  ): { loaded: PluginInstance[]; failed: { path: string; error: HostError }[] } {
    const loaded: PluginInstance[] = [];
    const failed: { path: string; error: HostError }[] = [];
    const present = new Set(this.#entries.map(({ instance }) => resolve(instance.plugin.path)));
    const list = (dir: string | undefined, accept: (extension: string) => boolean): string[] =>
      dir === undefined ? [] : readdirSync(dir).filter((file) => accept(extname(file).toLowerCase())).sort().map((file) => join(dir, file));
    const paths = [
      ...list(this.directory, (extension) => NATIVE_EXTENSIONS.includes(extension)),
      ...list(this.wasmDirectory, (extension) => extension === WASM_EXTENSION),
    ];
    for (const path of paths) {
      const file = path.slice(path.lastIndexOf('/') + 1);
      if (present.has(resolve(path)) || !accept(path)) continue;
      try {
        loaded.push(this.loadPlugin(path, configs[file] ?? '{}'));
      } catch (error) {
        const coded = isHostError(error) ? error : hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${path}: ${String(error)}`, error);
        this.#logger.error({ path, code: coded.code, err: coded.message }, 'plugin failed to load');
        failed.push({ path, error: coded });
      }
    }
    return { loaded, failed };
  }

  /**
   * Loads the plugins a config.toml [plugins] section names, in config
   * order, each from its native or sandboxed build as configured; with
   * auto_load, then every other plugin file in the directories. A plugin
   * that fails is logged and skipped, as in loadAllPlugins().
   */
  loadFromConfig(config: PluginsConfig): { loaded: PluginInstance[]; failed: { path: string; error: HostError }[] } {
    const loaded: PluginInstance[] = [];
    const failed: { path: string; error: HostError }[] = [];
    if (!config.enabled) return { loaded, failed };
    for (const entry of config.plugins) {
      if (!entry.enabled) continue;
      try {
        const instance = this.loadPlugin(entry.file, entry.config, entry.options);
        if (instance.name !== entry.name) {
          this.#logger.warn({ plugin: instance.name, configured: entry.name, path: entry.file }, 'plugin name differs from its config entry');
        }
        loaded.push(instance);
      } catch (error) {
        const coded = isHostError(error) ? error : hostError('SMTP_E_PLUGIN_NOT_LIBRARY', `${entry.file}: ${String(error)}`, error);
        this.#logger.error({ plugin: entry.name, path: entry.file, code: coded.code, err: coded.message }, 'plugin failed to load');
        failed.push({ path: entry.file, error: coded });
      }
    }
    if (config.autoLoad) {
      // Files a config entry names (enabled or not) are never auto-loaded.
      const configured = new Set(config.plugins.flatMap((entry) => entry.builds.map((path) => resolve(path))));
      const rest = this.loadAllPlugins({}, (path) => !configured.has(resolve(path)));
      loaded.push(...rest.loaded);
      failed.push(...rest.failed);
    }
    return { loaded, failed };
  }

  get(name: string): PluginInstance | undefined {
    return this.#entries.find(({ instance }) => instance.name === name)?.instance;
  }

  /** Loaded plugins, in load order. */
  list(): readonly PluginInstance[] {
    return this.#entries.map(({ instance }) => instance);
  }

  #require(name: string): Entry {
    const entry = this.#entries.find(({ instance }) => instance.name === name);
    if (!entry) throw hostError('SMTP_E_PLUGIN_UNKNOWN', `no loaded plugin is named "${name}"`);
    return entry;
  }

  enablePlugin(name: string): void {
    const entry = this.#require(name);
    entry.instance.enable();
    entry.failures = 0;
    this.#rebuildChains();
  }

  disablePlugin(name: string): void {
    try {
      this.#require(name).instance.disable();
    } finally {
      this.#rebuildChains();
    }
  }

  /** Disables, deinits and unloads one plugin. */
  unloadPlugin(name: string): void {
    const entry = this.#require(name);
    this.#entries = this.#entries.filter((other) => other !== entry);
    this.#rebuildChains();
    entry.instance.shutdown();
  }

  /**
   * Runs `hook` through the enabled plugins that handle it, in load order,
   * until one stops or cancels. A plugin that fails follows its on_error
   * policy: continue (the chain goes on), tempfail or reject (the chain ends
   * with an `error` outcome carrying the reply); after
   * max_consecutive_failures failures in a row it is disabled.
   */
  async executeHook(hook: HookName, context: HookContext): Promise<HookOutcome> {
    if (context.hook !== hook) throw hostError('SMTP_E_HOOK_UNKNOWN', `executeHook(${hook}) was given a ${context.hook} context`);
    const chain = this.#chains[hookValue(hook)]!;
    for (const entry of chain) {
      const { instance } = entry;
      let action: HookAction;
      const started = this.#trace === null ? 0 : performance.now();
      try {
        action = instance.executeHook(context).action;
        entry.failures = 0;
        if (this.#trace !== null) {
          this.#logger[this.#trace]({ plugin: instance.name, hook, result: action, duration_us: Math.round((performance.now() - started) * 1000) }, 'hook call');
        }
      } catch (error) {
        const coded = isHostError(error) ? error : hostError('SMTP_E_PLUGIN_HOOK_CODE', `plugin "${instance.name}": ${String(error)}`, error);
        const policy = entry.options.onError;
        this.#logger.error({ plugin: instance.name, hook, code: coded.code, err: coded.message, on_error: policy }, 'plugin hook failed');
        this.#countFailure(entry);
        if (policy === 'continue') continue;
        return { action: 'error', plugin: instance.name, error: coded, reply: POLICY_REPLIES[policy] };
      }
      if (action !== 'continue') {
        this.#logger.debug({ plugin: instance.name, hook, action }, 'hook chain ended by plugin');
        return { action, plugin: instance.name };
      }
    }
    return CONTINUE;
  }

  #countFailure(entry: Entry): void {
    entry.failures++;
    if (entry.failures < entry.options.maxConsecutiveFailures || entry.instance.state !== 'enabled') return;
    this.#logger.error({ plugin: entry.instance.name, failures: entry.failures }, 'plugin disabled after failing too many times in a row');
    try {
      entry.instance.disable();
    } catch {
      // disable() leaves the chain even when the plugin's disable fails.
    }
    this.#rebuildChains();
  }

  /** Disables, deinits and unloads every plugin, in reverse load order. */
  deinit(): void {
    const instances = this.#entries.map(({ instance }) => instance).reverse();
    this.#entries = [];
    this.#rebuildChains();
    for (const instance of instances) {
      try {
        instance.shutdown();
      } catch (error) {
        this.#logger.error({ plugin: instance.name, err: String(error) }, 'plugin failed to shut down');
      }
    }
  }

  #rebuildChains(): void {
    this.#chains = HOOK_NAMES.map((hook) =>
      this.#entries.filter(({ instance }) => instance.state === 'enabled' && handlesHook(instance.plugin.metadata.handledHooks, hook)),
    );
  }
}
