import koffi from 'koffi';

/**
 * koffi mirrors of the structs in abi/smtp_plugin.h. Function pointers are
 * typed `void *` here: the host calls them through src/runtime/host-runtime.ts.
 * test/abi/layout.test.ts checks every size and offset against the header.
 */
export const AllocatorStruct = koffi.struct('smtp_allocator', {
  struct_size: 'uint32_t',
  reserved: 'uint32_t',
  ctx: 'void *',
  alloc: 'void *',
  free: 'void *',
});

export const HostApiStruct = koffi.struct('smtp_host_api', {
  struct_size: 'uint32_t',
  reserved: 'uint32_t',
  get_metadata: 'void *',
  set_metadata: 'void *',
  now_unix_ms: 'void *',
  net_connect: 'void *',
  net_send: 'void *',
  net_recv: 'void *',
  net_close: 'void *',
  counter_incr: 'void *',
});

export const HookContextStruct = koffi.struct('smtp_hook_context', {
  struct_size: 'uint32_t',
  hook_type: 'int32_t',
  cancel: 'bool',
  reserved: koffi.array('uint8_t', 7),
  host: 'void *',
  host_data: 'void *',
});

/** smtp_plugin_metadata's fields as ABI 1.0 laid them out. */
const METADATA_FIELDS_1_0 = {
  name: 'void *',
  version: 'void *',
  author: 'void *',
  description: 'void *',
  license: 'void *',
  dependencies: 'void *',
  min_server_version: 'void *',
  max_server_version: 'void *',
  handled_hooks: 'uint64_t',
} as const;

export const PluginMetadataStruct = koffi.struct('smtp_plugin_metadata', { ...METADATA_FIELDS_1_0, flags: 'uint64_t' });

/** A plugin's metadata as ABI 1.0 laid it out (no `flags`): what the host may read from every plugin. */
export const PluginMetadataV10Struct = koffi.struct('smtp_plugin_metadata_1_0', METADATA_FIELDS_1_0);

export const PluginInterfaceStruct = koffi.struct('smtp_plugin_interface', {
  init: 'void *',
  deinit: 'void *',
  get_metadata: 'void *',
  execute_hook: 'void *',
  enable: 'void *',
  disable: 'void *',
});

/** The six interface functions, in the header's order. */
export const INTERFACE_FIELDS = ['init', 'deinit', 'get_metadata', 'execute_hook', 'enable', 'disable'] as const;

export const LAYOUT_STRUCTS = {
  smtp_allocator: AllocatorStruct,
  smtp_host_api: HostApiStruct,
  smtp_hook_context: HookContextStruct,
  smtp_plugin_metadata: PluginMetadataStruct,
  smtp_plugin_interface: PluginInterfaceStruct,
} as const;

export const InitProto = koffi.proto('int smtp_init_fn(void *host_allocator, const char *config_json)');
export const VoidProto = koffi.proto('void smtp_void_fn(void)');
export const IntProto = koffi.proto('int smtp_int_fn(void)');
export const PointerProto = koffi.proto('void *smtp_pointer_fn(void)');
export const AbiVersionProto = koffi.proto('uint32_t smtp_abi_version_fn(void)');
