import { ABI_VERSION_1_1 } from './hooks.js';

/**
 * The sandbox ABI as the host reads it (abi/smtp_wasm.h): the wasm32 layout
 * of smtp_plugin_metadata, which the host decodes out of a module's memory,
 * the exports it calls and the status bits it reads.
 * test/abi/wasm-layout.test.ts checks every number here against the header
 * compiled for wasm32 and against the Zig binding built for wasm32.
 */

/** Pointers and size_t on wasm32. */
export const WASM32_POINTER_BYTES = 4;

/** smtp_plugin_metadata on wasm32: eight 4-byte pointers, then two u64, little endian. */
export const WASM32_METADATA = {
  /** The string fields, each a pointer at index * 4 (dependencies: a pointer to a NULL-terminated array of 4-byte pointers). */
  pointerFields: ['name', 'version', 'author', 'description', 'license', 'dependencies', 'min_server_version', 'max_server_version'],
  offsets: {
    name: 0,
    version: 4,
    author: 8,
    description: 12,
    license: 16,
    dependencies: 20,
    min_server_version: 24,
    max_server_version: 28,
    handled_hooks: 32,
    flags: 40,
  },
  /** A 1.0 plugin's struct ends before flags. */
  size_1_0: 40,
  size_1_1: 48,
} as const;

export type WasmMetadataField = keyof typeof WASM32_METADATA.offsets;

/** The bytes of smtp_plugin_metadata the host may read from a plugin exporting `abiVersion`. */
export function wasmMetadataSize(abiVersion: number): number {
  return abiVersion >= ABI_VERSION_1_1 ? WASM32_METADATA.size_1_1 : WASM32_METADATA.size_1_0;
}

/** The plugin's exports the sandbox calls: the ABI marker and the six functions (not smtp_plugin_get_interface). */
export const WASM_PLUGIN_EXPORTS = [
  'smtp_plugin_abi_version', 'smtp_plugin_init', 'smtp_plugin_deinit', 'smtp_plugin_get_metadata',
  'smtp_plugin_execute_hook', 'smtp_plugin_enable', 'smtp_plugin_disable',
] as const;

/** The guest half's exports, in abi/smtp_wasm.h's order. */
export const WASM_GUEST_EXPORTS = [
  'smtp_wasm_alloc', 'smtp_wasm_free', 'smtp_wasm_host_allocator', 'smtp_wasm_context_create',
  'smtp_wasm_context_load', 'smtp_wasm_context_status', 'smtp_wasm_take_changes',
] as const;

/** Guest exports the host uses when present (a module built with an older guest half lacks them). */
export const WASM_GUEST_OPTIONAL_EXPORTS = ['smtp_wasm_context_load_checked', 'smtp_wasm_context_load_lazy'] as const;

/** The "smtp_host" import that copies a lazy load's tail (the message body) into the module (ABI 1.3). */
export const WASM_TAIL_IMPORT_NAME = 'context_tail';

/** smtp_wasm_context_status's bits. */
export const WASM_CONTEXT_STATUS = {
  CANCEL: 1 << 0,
  NET_DENIED: 1 << 1,
  /** status >>> CHANGED_SHIFT: keys the plugin set since the last take. */
  CHANGED_SHIFT: 2,
} as const;

/** Bytes of each length in the wire format ([u32 key_len][key][u32 value_len][value]). */
export const WASM_WIRE_LENGTH_BYTES = 4;
