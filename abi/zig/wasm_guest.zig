//! The guest half of the sandbox, linked into every WebAssembly plugin by
//! `@import("smtp-server")` (the plugin source needs no `if`). The host copies
//! metadata in and out through these exports (the proxy-wasm pattern); inside
//! the module, getMetadata/setMetadata run against the same store as native
//! plugins (metadata_host.zig), so a hook call crosses the sandbox boundary a
//! fixed number of times, whatever the plugin reads and writes.
const std = @import("std");
const host = @import("metadata_host.zig");
const plugin = host.plugin;

const allocator = std.heap.wasm_allocator;

/// Buffers the host fills or reads (config text, encoded metadata).
const buffer_alignment = std.mem.Alignment.fromByteUnits(16);

export fn smtp_wasm_alloc(len: usize) ?[*]u8 {
    return allocator.rawAlloc(@max(len, 1), buffer_alignment, 0);
}

export fn smtp_wasm_free(ptr: [*]u8, len: usize) void {
    allocator.rawFree(ptr[0..@max(len, 1)], buffer_alignment, 0);
}

const guest_allocator = plugin.Allocator.wrap(&allocator);

/// The allocator the host passes to init: the module's own linear memory,
/// capped by the host's memory limit.
export fn smtp_wasm_host_allocator() *const plugin.Allocator {
    return &guest_allocator;
}

export fn smtp_wasm_context_create(key_bytes_max: usize, value_bytes_max: usize, keys_max: usize) ?*plugin.HookContext {
    return host.createContext(allocator, .{ .key_bytes_max = key_bytes_max, .value_bytes_max = value_bytes_max, .keys_max = keys_max });
}

export fn smtp_wasm_context_load(ctx: *plugin.HookContext, hook_type: i32, buf: [*]const u8, len: usize) i32 {
    return @intFromEnum(host.loadEncoded(ctx, hook_type, buf[0..len]));
}

/// Bit 0: cancel; bits 1 and up: keys set since the last take.
export fn smtp_wasm_context_status(ctx: *const plugin.HookContext) u32 {
    return host.contextStatus(ctx);
}

export fn smtp_wasm_take_changes(ctx: *plugin.HookContext, out: [*]u8, cap: usize) i32 {
    return @intCast(host.takeChanges(ctx, out[0..cap]));
}
