import type { BackendName } from './backends.js';
import type { DenialLog } from './denied-log.js';
import type { HookContext } from './hook-context.js';

/** smtp_plugin_metadata, copied and validated at load. */
export interface PluginMetadata {
  readonly name: string;
  readonly version: string;
  readonly author: string;
  readonly description: string;
  readonly license: string;
  /** "name" or "name@<semver range>". */
  readonly dependencies: readonly string[];
  readonly minServerVersion: string | null;
  readonly maxServerVersion: string | null;
  /** SMTP_HOOK_BIT bits of the hooks handled; 0n means every hook. */
  readonly handledHooks: bigint;
  /** smtp_plugin_metadata.flags (PluginFlag bits); 0n before ABI 1.1. */
  readonly flags: bigint;
}

export type PluginKind = 'native' | 'wasm' | 'component' | 'milter';

/**
 * One loaded plugin, whatever runs it. Backends only translate calls; the
 * lifecycle rules and the meaning of return codes live in PluginInstance,
 * so every backend behaves alike. Every call may answer at once or with a
 * promise: a backend whose plugin runs in this thread answers at once, one
 * whose plugin runs elsewhere (a worker, a child process) with a promise.
 */
export interface Plugin {
  readonly kind: PluginKind;
  /** The backend running it (backends.ts): what isIsolated() answers from. */
  readonly backend: BackendName;
  /** The file the plugin was loaded from. */
  readonly path: string;
  /** The SMTP_PLUGIN_ABI_VERSION the plugin was built against. */
  readonly abiVersion: number;
  readonly metadata: PluginMetadata;
  /** Returns init's code (0 = success). */
  init(configJson: string): number | Promise<number>;
  enable(): number | Promise<number>;
  disable(): number | Promise<number>;
  /**
   * True when hooks run off the event loop (a blocking native plugin on
   * koffi's pool, a sandboxed plugin in its worker): executeHook then
   * returns a promise. Calls still never overlap within one plugin.
   */
  readonly blocking?: boolean;
  /** Runs one hook; returns the raw code and sets context.cancel if the plugin did. */
  executeHook(context: HookContext): number | Promise<number>;
  /**
   * Set by a native plugin whose hooks run in this thread on the context
   * shared by every native plugin without grants: consecutive such plugins of
   * a chain are called in one crossing (src/manager/native-runs.ts), which
   * is what a call of executeHook on each would do.
   */
  readonly sharedNativeHook?: SharedNativeHook | null;
  deinit(): void | Promise<void>;
  /** Releases the code; nothing may be called afterwards. */
  unload(): void | Promise<void>;
  /** What the admin listener reports of a backend that restarts or bounds its plugin; absent where neither applies. */
  runtimeStats?(): PluginRuntimeStats;
}

export interface PluginRuntimeStats {
  /** Times the plugin's process, worker or sandbox instance was brought back after a crash, trap or deadline. */
  readonly restarts: number;
  /** Bytes of sandbox memory in use (the instance's linear memory), or null where the host cannot see it cheaply. */
  readonly memoryBytes: number | null;
}

/** A native plugin's execute_hook on the shared context, and who hears of what it was refused. */
export interface SharedNativeHook {
  /** The execute_hook function pointer. */
  readonly executeHook: bigint;
  readonly onDenied: DenialLog;
}
