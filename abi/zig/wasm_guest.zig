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

/// The clock, the network and the counters come from the host as imports of
/// module "smtp_host"; the host checks every address against the plugin's
/// grants, every counter call against allow_counters, and bounds every wait
/// by the hook's deadline.
const imports = struct {
    extern "smtp_host" fn now_unix_ms() i64;
    extern "smtp_host" fn net_connect(address: [*]const u8, address_len: usize, timeout_ms: u32) i32;
    extern "smtp_host" fn net_send(handle: i32, data: [*]const u8, len: usize, timeout_ms: u32) i32;
    extern "smtp_host" fn net_recv(handle: i32, buf: [*]u8, cap: usize, timeout_ms: u32) i32;
    extern "smtp_host" fn net_close(handle: i32) i32;
    extern "smtp_host" fn counter_incr(key: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32) i64;
    /// ABI 1.3: copies the tail of a lazy load (the message body) to `dst`.
    extern "smtp_host" fn context_tail(dst: ?[*]u8, len: usize) i32;
};

fn fetchTail(dst: ?[*]u8, len: usize) i32 {
    return imports.context_tail(dst, len);
}

const GuestIo = struct {
    pub fn nowUnixMs(ctx: *const plugin.HookContext) callconv(.c) i64 {
        _ = ctx;
        return imports.now_unix_ms();
    }
    pub fn netConnect(ctx: *plugin.HookContext, address: [*]const u8, address_len: usize, timeout_ms: u32) callconv(.c) i32 {
        _ = ctx;
        return imports.net_connect(address, address_len, timeout_ms);
    }
    pub fn netSend(ctx: *plugin.HookContext, handle: i32, data: [*]const u8, len: usize, timeout_ms: u32) callconv(.c) i32 {
        _ = ctx;
        return imports.net_send(handle, data, len, timeout_ms);
    }
    pub fn netRecv(ctx: *plugin.HookContext, handle: i32, buf: [*]u8, cap: usize, timeout_ms: u32) callconv(.c) i32 {
        _ = ctx;
        return imports.net_recv(handle, buf, cap, timeout_ms);
    }
    pub fn netClose(ctx: *plugin.HookContext, handle: i32) callconv(.c) i32 {
        _ = ctx;
        return imports.net_close(handle);
    }
    pub fn counterIncr(ctx: *plugin.HookContext, key: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32) callconv(.c) i64 {
        _ = ctx;
        return imports.counter_incr(key, key_len, by, window_seconds);
    }
};

const guest_api = host.hostApi(GuestIo);

export fn smtp_wasm_context_create(key_bytes_max: usize, value_bytes_max: usize, keys_max: usize) ?*plugin.HookContext {
    return host.createContext(allocator, .{ .key_bytes_max = key_bytes_max, .value_bytes_max = value_bytes_max, .keys_max = keys_max }, &guest_api);
}

/// The context reads its keys from `buf` when asked (nothing is copied): the
/// host keeps that buffer unchanged until the next load.
export fn smtp_wasm_context_load(ctx: *plugin.HookContext, hook_type: i32, buf: [*]const u8, len: usize) i32 {
    return @intFromEnum(host.loadEncoded(ctx, hook_type, buf[0..len], &.{}));
}

/// smtp_wasm_context_load for a text the host encoded and checked against
/// this context's bounds itself, with its `entries` count: the load walks
/// nothing (metadata_host.loadChecked).
export fn smtp_wasm_context_load_checked(ctx: *plugin.HookContext, hook_type: i32, buf: [*]const u8, len: usize, entries: usize) i32 {
    return @intFromEnum(host.loadChecked(ctx, hook_type, buf[0..len], &.{}, entries));
}

/// smtp_wasm_context_load_checked without the tail's bytes (ABI 1.3): they
/// stay in the host until the plugin reads the tail's key, which copies them
/// in through smtp_host.context_tail (metadata_host.loadLazy). `tail_at` is
/// where the tail's value belongs in `buf`, right after its length.
export fn smtp_wasm_context_load_lazy(ctx: *plugin.HookContext, hook_type: i32, buf: [*]const u8, len: usize, entries: usize, tail_at: usize, tail_len: usize) i32 {
    return @intFromEnum(host.loadLazy(ctx, hook_type, buf[0..len], entries, tail_at, tail_len, fetchTail));
}

/// Bit 0: cancel; bit 1: a refused connection (unused here: the host sees
/// those itself); bits 2 and up: keys set since the last take.
export fn smtp_wasm_context_status(ctx: *const plugin.HookContext) u32 {
    return host.contextStatus(ctx);
}

export fn smtp_wasm_take_changes(ctx: *plugin.HookContext, out: [*]u8, cap: usize) i32 {
    return @intCast(host.takeChanges(ctx, out[0..cap]));
}
