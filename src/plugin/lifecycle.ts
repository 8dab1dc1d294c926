import { HookCode } from '../abi/hooks.js';
import { hostError } from '../errors.js';
import type { HookContext } from './hook-context.js';
import type { Plugin } from './plugin.js';

export type PluginState = 'loaded' | 'initialized' | 'enabled' | 'disabled' | 'deinitialized' | 'unloaded';
type Transition = 'init' | 'enable' | 'disable' | 'deinit' | 'unload' | 'executeHook';

/** Which states each transition may start from, and where it leads. */
const TRANSITIONS: Record<Transition, { from: readonly PluginState[]; to: PluginState | null }> = {
  init: { from: ['loaded'], to: 'initialized' },
  enable: { from: ['initialized', 'disabled'], to: 'enabled' },
  disable: { from: ['enabled'], to: 'disabled' },
  deinit: { from: ['initialized', 'disabled'], to: 'deinitialized' },
  unload: { from: ['loaded', 'deinitialized'], to: 'unloaded' },
  executeHook: { from: ['enabled'], to: null },
};

/** What one plugin did with one hook. */
export type HookAction = 'continue' | 'stop' | 'cancel';

export interface HookCallResult {
  /** The code the plugin returned (0, 1 or 2). */
  readonly code: number;
  /** The code read together with the cancel flag. */
  readonly action: HookAction;
}

const RESULTS: readonly HookCallResult[] = [
  { code: 0, action: 'continue' },
  { code: 1, action: 'stop' },
  { code: 2, action: 'cancel' },
];
const CANCELLED: readonly HookCallResult[] = RESULTS.map(({ code }) => ({ code, action: 'cancel' }));

/**
 * A plugin with its lifecycle state. Every call checks the transition and
 * turns a non-zero return into a coded error naming the plugin, whatever
 * backend runs it.
 */
export class PluginInstance {
  readonly plugin: Plugin;
  #state: PluginState = 'loaded';

  constructor(plugin: Plugin) {
    this.plugin = plugin;
  }

  get name(): string {
    return this.plugin.metadata.name;
  }

  get state(): PluginState {
    return this.#state;
  }

  #enter(transition: Transition): void {
    const rule = TRANSITIONS[transition];
    if (!rule.from.includes(this.#state)) {
      throw hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.name}": cannot ${transition} in state ${this.#state} (allowed from ${rule.from.join(', ')})`);
    }
  }

  #leave(transition: Transition): void {
    const to = TRANSITIONS[transition].to;
    if (to !== null) this.#state = to;
  }

  /**
   * Inits the plugin. When init fails (a non-zero code, or a failure of the
   * call itself), deinit is called so that the plugin can free what init
   * half-built (abi/smtp_plugin.h), and the plugin is left to be unloaded.
   */
  async init(configJson: string): Promise<void> {
    this.#enter('init');
    let failure: unknown;
    try {
      const code = await this.plugin.init(configJson);
      if (code === 0) {
        this.#leave('init');
        return;
      }
      failure = hostError('SMTP_E_PLUGIN_INIT', `plugin "${this.name}" (${this.plugin.path}): init returned ${code}`);
    } catch (error) {
      failure = error;
    }
    try {
      await this.plugin.deinit();
    } catch {
      // The init failure is what the caller hears of.
    }
    this.#state = 'deinitialized';
    throw failure;
  }

  async enable(): Promise<void> {
    this.#enter('enable');
    const code = await this.plugin.enable();
    if (code !== 0) throw hostError('SMTP_E_PLUGIN_ENABLE', `plugin "${this.name}": enable returned ${code}`);
    this.#leave('enable');
  }

  /** Takes the plugin out of the chain at once (before its disable runs), whatever disable answers. */
  async disable(): Promise<void> {
    this.#enter('disable');
    this.#leave('disable');
    const code = await this.plugin.disable();
    if (code !== 0) throw hostError('SMTP_E_PLUGIN_DISABLE', `plugin "${this.name}": disable returned ${code}`);
  }

  async deinit(): Promise<void> {
    this.#enter('deinit');
    await this.plugin.deinit();
    this.#leave('deinit');
  }

  async unload(): Promise<void> {
    this.#enter('unload');
    await this.plugin.unload();
    this.#leave('unload');
  }

  /**
   * Runs one hook; the context's cancel flag wins over the code. A plugin
   * whose hooks run off the event loop answers with a promise (what the
   * manager awaits); the others answer at once.
   */
  executeHookAsync(context: HookContext): HookCallResult | Promise<HookCallResult> {
    // The transition table's answer for a hook call, without its lookup: this runs for every plugin of every event.
    if (this.#state !== 'enabled') this.#enter('executeHook');
    const code = this.plugin.executeHook(context);
    return typeof code === 'number' ? this.#result(code, context) : code.then((settled) => this.#result(settled, context));
  }

  /** Runs one hook of a plugin that answers at once (not `blocking`). */
  executeHook(context: HookContext): HookCallResult {
    // Refused before the call: a started call would go on changing the context.
    if (this.plugin.blocking === true) throw hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.name}" runs its hooks off the event loop: use executeHookAsync`);
    return this.executeHookAsync(context) as HookCallResult;
  }

  /**
   * What a call made on this plugin's behalf answered (the runtime called a
   * run of native plugins in one crossing: NativeRun), read as executeHook
   * reads its own call's code. The caller checked the plugin is enabled.
   */
  resultOf(code: number, context: HookContext): HookCallResult {
    return this.#result(code, context);
  }

  #result(code: number, context: HookContext): HookCallResult {
    if (code !== HookCode.CONTINUE && code !== HookCode.STOP && code !== HookCode.CANCEL) {
      throw hostError('SMTP_E_PLUGIN_HOOK_CODE', `plugin "${this.name}": ${context.hook} returned ${code} (expected 0, 1 or 2)`);
    }
    if (code === HookCode.CANCEL) context.cancel = true;
    return (context.cancel ? CANCELLED : RESULTS)[code]!;
  }

  /** Disables (if enabled), deinits (if initialized) and unloads. */
  async shutdown(): Promise<void> {
    if (this.#state === 'enabled') {
      try {
        await this.disable();
      } catch {
        // Already out of the chain; deinit and unload still run.
      }
    }
    if (this.#state === 'initialized' || this.#state === 'disabled') await this.deinit();
    if (this.#state === 'loaded' || this.#state === 'deinitialized') await this.unload();
  }
}
