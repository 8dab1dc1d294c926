//! The plugin API of the seed guide, over the C ABI of abi/smtp_plugin.h.
//! Every `extern struct` here mirrors a struct of the header; the sizes are
//! asserted below and test/abi/layout.test.ts compares every offset.
const std = @import("std");
const builtin = @import("builtin");
const metadata_host = @import("metadata_host.zig");

pub const abi_version_major: u32 = 1;
pub const abi_version_minor: u32 = 3;
/// SMTP_PLUGIN_ABI_VERSION: major in the high 16 bits, minor in the low 16.
pub const abi_version: u32 = (abi_version_major << 16) | abi_version_minor;

/// smtp_hook_type. Non-exhaustive so that a value this build does not name
/// lands in a switch's `else` prong instead of being undefined behaviour.
pub const HookType = enum(c_int) {
    message_received = 0,
    message_validated = 1,
    message_filtered = 2,
    message_stored = 3,
    message_delivered = 4,
    auth_started = 5,
    auth_completed = 6,
    auth_failed = 7,
    connection_opened = 8,
    connection_closed = 9,
    connection_upgraded = 10,
    command_received = 11,
    command_validated = 12,
    config_loaded = 13,
    config_changed = 14,
    server_starting = 15,
    server_started = 16,
    server_stopping = 17,
    server_stopped = 18,
    _,
};

pub const hook_count: usize = 19;

/// smtp_hook_result: what executeHook returns.
pub const HookResult = enum(c_int) {
    @"continue" = 0,
    stop = 1,
    cancel = 2,
};

/// smtp_status: what the host functions return.
pub const Status = enum(c_int) {
    ok = 0,
    no_memory = 1,
    too_large = 2,
    invalid = 3,
    _,
};

/// smtp_net_status: what the network host functions return on failure.
pub const NetStatus = enum(i32) {
    denied = -1,
    address = -2,
    connect = -3,
    timeout = -4,
    closed = -5,
    io = -6,
    limit = -7,
    _,
};

pub const NetError = error{
    /// The address is not in the plugin's `allow_connect` grants.
    NetDenied,
    /// Not "tcp:IPV4:PORT", "tcp:localhost:PORT" or "unix:/PATH".
    NetBadAddress,
    /// Refused, unreachable, or no such socket file.
    NetConnectFailed,
    NetTimeout,
    /// The handle is not open.
    NetClosed,
    /// The connection failed mid-way.
    NetIo,
    /// Too many handles open, or a length over its bound.
    NetLimit,
    /// The host predates ABI 1.1 and has no network functions.
    NetUnsupported,
};

fn netError(code: i32) NetError {
    return switch (@as(NetStatus, @enumFromInt(code))) {
        .denied => error.NetDenied,
        .address => error.NetBadAddress,
        .connect => error.NetConnectFailed,
        .timeout => error.NetTimeout,
        .closed => error.NetClosed,
        .limit => error.NetLimit,
        else => error.NetIo,
    };
}

/// smtp_counter_status: what HostApi.counter_incr returns on failure (ABI 1.2).
pub const CounterStatus = enum(i64) {
    denied = -1,
    unavailable = -2,
    invalid = -3,
    limit = -4,
    _,
};

pub const CounterError = error{
    /// The plugin has no `allow_counters` grant.
    CounterDenied,
    /// Redis is down and the server's `on_redis_down` is "tempfail".
    CounterUnavailable,
    /// A bad key, window or increment (the bounds below).
    CounterInvalid,
    /// The host's memory table is full.
    CounterLimit,
    /// The host predates ABI 1.2 and has no counters.
    CounterUnsupported,
};

/// Bounds on HookContext.counterIncr's arguments (SMTP_COUNTER_* in the header).
/// A key is 1 to counter_key_bytes_max bytes of UTF-8 without control
/// characters, spaces or DEL.
pub const counter_key_bytes_max: usize = 256;
pub const counter_window_seconds_max: u32 = 31 * 24 * 3600;
pub const counter_by_max: i64 = std.math.maxInt(i32);
/// The most keys the host's memory table holds, all plugins together.
pub const counter_keys_max: usize = 100_000;

fn counterError(code: i64) CounterError {
    return switch (@as(CounterStatus, @enumFromInt(code))) {
        .denied => error.CounterDenied,
        .unavailable => error.CounterUnavailable,
        .limit => error.CounterLimit,
        else => error.CounterInvalid,
    };
}

/// PluginMetadata.flags: the plugin's hooks may block (network I/O): the host
/// runs them off its event loop, one call at a time.
pub const flag_blocking: u64 = 1 << 0;

/// The bit of `hook` in PluginMetadata.handled_hooks.
pub fn hookBit(hook: HookType) u64 {
    return @as(u64, 1) << @intCast(@intFromEnum(hook));
}

/// PluginMetadata.handled_hooks for a list of hooks.
pub fn hookMask(comptime hooks: []const HookType) u64 {
    comptime var mask: u64 = 0;
    inline for (hooks) |hook| mask |= comptime hookBit(hook);
    return mask;
}

/// smtp_allocator: the host allocator handed to init. Valid from init until
/// deinit returns.
pub const Allocator = extern struct {
    struct_size: u32 = @sizeOf(Allocator),
    reserved: u32 = 0,
    ctx: ?*anyopaque,
    alloc: *const fn (ctx: ?*anyopaque, len: usize, alignment: usize) callconv(.c) ?*anyopaque,
    free: *const fn (ctx: ?*anyopaque, ptr: ?*anyopaque, len: usize, alignment: usize) callconv(.c) void,

    /// The host allocator as a `std.mem.Allocator`. It never resizes in
    /// place, so growing a buffer reallocates and copies.
    pub fn allocator(self: *const Allocator) std.mem.Allocator {
        return .{ .ptr = @constCast(self), .vtable = &std_vtable };
    }

    /// A host allocator backed by a Zig allocator: for unit tests that call
    /// `smtp_plugin_init` without a host (`Allocator.wrap(&testing.allocator)`),
    /// and for the hosts themselves (libc malloc natively, the module's own
    /// memory in WebAssembly).
    pub fn wrap(backing: *const std.mem.Allocator) Allocator {
        return .{ .ctx = @constCast(backing), .alloc = wrappedAlloc, .free = wrappedFree };
    }

    const std_vtable: std.mem.Allocator.VTable = .{
        .alloc = stdAlloc,
        .resize = stdResize,
        .remap = stdRemap,
        .free = stdFree,
    };

    fn stdAlloc(ptr: *anyopaque, len: usize, alignment: std.mem.Alignment, ret_addr: usize) ?[*]u8 {
        _ = ret_addr;
        const self: *const Allocator = @ptrCast(@alignCast(ptr));
        const raw = self.alloc(self.ctx, len, alignment.toByteUnits()) orelse return null;
        return @ptrCast(raw);
    }

    fn stdResize(ptr: *anyopaque, memory: []u8, alignment: std.mem.Alignment, new_len: usize, ret_addr: usize) bool {
        _ = .{ ptr, alignment, ret_addr };
        // free() must receive the length alloc() was given, so only a no-op
        // resize can succeed in place.
        return new_len == memory.len;
    }

    fn stdRemap(ptr: *anyopaque, memory: []u8, alignment: std.mem.Alignment, new_len: usize, ret_addr: usize) ?[*]u8 {
        _ = .{ ptr, alignment, ret_addr };
        return if (new_len == memory.len) memory.ptr else null;
    }

    fn stdFree(ptr: *anyopaque, memory: []u8, alignment: std.mem.Alignment, ret_addr: usize) void {
        _ = ret_addr;
        const self: *const Allocator = @ptrCast(@alignCast(ptr));
        self.free(self.ctx, memory.ptr, memory.len, alignment.toByteUnits());
    }

    fn wrappedAlloc(ctx: ?*anyopaque, len: usize, alignment: usize) callconv(.c) ?*anyopaque {
        const backing: *const std.mem.Allocator = @ptrCast(@alignCast(ctx.?));
        // The C caller may pass anything: refuse what is not a power of two.
        if (alignment == 0 or !std.math.isPowerOfTwo(alignment)) return null;
        const a = std.mem.Alignment.fromByteUnits(alignment);
        return @ptrCast(backing.rawAlloc(len, a, @returnAddress()) orelse return null);
    }

    fn wrappedFree(ctx: ?*anyopaque, ptr: ?*anyopaque, len: usize, alignment: usize) callconv(.c) void {
        const backing: *const std.mem.Allocator = @ptrCast(@alignCast(ctx.?));
        const p: [*]u8 = @ptrCast(ptr orelse return);
        backing.rawFree(p[0..len], std.mem.Alignment.fromByteUnits(alignment), @returnAddress());
    }
};

/// smtp_host_api: the host functions, reached through HookContext.host.
pub const HostApi = extern struct {
    struct_size: u32 = @sizeOf(HostApi),
    reserved: u32 = 0,
    // The pointers are nullable as in C: a host refuses NULL with a length.
    get_metadata: *const fn (ctx: *const HookContext, key: ?[*]const u8, key_len: usize, value: ?*?[*]const u8, value_len: ?*usize) callconv(.c) c_int,
    set_metadata: *const fn (ctx: *HookContext, key: ?[*]const u8, key_len: usize, value: ?[*]const u8, value_len: usize) callconv(.c) c_int,
    // ABI 1.1: present when struct_size covers them (HookContext checks).
    now_unix_ms: *const fn (ctx: *const HookContext) callconv(.c) i64,
    net_connect: *const fn (ctx: *HookContext, address: [*]const u8, address_len: usize, timeout_ms: u32) callconv(.c) i32,
    net_send: *const fn (ctx: *HookContext, handle: i32, data: [*]const u8, len: usize, timeout_ms: u32) callconv(.c) i32,
    net_recv: *const fn (ctx: *HookContext, handle: i32, buf: [*]u8, cap: usize, timeout_ms: u32) callconv(.c) i32,
    net_close: *const fn (ctx: *HookContext, handle: i32) callconv(.c) i32,
    // ABI 1.2: present when struct_size covers it (HookContext checks).
    counter_incr: *const fn (ctx: *HookContext, key: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32) callconv(.c) i64,

    /// True when the host's table has the ABI 1.1 functions.
    pub fn hasNet(self: *const HostApi) bool {
        return self.struct_size >= @offsetOf(HostApi, "net_close") + @sizeOf(usize);
    }

    /// True when the host's table has the ABI 1.2 counter function.
    pub fn hasCounters(self: *const HostApi) bool {
        return self.struct_size >= @offsetOf(HostApi, "counter_incr") + @sizeOf(usize);
    }
};

/// A connection opened with HookContext.connect. It belongs to the plugin and
/// outlives the hook call: keep it in a global and reuse it in later calls
/// (each call passes its own context). The host closes what is left at unload.
pub const Socket = struct {
    handle: i32,

    /// Sends all of `data`.
    pub fn send(self: Socket, ctx: *HookContext, data: []const u8, timeout_ms: u32) NetError!void {
        if (!ctx.host.hasNet()) return error.NetUnsupported;
        const code = ctx.host.net_send(ctx, self.handle, data.ptr, data.len, timeout_ms);
        if (code < 0) return netError(code);
    }

    /// Waits up to `timeout_ms` for data; returns the bytes read into `buf`
    /// (at least one), or an empty slice when the peer closed the connection.
    pub fn recv(self: Socket, ctx: *HookContext, buf: []u8, timeout_ms: u32) NetError![]u8 {
        if (!ctx.host.hasNet()) return error.NetUnsupported;
        const code = ctx.host.net_recv(ctx, self.handle, buf.ptr, buf.len, timeout_ms);
        if (code < 0) return netError(code);
        return buf[0..@intCast(code)];
    }

    /// Fills `buf` completely (error.NetClosed when the peer closes first).
    pub fn recvAll(self: Socket, ctx: *HookContext, buf: []u8, timeout_ms: u32) NetError!void {
        var at: usize = 0;
        while (at < buf.len) {
            const got = try self.recv(ctx, buf[at..], timeout_ms);
            if (got.len == 0) return error.NetClosed;
            at += got.len;
        }
    }

    pub fn close(self: Socket, ctx: *HookContext) void {
        if (!ctx.host.hasNet()) return;
        _ = ctx.host.net_close(ctx, self.handle);
    }
};

pub const SetMetadataError = error{ OutOfMemory, MetadataTooLarge, InvalidMetadata };

/// smtp_hook_context: one hook call. Valid only during executeHook.
pub const HookContext = extern struct {
    struct_size: u32 = @sizeOf(HookContext),
    hook_type: HookType,
    cancel: bool = false,
    reserved: [7]u8 = @splat(0),
    host: *const HostApi,
    host_data: ?*anyopaque,

    /// The value of `key`, or null. The slice belongs to the host and stays
    /// valid until `key` is set again or the hook call returns.
    pub fn getMetadata(self: *const HookContext, key: []const u8) ?[]const u8 {
        var value: ?[*]const u8 = null;
        var value_len: usize = 0;
        if (self.host.get_metadata(self, key.ptr, key.len, &value, &value_len) == 0) return null;
        if (value_len == 0) return "";
        return (value orelse return null)[0..value_len];
    }

    /// Copies `key` and `value` into the context.
    pub fn setMetadata(self: *HookContext, key: []const u8, value: []const u8) SetMetadataError!void {
        const status: Status = @enumFromInt(self.host.set_metadata(self, key.ptr, key.len, value.ptr, value.len));
        return switch (status) {
            .ok => {},
            .no_memory => error.OutOfMemory,
            .too_large => error.MetadataTooLarge,
            else => error.InvalidMetadata,
        };
    }

    /// Milliseconds since the Unix epoch, from the host (0 from a pre-1.1
    /// host). Unit-test contexts return metadata_host's settable test clock.
    pub fn nowMs(self: *const HookContext) i64 {
        if (!self.host.hasNet()) return 0;
        return self.host.now_unix_ms(self);
    }

    /// Opens a stream connection: "tcp:127.0.0.1:6379", "tcp:localhost:389"
    /// or "unix:/run/clamav/clamd.sock". Only addresses listed in the
    /// plugin's `allow_connect` config are granted.
    pub fn connect(self: *HookContext, address: []const u8, timeout_ms: u32) NetError!Socket {
        if (!self.host.hasNet()) return error.NetUnsupported;
        const code = self.host.net_connect(self, address.ptr, address.len, timeout_ms);
        if (code < 0) return netError(code);
        return .{ .handle = code };
    }

    /// Adds `by` (0 reads) to the host's counter `key` in the current fixed
    /// window of `window_seconds` and returns the count in that window. The
    /// counters belong to the host (shared by every server using the same
    /// Redis), namespaced by this plugin's name; the plugin needs the
    /// `allow_counters` grant. Unit-test contexts count in memory, on the
    /// test clock (metadata_host.resetTestCounters() empties them).
    pub fn counterIncr(self: *HookContext, key: []const u8, by: i64, window_seconds: u32) CounterError!i64 {
        if (!self.host.hasCounters()) return error.CounterUnsupported;
        const code = self.host.counter_incr(self, key.ptr, key.len, by, window_seconds);
        if (code < 0) return counterError(code);
        return code;
    }

    /// A context with no host, for unit tests (the guide's "Unit Tests"):
    /// metadata lives in memory taken from `allocator`; call `deinit`.
    pub fn init(allocator: std.mem.Allocator, hook_type: HookType) HookContext {
        return metadata_host.initContext(allocator, hook_type, .{});
    }

    /// Frees a context made by `init`. A host-made context is left alone.
    pub fn deinit(self: *HookContext) void {
        metadata_host.deinitContext(self);
    }
};

/// smtp_plugin_metadata. Must stay valid until the library is unloaded.
pub const PluginMetadata = extern struct {
    name: [*:0]const u8,
    version: [*:0]const u8,
    author: [*:0]const u8 = "",
    description: [*:0]const u8 = "",
    license: [*:0]const u8 = "",
    /// Plugin names, each optionally "name@<semver range>"; null for none.
    dependencies: ?[*:null]const ?[*:0]const u8 = null,
    min_server_version: ?[*:0]const u8 = null,
    max_server_version: ?[*:0]const u8 = null,
    /// hookMask(&.{...}) of the hooks handled; 0 means every hook.
    handled_hooks: u64 = 0,
    /// flag_* bits (ABI 1.1), e.g. flag_blocking.
    flags: u64 = 0,
};

/// smtp_plugin_interface: the six functions in the guide's order.
pub const PluginInterface = extern struct {
    init: *const fn (host_allocator: *const Allocator, config: [*:0]const u8) callconv(.c) c_int,
    deinit: *const fn () callconv(.c) void,
    getMetadata: *const fn () callconv(.c) ?*const PluginMetadata,
    executeHook: *const fn (context: *HookContext) callconv(.c) c_int,
    enable: *const fn () callconv(.c) c_int,
    disable: *const fn () callconv(.c) c_int,
};

comptime {
    // Sizes on 64-bit targets; wasm32 is checked the same way by its own build.
    const p = @sizeOf(usize);
    std.debug.assert(@sizeOf(HookType) == 4);
    std.debug.assert(@sizeOf(Allocator) == 8 + 3 * p);
    std.debug.assert(@sizeOf(HostApi) == 8 + 8 * p);
    std.debug.assert(@sizeOf(HookContext) == 16 + 2 * p);
    std.debug.assert(@sizeOf(PluginMetadata) == 8 * p + 16);
    std.debug.assert(@sizeOf(PluginInterface) == 6 * p);
}

test "hookMask sets one bit per hook" {
    try std.testing.expectEqual(@as(u64, 0b101), hookMask(&.{ .message_received, .message_filtered }));
    try std.testing.expectEqual(@as(u64, 1) << 18, hookBit(.server_stopped));
}

test "the host allocator round-trips through std.mem.Allocator" {
    const host = Allocator.wrap(&std.testing.allocator);
    const a = host.allocator();
    const buf = try a.alloc(u64, 100);
    defer a.free(buf);
    buf[99] = 7;
    const grown = try a.realloc(try a.dupe(u8, "abc"), 10);
    defer a.free(grown);
    try std.testing.expectEqualStrings("abc", grown[0..3]);
}
