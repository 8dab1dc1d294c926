import { hookValue, isHookName, type HookName } from '../abi/hooks.js';
import { hostError } from '../errors.js';

export type MetadataValue = string | Uint8Array;

/** Bounds on a context's metadata, enforced on every set (host or plugin). */
export interface MetadataLimits {
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly keysMax: number;
}

export const DEFAULT_METADATA_LIMITS: MetadataLimits = Object.freeze({
  keyBytesMax: 256,
  valueBytesMax: 64 * 1024 * 1024,
  keysMax: 1024,
});

const utf8 = new TextDecoder();
let nextContextId = 1;

/**
 * The context of one hook event: the hook, the cancel flag and the metadata
 * (binary-safe byte strings by key). One context runs through the whole
 * plugin chain, so what one plugin sets the next one reads.
 */
export class HookContext {
  readonly hook: HookName;
  readonly hookValue: number;
  readonly limits: MetadataLimits;
  /** Set by a plugin (or by the host) to cancel the operation. */
  cancel = false;
  /** Identifies this context to backends that cache a copy of it. */
  readonly id = nextContextId++;
  #values = new Map<string, MetadataValue>();
  #version = 0;
  /** Keys plugins set (null until one does): what a later stage inherits. */
  #pluginKeys: Set<string> | null = null;

  constructor(hook: HookName, limits: MetadataLimits = DEFAULT_METADATA_LIMITS) {
    if (!isHookName(hook)) throw hostError('SMTP_E_HOOK_UNKNOWN', `unknown hook "${String(hook)}"`);
    this.hook = hook;
    this.hookValue = hookValue(hook);
    this.limits = limits;
  }

  /**
   * Bumped by every change, so a backend holding a copy of the metadata
   * knows when to refresh it. A backend that copies a plugin's changes back
   * records the version after applying them: its own copy already has them,
   * every other copy is stale.
   */
  get version(): number {
    return this.#version;
  }

  setMetadata(key: string, value: MetadataValue): void {
    this.#check(key, value);
    this.#values.set(key, value);
    this.#version++;
  }

  /** The value as UTF-8 text (invalid bytes become U+FFFD), or undefined. */
  getMetadata(key: string): string | undefined {
    const value = this.#values.get(key);
    return value === undefined || typeof value === 'string' ? value : utf8.decode(value);
  }

  /** The value as bytes, or undefined. */
  getMetadataBytes(key: string): Uint8Array | undefined {
    const value = this.#values.get(key);
    return typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  }

  hasMetadata(key: string): boolean {
    return this.#values.has(key);
  }

  /** Every key and its raw value, in insertion order. */
  entries(): IterableIterator<[string, MetadataValue]> {
    return this.#values.entries();
  }

  get size(): number {
    return this.#values.size;
  }

  /** Every key as text: what `plugin call` prints. */
  toJSON(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const key of this.#values.keys()) out[key] = this.getMetadata(key)!;
    return out;
  }

  /** Applies a plugin's set, copied back by a backend. */
  applyPluginChange(key: string, value: Uint8Array): void {
    this.#check(key, value);
    this.#values.set(key, value);
    this.#version++;
    (this.#pluginKeys ??= new Set()).add(key);
  }

  /** The keys plugins set during this event, with their values. */
  *pluginChanges(): IterableIterator<[string, MetadataValue]> {
    if (this.#pluginKeys === null) return;
    for (const key of this.#pluginKeys) yield [key, this.#values.get(key)!];
  }

  #check(key: string, value: MetadataValue): void {
    const keyBytes = Buffer.byteLength(key, 'utf8');
    const valueBytes = typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength;
    if (keyBytes === 0 || keyBytes > this.limits.keyBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `metadata key of ${keyBytes} bytes (allowed 1 to ${this.limits.keyBytesMax})`);
    }
    if (valueBytes > this.limits.valueBytesMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `metadata "${key}" of ${valueBytes} bytes (at most ${this.limits.valueBytesMax})`);
    }
    if (!this.#values.has(key) && this.#values.size >= this.limits.keysMax) {
      throw hostError('SMTP_E_METADATA_LIMIT', `more than ${this.limits.keysMax} metadata keys`);
    }
  }
}
