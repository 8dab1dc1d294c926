//! smtp-plugin-child: runs one native plugin library in a process of its
//! own for the host's `isolation = "process"` backend (src/isolation/).
//!
//!   smtp-plugin-child <plugin.so> <host pid>
//!   fd 3: the channel's memfd (src/runtime/isolation_channel.zig)
//!   fd 4: this end of a socketpair (granted connections arrive on it)
//!   fd 1, 2: pipes to the host's logger
//!
//! It loads a private copy of the library (a memfd: nothing on disk, and a
//! rebuild of the file cannot touch the mapped code), confines itself
//! (src/runtime/confine.zig), then serves the host's requests: lifecycle
//! calls, and hook calls whose context it loads in place from shared memory
//! into the same metadata store the in-process runtime uses, so get/set
//! metadata never leave this process. net_connect asks the host, which
//! checks the plugin's grants and hands over a connected socket;
//! counter_incr asks the host too, which keeps the server's counters.
const std = @import("std");
const linux = std.os.linux;
const posix = std.posix;
const host = @import("smtp-host");
const plugin = host.plugin;
const net = @import("net.zig");
const channel = @import("isolation_channel.zig");
const confine = @import("confine.zig");

pub const std_options: std.Options = .{
    // A plugin's SIGSEGV must end this process with that signal (the host
    // reports it), not run a handler that prints a trace.
    .enable_segfault_handler = false,
};

const channel_fd: posix.fd_t = 3;
const socket_fd: posix.fd_t = 4;
/// Descriptors a plugin may hold: its connections (net.zig's bound), the channel socket, stdio.
const open_files_max = 96;
/// The longest plugin library this copies.
const library_bytes_max = 1 << 30;
/// Metadata strings are copied up to one byte more than the host's largest
/// bound (the description's), so that the host can tell "too long".
const metadata_text_bytes_max = 4096 + 1;
const dependencies_max = 64;

const c_allocator = std.heap.c_allocator;
const host_allocator = plugin.Allocator.wrap(&c_allocator);

extern "c" fn setvbuf(stream: *anyopaque, buf: ?[*]u8, mode: c_int, size: usize) c_int;
extern "c" var stdout: *anyopaque;
const IOLBF: c_int = 1;

var header: *channel.Header = undefined;
var map: []align(std.heap.page_size_min) u8 = undefined;
var seen_request_seq: u32 = 0;
var interface: plugin.PluginInterface = undefined;
var context: *plugin.HookContext = undefined;
var loaded = false;

fn requestArea() []u8 {
    return map[@intCast(header.request_offset)..][0..@intCast(header.request_bytes_max)];
}

fn replyArea() []u8 {
    return map[@intCast(header.reply_offset)..][0..@intCast(header.reply_bytes_max)];
}

pub fn main() u8 {
    // The host's death ends this process, whatever way it dies.
    _ = linux.prctl(@intFromEnum(linux.PR.SET_PDEATHSIG), linux.SIG.KILL, 0, 0, 0);
    var args = std.process.args();
    _ = args.next();
    const path = args.next() orelse return usage();
    const parent = std.fmt.parseInt(i32, args.next() orelse return usage(), 10) catch return usage();
    // Started by a host that is already gone: nobody will ever call.
    if (linux.getppid() != parent) return 71;
    // Nothing but stdio, the channel and the socket reaches the plugin.
    _ = linux.syscall3(.close_range, 5, std.math.maxInt(u32), 0);
    setLimit(.CORE, 0);
    setLimit(.NOFILE, open_files_max);
    _ = setvbuf(stdout, null, IOLBF, 0);
    mapChannel() catch |err| {
        std.debug.print("smtp-plugin-child: cannot map the channel: {s}\n", .{@errorName(err)});
        return 72;
    };
    context = host.createContext(c_allocator, .{
        .key_bytes_max = @intCast(header.key_bytes_max),
        .value_bytes_max = @intCast(header.value_bytes_max),
        .keys_max = @intCast(header.keys_max),
    }, &child_api) orelse return 73;
    serve(path);
}

fn usage() u8 {
    std.debug.print("usage: smtp-plugin-child <plugin library> <host pid> (started by the host, with fds 3 and 4)\n", .{});
    return 64;
}

fn setLimit(resource: linux.rlimit_resource, value: u64) void {
    const limit: linux.rlimit = .{ .cur = value, .max = value };
    _ = linux.setrlimit(resource, &limit);
}

fn mapChannel() !void {
    var st: linux.Stat = undefined;
    if (linux.E.init(linux.fstat(channel_fd, &st)) != .SUCCESS) return error.Fstat;
    const size: usize = @intCast(st.size);
    if (size < channel.header_bytes) return error.TooSmall;
    map = try posix.mmap(null, size, posix.PROT.READ | posix.PROT.WRITE, .{ .TYPE = .SHARED }, channel_fd, 0);
    posix.close(channel_fd);
    header = @ptrCast(map.ptr);
    if (header.magic != channel.magic or header.layout_version != channel.layout_version) return error.Layout;
    const request_end = std.math.add(u64, header.request_offset, header.request_bytes_max) catch return error.Layout;
    const reply_end = std.math.add(u64, header.reply_offset, header.reply_bytes_max) catch return error.Layout;
    if (header.request_offset < channel.header_bytes or request_end > header.reply_offset or reply_end > size) return error.Layout;
}

// --- the request loop -----------------------------------------------------

fn serve(path: []const u8) noreturn {
    while (true) {
        switch (waitRequest()) {
            .load => load(path),
            .init => lifecycle(.init),
            .enable => lifecycle(.enable),
            .disable => lifecycle(.disable),
            .deinit => lifecycle(.deinit),
            .hook => hook(),
            else => replyFault(.bad_request, "unknown request"),
        }
    }
}

/// Spins for the next request (header.child_spin_ns), then sleeps on it.
fn waitRequest() channel.Op {
    const spin_until = channel.nowNs() + header.child_spin_ns;
    var spinning = true;
    var round: u32 = 0;
    while (true) : (round +%= 1) {
        const seq = @atomicLoad(u32, &header.request_seq, .acquire);
        if (seq != seen_request_seq) {
            seen_request_seq = seq;
            return header.op;
        }
        if (spinning) spinning = channel.spinRound(round, spin_until);
        if (!spinning) channel.sleepOn(&header.request_seq, seq, &header.child_sleeping, null);
    }
}

fn reply(code: i32, status: u32, reply_len: i64, fault: channel.Fault) void {
    header.code = code;
    header.status = status;
    header.reply_len = reply_len;
    header.fault = fault;
    header.kind = .done;
    channel.publish(&header.reply_seq, &header.host_sleeping);
}

fn replyFault(fault: channel.Fault, text: []const u8) void {
    const area = replyArea();
    const n = @min(text.len, area.len);
    @memcpy(area[0..n], text[0..n]);
    reply(0, 0, @intCast(n), fault);
}

fn replyFaultFmt(fault: channel.Fault, comptime format: []const u8, args: anytype) void {
    var buf: [1024]u8 = undefined;
    replyFault(fault, std.fmt.bufPrint(&buf, format, args) catch format);
}

const Lifecycle = enum { init, enable, disable, deinit };

fn lifecycle(which: Lifecycle) void {
    if (!loaded) return replyFault(.bad_request, "no plugin is loaded");
    const code: i32 = switch (which) {
        .init => blk: {
            const area = requestArea();
            const len: usize = @intCast(@min(header.request_len, area.len));
            // The host sends the config NUL-terminated; make sure of it.
            if (len == 0 or area[len - 1] != 0) return replyFault(.bad_request, "the config is not NUL-terminated");
            break :blk interface.init(&host_allocator, @ptrCast(area.ptr));
        },
        .enable => interface.enable(),
        .disable => interface.disable(),
        .deinit => blk: {
            interface.deinit();
            break :blk 0;
        },
    };
    reply(code, 0, 0, .none);
}

fn hook() void {
    if (!loaded) return replyFault(.bad_request, "no plugin is loaded");
    const area = requestArea();
    if (header.request_len > area.len) return replyFault(.bad_request, "the request is larger than its area");
    const request = area[0..@intCast(header.request_len)];
    const loaded_status = host.loadEncoded(context, header.hook_type, request, &.{});
    if (loaded_status != .ok) return reply(@intFromEnum(loaded_status), 0, 0, .context_refused);
    const code = interface.executeHook(context);
    const status: u32 = if (context.cancel) channel.status_cancel else 0;
    var reply_len: i64 = 0;
    var fault: channel.Fault = .none;
    if (host.storeOf(context).changed_count > 0) {
        reply_len = host.takeChanges(context, replyArea());
        if (reply_len < 0) {
            host.storeOf(context).clearChanges();
            fault = .changes_too_large;
        }
    }
    reply(code, status, reply_len, fault);
}

// --- load -----------------------------------------------------------------

/// Copies the library into a memfd (before confinement: the file may be
/// anywhere), confines the process with Landlock, dlopens the copy, checks
/// the ABI marker and the six functions, writes the metadata into the reply
/// area, sets the memory limit and installs the seccomp filter.
fn load(path: []const u8) void {
    if (loaded) return replyFault(.bad_request, "the plugin is already loaded");
    // The address space in use once the plugin is mapped is the memory limit's base; read later through this descriptor.
    const statm = posix.openZ("/proc/self/statm", .{ .CLOEXEC = true }, 0) catch -1;
    const copy = privateCopy(path) catch |err| return replyFaultFmt(.load_read, "cannot read the library ({s})", .{@errorName(err)});
    header.landlock_abi = confine.installLandlock() catch |err| return replyFaultFmt(.confine, "Landlock: {s}", .{@errorName(err)});
    var copy_path_buf: [64]u8 = undefined;
    const copy_path = std.fmt.bufPrintZ(&copy_path_buf, "/proc/self/fd/{d}", .{copy}) catch unreachable;
    const handle = std.c.dlopen(copy_path, .{ .NOW = true }) orelse {
        const why = std.c.dlerror();
        return replyFault(.load_dlopen, if (why) |text| std.mem.span(text) else "dlopen failed");
    };
    posix.close(copy);
    const marker = symbol(handle, "smtp_plugin_abi_version") orelse return replyFault(.load_no_marker, "");
    const abi_version_fn: *const fn () callconv(.c) u32 = @ptrCast(marker);
    const abi_version = abi_version_fn();
    header.abi_version = abi_version;
    if (abi_version >> 16 != plugin.abi_version_major or (abi_version & 0xffff) > plugin.abi_version_minor) return replyFault(.load_abi, "");
    resolveInterface(handle) catch return;
    const metadata = interface.getMetadata() orelse return replyFault(.load_null_metadata, "");
    const metadata_len = writeMetadata(metadata, abi_version >= (1 << 16 | 1)) catch return replyFault(.load_null_metadata, "the metadata does not fit the reply area");
    if (statm >= 0) {
        limitMemory(statm);
        posix.close(statm);
    }
    confine.installSeccomp() catch |err| return replyFaultFmt(.confine, "seccomp: {s}", .{@errorName(err)});
    loaded = true;
    reply(0, 0, @intCast(metadata_len), .none);
}

fn privateCopy(path: []const u8) !posix.fd_t {
    const source = try std.fs.cwd().openFile(path, .{});
    defer source.close();
    const size = (try source.stat()).size;
    if (size > library_bytes_max) return error.FileTooBig;
    const rc = linux.memfd_create("smtp-plugin.so", 0);
    if (linux.E.init(rc) != .SUCCESS) return error.MemfdCreate;
    const copy: posix.fd_t = @intCast(rc);
    errdefer posix.close(copy);
    var buf: [64 * 1024]u8 = undefined;
    var total: u64 = 0;
    while (total < size) {
        const n = try source.read(&buf);
        if (n == 0) break;
        const written = try posix.write(copy, buf[0..n]);
        if (written != n) return error.ShortWrite;
        total += n;
    }
    return copy;
}

/// RLIMIT_AS: what is mapped now (the program, libc, the plugin, the
/// channel) plus the plugin's allowance. Hard and soft alike: the plugin
/// cannot raise it (nor call setrlimit at all, once the filter is in).
fn limitMemory(statm: posix.fd_t) void {
    var buf: [128]u8 = undefined;
    const n = posix.pread(statm, &buf, 0) catch return;
    var fields = std.mem.tokenizeScalar(u8, buf[0..n], ' ');
    const pages = std.fmt.parseInt(u64, fields.next() orelse return, 10) catch return;
    const base = pages * std.heap.pageSize();
    setLimit(.AS, base + header.memory_bytes_max);
}

fn symbol(handle: *anyopaque, name: [:0]const u8) ?*anyopaque {
    return std.c.dlsym(handle, name);
}

const interface_fields = [_][:0]const u8{ "init", "deinit", "get_metadata", "execute_hook", "enable", "disable" };
const individual_exports = [_][:0]const u8{ "smtp_plugin_init", "smtp_plugin_deinit", "smtp_plugin_get_metadata", "smtp_plugin_execute_hook", "smtp_plugin_enable", "smtp_plugin_disable" };

/// smtp_plugin_get_interface, or the six individual exports (as the in-process backend resolves them).
fn resolveInterface(handle: *anyopaque) error{Missing}!void {
    var text: [512]u8 = undefined;
    var stream = std.io.fixedBufferStream(&text);
    const out = stream.writer();
    if (symbol(handle, "smtp_plugin_get_interface")) |entry| {
        const get: *const fn () callconv(.c) ?*const [6]?*const anyopaque = @ptrCast(entry);
        const table = get() orelse {
            replyFault(.load_missing_export, "smtp_plugin_get_interface returned NULL");
            return error.Missing;
        };
        var missing = false;
        for (table, interface_fields) |pointer, name| {
            if (pointer != null) continue;
            out.print("{s}{s}", .{ if (missing) ", " else "smtp_plugin_get_interface has NULL ", name }) catch {};
            missing = true;
        }
        if (missing) {
            replyFault(.load_missing_export, stream.getWritten());
            return error.Missing;
        }
        interface = @as(*const plugin.PluginInterface, @ptrCast(table)).*;
        return;
    }
    var pointers: [6]?*anyopaque = undefined;
    var missing = false;
    for (individual_exports, 0..) |name, index| {
        pointers[index] = symbol(handle, name);
        if (pointers[index] != null) continue;
        out.print("{s}{s}", .{ if (missing) ", " else "no smtp_plugin_get_interface, and the individual exports ", name }) catch {};
        missing = true;
    }
    if (missing) {
        out.writeAll(" are missing") catch {};
        replyFault(.load_missing_export, stream.getWritten());
        return error.Missing;
    }
    interface = .{
        .init = @ptrCast(pointers[0].?),
        .deinit = @ptrCast(pointers[1].?),
        .getMetadata = @ptrCast(pointers[2].?),
        .executeHook = @ptrCast(pointers[3].?),
        .enable = @ptrCast(pointers[4].?),
        .disable = @ptrCast(pointers[5].?),
    };
}

/// The metadata as wire entries in the reply area: the strings (absent when
/// NULL; cut one byte past the host's bound when longer), each dependency
/// under "dependency", handled_hooks and flags as u64 little endian.
fn writeMetadata(metadata: *const plugin.PluginMetadata, has_flags: bool) error{NoSpace}!usize {
    const area = replyArea();
    var at: usize = 0;
    const put = struct {
        fn entry(buf: []u8, cursor: *usize, key: []const u8, value: []const u8) error{NoSpace}!void {
            if (buf.len - cursor.* < 8 + key.len + value.len) return error.NoSpace;
            std.mem.writeInt(u32, buf[cursor.*..][0..4], @intCast(key.len), .little);
            @memcpy(buf[cursor.* + 4 ..][0..key.len], key);
            cursor.* += 4 + key.len;
            std.mem.writeInt(u32, buf[cursor.*..][0..4], @intCast(value.len), .little);
            @memcpy(buf[cursor.* + 4 ..][0..value.len], value);
            cursor.* += 4 + value.len;
        }
    }.entry;
    const strings = .{
        .{ "name", @as(?[*:0]const u8, metadata.name) },
        .{ "version", @as(?[*:0]const u8, metadata.version) },
        .{ "author", @as(?[*:0]const u8, metadata.author) },
        .{ "description", @as(?[*:0]const u8, metadata.description) },
        .{ "license", @as(?[*:0]const u8, metadata.license) },
        .{ "min_server_version", metadata.min_server_version },
        .{ "max_server_version", metadata.max_server_version },
    };
    inline for (strings) |field| {
        if (cString(field[1])) |text| try put(area, &at, field[0], text);
    }
    if (metadata.dependencies) |list| {
        var index: usize = 0;
        // One more than the bound, so that the host can tell "too many".
        while (index <= dependencies_max) : (index += 1) {
            const entry = list[index] orelse break;
            try put(area, &at, "dependency", cString(entry).?);
        }
    }
    var word: [8]u8 = undefined;
    std.mem.writeInt(u64, &word, metadata.handled_hooks, .little);
    try put(area, &at, "handled_hooks", &word);
    if (has_flags) {
        std.mem.writeInt(u64, &word, metadata.flags, .little);
        try put(area, &at, "flags", &word);
    }
    return at;
}

fn cString(pointer: ?[*:0]const u8) ?[]const u8 {
    const s = pointer orelse return null;
    var n: usize = 0;
    while (n < metadata_text_bytes_max and s[n] != 0) n += 1;
    return s[0..n];
}

// --- the host functions a plugin calls -------------------------------------

/// The clock and the network of this process: send, receive and close work
/// on the sockets the host passed over (net.zig's handle table, as in the
/// host); connect asks the host.
const ChildIo = struct {
    pub fn nowUnixMs(ctx: *const plugin.HookContext) callconv(.c) i64 {
        _ = ctx;
        return std.time.milliTimestamp();
    }
    pub const netSend = net.Io.netSend;
    pub const netRecv = net.Io.netRecv;
    pub const netClose = net.Io.netClose;

    pub fn netConnect(ctx: *plugin.HookContext, address: [*]const u8, address_len: usize, timeout_ms: u32) callconv(.c) i32 {
        if (address_len > channel.net_address_bytes_max) return @intFromEnum(plugin.NetStatus.address);
        @memcpy(header.net_address[0..address_len], address[0..address_len]);
        header.net_address_len = @intCast(address_len);
        header.net_timeout_ms = timeout_ms;
        header.kind = .net_connect;
        channel.publish(&header.reply_seq, &header.host_sleeping);
        if (waitRequest() != .net_reply) return @intFromEnum(plugin.NetStatus.io);
        const result = header.net_status;
        if (result < 0) return result;
        const fd = receiveSocket() orelse return @intFromEnum(plugin.NetStatus.io);
        return net.adopt(ctx, fd);
    }

    /// Asks the host, which keeps the server's counters (and checks the grant).
    pub fn counterIncr(ctx: *plugin.HookContext, key: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32) callconv(.c) i64 {
        _ = ctx;
        const invalid = @intFromEnum(plugin.CounterStatus.invalid);
        if (key_len > channel.net_address_bytes_max) return invalid;
        if (key_len > 0) @memcpy(header.net_address[0..key_len], (key orelse return invalid)[0..key_len]);
        header.net_address_len = @intCast(key_len);
        header.counter_by = by;
        header.counter_window_seconds = window_seconds;
        header.kind = .counter;
        channel.publish(&header.reply_seq, &header.host_sleeping);
        if (waitRequest() != .counter_reply) return @intFromEnum(plugin.CounterStatus.unavailable);
        return header.counter_result;
    }
};

const child_api = host.hostApi(ChildIo);

/// One socket from the host (SCM_RIGHTS on fd 4).
fn receiveSocket() ?posix.fd_t {
    const Control = extern struct { len: usize, level: i32, type: i32, fd: i32, pad: i32 };
    var control: Control = std.mem.zeroes(Control);
    var byte: [1]u8 = undefined;
    var iov = [_]posix.iovec{.{ .base = &byte, .len = 1 }};
    var msg: linux.msghdr = .{ .name = null, .namelen = 0, .iov = &iov, .iovlen = 1, .control = &control, .controllen = @sizeOf(Control), .flags = 0 };
    const rc = linux.recvmsg(socket_fd, &msg, linux.MSG.CMSG_CLOEXEC);
    if (linux.E.init(rc) != .SUCCESS or rc == 0) return null;
    if (control.level != linux.SOL.SOCKET or control.type != 1 or control.len < @sizeOf(usize) + 12) return null;
    return control.fd;
}
