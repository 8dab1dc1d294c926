//! The native half of the Node host: the metadata store behind every hook
//! context handed to a native plugin, and a trampoline that calls the
//! plugin's execute_hook. Keeping the store native means a plugin's
//! getMetadata/setMetadata never cross back into JavaScript; the host pays
//! one koffi call per hook call, plus one more only when the plugin changed
//! something. Built by scripts/build-runtime.mjs into build/native/.
const std = @import("std");
const host = @import("smtp-host");
const plugin = host.plugin;

const c_allocator = std.heap.c_allocator;

fn mallocAlloc(ctx: ?*anyopaque, len: usize, alignment: usize) callconv(.c) ?*anyopaque {
    _ = ctx;
    if (alignment == 0 or !std.math.isPowerOfTwo(alignment)) return null;
    const raw = c_allocator.rawAlloc(len, std.mem.Alignment.fromByteUnits(alignment), 0) orelse return null;
    return @ptrCast(raw);
}

fn mallocFree(ctx: ?*anyopaque, ptr: ?*anyopaque, len: usize, alignment: usize) callconv(.c) void {
    _ = ctx;
    const p: [*]u8 = @ptrCast(ptr orelse return);
    c_allocator.rawFree(p[0..len], std.mem.Alignment.fromByteUnits(alignment), 0);
}

const host_allocator: plugin.Allocator = .{ .ctx = null, .alloc = mallocAlloc, .free = mallocFree };

/// The allocator passed to every native plugin's init (libc malloc).
export fn smtp_host_allocator() *const plugin.Allocator {
    return &host_allocator;
}

export fn smtp_host_context_create(key_bytes_max: usize, value_bytes_max: usize, keys_max: usize) ?*plugin.HookContext {
    const ctx = c_allocator.create(plugin.HookContext) catch return null;
    ctx.* = host.initContext(c_allocator, .message_received, .{
        .key_bytes_max = key_bytes_max,
        .value_bytes_max = value_bytes_max,
        .keys_max = keys_max,
    });
    return ctx;
}

export fn smtp_host_context_destroy(ctx: *plugin.HookContext) void {
    host.deinitContext(ctx);
    c_allocator.destroy(ctx);
}

fn readU32(bytes: []const u8) u32 {
    return std.mem.readInt(u32, bytes[0..4], .little);
}

/// Replaces the context's content: hook type, cancel cleared, and entries
/// encoded as repeated [u32 key_len][key][u32 value_len][value], little
/// endian. Returns an smtp_status; on error the context holds a prefix.
export fn smtp_host_context_load(ctx: *plugin.HookContext, hook_type: c_int, buf: [*]const u8, len: usize) c_int {
    const store = host.storeOf(ctx);
    store.clear();
    ctx.hook_type = @enumFromInt(hook_type);
    ctx.cancel = false;
    const bytes = buf[0..len];
    var at: usize = 0;
    while (at < bytes.len) {
        if (bytes.len - at < 4) return @intFromEnum(plugin.Status.invalid);
        const key_len = readU32(bytes[at..]);
        at += 4;
        if (bytes.len - at < key_len + 4) return @intFromEnum(plugin.Status.invalid);
        const key = bytes[at .. at + key_len];
        at += key_len;
        const value_len = readU32(bytes[at..]);
        at += 4;
        if (bytes.len - at < value_len) return @intFromEnum(plugin.Status.invalid);
        const status = store.put(key, bytes[at .. at + value_len], false);
        if (status != .ok) return @intFromEnum(status);
        at += value_len;
    }
    return @intFromEnum(plugin.Status.ok);
}

/// Calls `execute_hook(ctx)` and packs what the host needs into one value:
/// bits 0-31 the returned code (as u32), bit 32 the cancel flag, bits 33 and
/// up the number of keys the plugin set.
export fn smtp_host_call_hook(execute_hook: *const fn (*plugin.HookContext) callconv(.c) c_int, ctx: *plugin.HookContext) i64 {
    const code = execute_hook(ctx);
    const store = host.storeOf(ctx);
    const code_bits: u32 = @bitCast(code);
    const cancel_bit: i64 = if (ctx.cancel) 1 else 0;
    return @as(i64, code_bits) | (cancel_bit << 32) | (@as(i64, @intCast(store.changed_count)) << 33);
}

/// Writes the keys set by plugins since the last take, in the load format,
/// and clears their marks. Returns the bytes written, or minus the bytes
/// needed when `cap` is too small (nothing is cleared then).
export fn smtp_host_take_changes(ctx: *plugin.HookContext, out: [*]u8, cap: usize) i64 {
    const store = host.storeOf(ctx);
    var needed: usize = 0;
    for (store.entries[0..store.len]) |entry| {
        if (entry.changed) needed += 8 + entry.key.len + entry.value.len;
    }
    if (needed > cap) return -@as(i64, @intCast(needed));
    var at: usize = 0;
    for (store.entries[0..store.len]) |entry| {
        if (!entry.changed) continue;
        std.mem.writeInt(u32, out[at..][0..4], @intCast(entry.key.len), .little);
        at += 4;
        @memcpy(out[at .. at + entry.key.len], entry.key);
        at += entry.key.len;
        std.mem.writeInt(u32, out[at..][0..4], @intCast(entry.value.len), .little);
        at += 4;
        @memcpy(out[at .. at + entry.value.len], entry.value);
        at += entry.value.len;
    }
    store.clearChanges();
    return @intCast(at);
}

/// strnlen: the length of a C string, or -1 when no NUL comes within `max`.
export fn smtp_host_strnlen(s: [*]const u8, max: usize) isize {
    var i: usize = 0;
    while (i <= max) : (i += 1) {
        if (s[i] == 0) return @intCast(i);
    }
    return -1;
}
