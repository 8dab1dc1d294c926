import { readdirSync } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { HOOK_NAMES, handlesHook, hookValue, type HookName } from '../abi/hooks.js';
import { HostError, hostError, isHostError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { HookContext } from '../plugin/hook-context.js';
import { PluginInstance, type HookAction } from '../plugin/lifecycle.js';
import { NATIVE_EXTENSIONS, loadPluginFile } from '../plugin/load.js';

export interface PluginManagerOptions {
  /** The plugin directory loadAllPlugins() scans. */
  readonly directory: string;
  readonly logger?: Logger;
}

/** How one hook event ended. */
export interface HookOutcome {
  /** continue: every plugin ran; stop/cancel: `plugin` ended the chain; error: `plugin` failed. */
  readonly action: HookAction | 'error';
  readonly plugin?: string;
  readonly error?: HostError;
}

const CONTINUE: HookOutcome = Object.freeze({ action: 'continue' });

/**
 * The seed guide's PluginManager: loads plugins from a directory, runs each
 * hook through the enabled plugins in load order, and tears everything down
 * in reverse order. It never knows which backend runs a plugin.
 */
export class PluginManager {
  readonly directory: string;
  readonly #logger: Logger;
  /** In load order. */
  #instances: PluginInstance[] = [];
  /** Per hook value: the enabled plugins that handle it, in load order. */
  #chains: PluginInstance[][] = HOOK_NAMES.map(() => []);

  constructor(options: PluginManagerOptions) {
    this.directory = options.directory;
    this.#logger = options.logger ?? silentLogger();
  }

  /** Loads, inits and enables one plugin; on failure nothing stays loaded. */
  loadPlugin(path: string, configJson = '{}'): PluginInstance {
    try {
      JSON.parse(configJson);
    } catch (cause) {
      throw hostError('SMTP_E_PLUGIN_CONFIG', `${path}: config is not JSON (${(cause as Error).message})`, cause);
    }
    const instance = new PluginInstance(loadPluginFile(path));
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
    this.#instances.push(instance);
    this.#rebuildChains();
    log.info({ path, kind: instance.plugin.kind, version: instance.plugin.metadata.version }, 'plugin loaded');
    return instance;
  }

  /**
   * Loads every plugin library in the directory (sorted by file name) that
   * is not loaded yet. A plugin that fails is logged and skipped; the others
   * still load. `configs` maps plugin file names to their JSON config.
   */
  loadAllPlugins(configs: Readonly<Record<string, string>> = {}): { loaded: PluginInstance[]; failed: { path: string; error: HostError }[] } {
    const loaded: PluginInstance[] = [];
    const failed: { path: string; error: HostError }[] = [];
    const present = new Set(this.#instances.map((instance) => resolve(instance.plugin.path)));
    const files = readdirSync(this.directory).filter((file) => NATIVE_EXTENSIONS.includes(extname(file).toLowerCase())).sort();
    for (const file of files) {
      const path = join(this.directory, file);
      if (present.has(resolve(path))) continue;
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

  get(name: string): PluginInstance | undefined {
    return this.#instances.find((instance) => instance.name === name);
  }

  /** Loaded plugins, in load order. */
  list(): readonly PluginInstance[] {
    return this.#instances;
  }

  #require(name: string): PluginInstance {
    const instance = this.get(name);
    if (!instance) throw hostError('SMTP_E_PLUGIN_UNKNOWN', `no loaded plugin is named "${name}"`);
    return instance;
  }

  enablePlugin(name: string): void {
    this.#require(name).enable();
    this.#rebuildChains();
  }

  disablePlugin(name: string): void {
    try {
      this.#require(name).disable();
    } finally {
      this.#rebuildChains();
    }
  }

  /** Disables, deinits and unloads one plugin. */
  unloadPlugin(name: string): void {
    const instance = this.#require(name);
    this.#instances = this.#instances.filter((other) => other !== instance);
    this.#rebuildChains();
    instance.shutdown();
  }

  /**
   * Runs `hook` through the enabled plugins that handle it, in load order,
   * until one stops, cancels or fails.
   */
  async executeHook(hook: HookName, context: HookContext): Promise<HookOutcome> {
    if (context.hook !== hook) throw hostError('SMTP_E_HOOK_UNKNOWN', `executeHook(${hook}) was given a ${context.hook} context`);
    const chain = this.#chains[hookValue(hook)]!;
    for (const instance of chain) {
      let action: HookAction;
      try {
        action = instance.executeHook(context).action;
      } catch (error) {
        const coded = isHostError(error) ? error : hostError('SMTP_E_PLUGIN_HOOK_CODE', `plugin "${instance.name}": ${String(error)}`, error);
        this.#logger.error({ plugin: instance.name, hook, code: coded.code, err: coded.message }, 'plugin hook failed');
        return { action: 'error', plugin: instance.name, error: coded };
      }
      if (action !== 'continue') {
        this.#logger.debug({ plugin: instance.name, hook, action }, 'hook chain ended by plugin');
        return { action, plugin: instance.name };
      }
    }
    return CONTINUE;
  }

  /** Disables, deinits and unloads every plugin, in reverse load order. */
  deinit(): void {
    const instances = this.#instances.reverse();
    this.#instances = [];
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
      this.#instances.filter((instance) => instance.state === 'enabled' && handlesHook(instance.plugin.metadata.handledHooks, hook)),
    );
  }
}
