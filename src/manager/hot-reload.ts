import { closeSync, openSync, readFileSync, readSync, statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { fileKind } from '../plugin/backends.js';
import { isHostError } from '../errors.js';
import type { Logger } from '../log.js';
import type { PluginManager } from './plugin-manager.js';

/** How long a plugin file must stay unchanged before it is loaded: builds write in several steps. */
export const RELOAD_SETTLE_MS = 300;
/** Checks of a settling file before giving up on this change (the next change retries). */
const SETTLE_CHECKS_MAX = 50;

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const WASM_MAGIC = Buffer.from([0x00, 0x61, 0x73, 0x6d]);

function header(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(4);
    readSync(fd, buf, 0, 4, 0);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/**
 * A file that is still being written is not loaded: it must keep its size and
 * modification time for the settle window, start with the right magic, and a
 * wasm module must validate as a whole. A native library that is truncated
 * but well-headed fails in dlopen, which the manager reports; the old build
 * keeps serving either way.
 */
export function looksComplete(path: string): boolean {
  const magic = header(path);
  const extension = extname(path).toLowerCase();
  if (extension === '.wasm') {
    if (!magic.equals(WASM_MAGIC)) return false;
    const bytes = readFileSync(path);
    // WebAssembly.validate knows core modules only; loading checks a component.
    return fileKind(path) === 'component' || WebAssembly.validate(bytes);
  }
  return process.platform !== 'linux' || magic.equals(ELF_MAGIC);
}

/**
 * The seed guide's development-mode hot reload: watches the folders of the
 * loaded plugins and, when a plugin's file changes and settles, asks the
 * manager to replace that plugin with the new build.
 */
export class HotReloader {
  readonly #manager: PluginManager;
  readonly #logger: Logger;
  readonly #settleMs: number;
  #watchers: FSWatcher[] = [];
  #timers = new Map<string, NodeJS.Timeout>();
  #reloading: Promise<void> = Promise.resolve();
  #stopped = false;

  constructor(manager: PluginManager, logger: Logger, settleMs = RELOAD_SETTLE_MS) {
    this.#manager = manager;
    this.#logger = logger;
    this.#settleMs = settleMs;
  }

  start(): void {
    const dirs = new Set([this.#manager.directory, this.#manager.wasmDirectory].filter((dir): dir is string => dir !== undefined).map((dir) => resolve(dir)));
    for (const dir of dirs) {
      try {
        this.#watchers.push(watch(dir, (_event, file) => file && this.#changed(join(dir, file.toString()))));
      } catch (error) {
        this.#logger.warn({ dir, err: (error as Error).message }, 'hot reload cannot watch this folder');
      }
    }
  }

  /** Stops watching; waits for a reload in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const watcher of this.#watchers) watcher.close();
    this.#watchers = [];
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
    await this.#reloading;
  }

  /** Resolves when the reloads queued so far have finished. */
  settled(): Promise<void> {
    return this.#reloading;
  }

  #changed(path: string): void {
    const name = this.#manager.pluginAt(path);
    if (name === undefined || this.#stopped) return;
    clearTimeout(this.#timers.get(path));
    this.#timers.set(path, setTimeout(() => this.#settle(path, name, 0, ''), this.#settleMs));
  }

  /** Waits until the file stops changing, then reloads (reloads run one at a time). */
  #settle(path: string, name: string, checks: number, previous: string): void {
    this.#timers.delete(path);
    if (this.#stopped) return;
    let state: string;
    try {
      const stat = statSync(path);
      state = `${stat.size}:${stat.mtimeMs}`;
    } catch {
      return; // removed, or being replaced: the next event retries
    }
    if (state !== previous) {
      // Still changing after every check: wait for the next change event instead.
      if (checks >= SETTLE_CHECKS_MAX) return;
      this.#timers.set(path, setTimeout(() => this.#settle(path, name, checks + 1, state), Math.max(50, this.#settleMs / 4)));
      return;
    }
    this.#reloading = this.#reloading.then(() => this.#reload(path, name));
  }

  async #reload(path: string, name: string): Promise<void> {
    if (this.#stopped) return;
    try {
      if (!looksComplete(path)) {
        this.#logger.warn({ plugin: name, path }, 'hot reload skipped an incomplete build; the old one keeps serving');
        return;
      }
      const started = Date.now();
      const next = await this.#manager.replacePlugin(name);
      this.#logger.info({ plugin: name, path: basename(path), dir: dirname(path), version: next.plugin.metadata.version, ms: Date.now() - started }, 'plugin hot-reloaded');
    } catch (error) {
      this.#logger.error({ plugin: name, path, code: isHostError(error) ? error.code : undefined, err: (error as Error).message }, 'hot reload failed; the old build keeps serving');
    }
  }
}
