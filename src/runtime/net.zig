//! The clock and the network of ABI 1.1 for native plugins (and, through
//! exports, for the sandbox's worker): stream connections to granted
//! addresses, every wait bounded by the caller's timeout. Sockets are
//! non-blocking; waits use poll(2), so a timeout is exact and a stalled peer
//! never holds the calling thread longer than asked.
//!
//! Handles are indices into one process-wide table, each owned by the plugin
//! that opened it (its contexts share one owner, Store.net_owner): a plugin
//! cannot reach another plugin's connection, or any file descriptor of the
//! server, by guessing numbers.
const std = @import("std");
const posix = std.posix;
const host = @import("smtp-host");
const plugin = host.plugin;

/// Open connections, all plugins together.
const handles_max = 1024;
/// Open connections of one plugin (all its contexts): no plugin can use up the table.
const handles_per_owner_max = 64;
/// The most one net_recv copies.
const recv_bytes_max = 1024 * 1024;

const Slot = struct {
    fd: posix.socket_t = -1,
    owner: usize = 0,
};

var table: [handles_max]Slot = @splat(.{});
var table_lock: std.Thread.Mutex = .{};

/// The owner of the connections `ctx` opens and may use: its plugin's first context.
fn ownerKey(ctx: *const plugin.HookContext) usize {
    const shared = host.storeOf(ctx).net_owner;
    return if (shared != 0) shared else @intFromPtr(ctx);
}

fn status(s: plugin.NetStatus) i32 {
    return @intFromEnum(s);
}

/// The fd of `handle` when `ctx` owns it.
fn lookup(ctx: *const plugin.HookContext, handle: i32) ?posix.socket_t {
    if (handle < 0 or handle >= handles_max) return null;
    table_lock.lock();
    defer table_lock.unlock();
    const slot = table[@intCast(handle)];
    if (slot.fd < 0 or slot.owner != ownerKey(ctx)) return null;
    return slot.fd;
}

fn insert(ctx: *const plugin.HookContext, fd: posix.socket_t) ?i32 {
    table_lock.lock();
    defer table_lock.unlock();
    var owned: usize = 0;
    var free: ?usize = null;
    for (&table, 0..) |*slot, index| {
        if (slot.fd < 0) {
            if (free == null) free = index;
        } else if (slot.owner == ownerKey(ctx)) {
            owned += 1;
        }
    }
    if (owned >= handles_per_owner_max) return null;
    const index = free orelse return null;
    table[index] = .{ .fd = fd, .owner = ownerKey(ctx) };
    return @intCast(index);
}

fn remove(ctx: *const plugin.HookContext, handle: i32) bool {
    if (handle < 0 or handle >= handles_max) return false;
    table_lock.lock();
    const slot = &table[@intCast(handle)];
    if (slot.fd < 0 or slot.owner != ownerKey(ctx)) {
        table_lock.unlock();
        return false;
    }
    const fd = slot.fd;
    slot.* = .{};
    table_lock.unlock();
    posix.close(fd);
    return true;
}

/// Closes every connection `ctx`'s plugin opened (it is being unloaded).
pub fn closeOwnedBy(ctx: *const plugin.HookContext) void {
    table_lock.lock();
    defer table_lock.unlock();
    for (&table) |*slot| {
        if (slot.fd >= 0 and slot.owner == ownerKey(ctx)) {
            posix.close(slot.fd);
            slot.* = .{};
        }
    }
}

const Target = union(enum) {
    inet: std.net.Address,
    unix: std.net.Address,
};

/// "tcp:IPV4:PORT", "tcp:localhost:PORT" or "unix:/PATH".
fn parseAddress(text: []const u8) ?Target {
    if (std.mem.startsWith(u8, text, "unix:")) {
        const path = text["unix:".len..];
        if (path.len == 0 or path[0] != '/') return null;
        const address = std.net.Address.initUnix(path) catch return null;
        return .{ .unix = address };
    }
    if (std.mem.startsWith(u8, text, "tcp:")) {
        const rest = text["tcp:".len..];
        const colon = std.mem.lastIndexOfScalar(u8, rest, ':') orelse return null;
        const name = rest[0..colon];
        const port = std.fmt.parseInt(u16, rest[colon + 1 ..], 10) catch return null;
        if (port == 0) return null;
        const ip = if (std.mem.eql(u8, name, "localhost")) "127.0.0.1" else name;
        const address = std.net.Address.parseIp4(ip, port) catch return null;
        return .{ .inet = address };
    }
    return null;
}

/// The end of a wait of `timeout_ms` from now, cut to the hook call's
/// deadline when the host set one (Store.call_deadline_ms).
fn waitDeadline(ctx: *const plugin.HookContext, timeout_ms: u32) i64 {
    const own = std.time.milliTimestamp() + timeout_ms;
    const call = host.storeOf(ctx).call_deadline_ms;
    return if (call != 0) @min(own, call) else own;
}

/// Milliseconds left before `deadline` (a milliTimestamp), at least 0.
pub fn remaining(deadline: i64) i32 {
    const left = deadline - std.time.milliTimestamp();
    return @intCast(std.math.clamp(left, 0, std.math.maxInt(i32)));
}

/// Waits for `events` on `fd` until `deadline`; false on timeout.
pub fn waitFor(fd: posix.socket_t, events: i16, deadline: i64) error{Io}!bool {
    while (true) {
        var fds = [_]posix.pollfd{.{ .fd = fd, .events = events, .revents = 0 }};
        const ready = posix.poll(&fds, remaining(deadline)) catch return error.Io;
        if (ready > 0) return true;
        if (remaining(deadline) == 0) return false;
    }
}

/// Opens a stream connection to `address` without checking grants (the
/// caller did): a connected non-blocking socket, or a negative
/// smtp_net_status. The process-isolated backend calls this in the host for
/// its child, then passes the socket over.
pub fn connectAddress(address: []const u8, timeout_ms: u32) i32 {
    const target = parseAddress(address) orelse return status(.address);
    return connectTo(switch (target) {
        inline else => |a| a,
    }, timeout_ms);
}

/// Opens a stream connection to `sockaddr` (IPv4, IPv6 or unix): a
/// connected non-blocking socket, or a negative smtp_net_status.
pub fn connectTo(sockaddr: std.net.Address, timeout_ms: u32) i32 {
    const fd = posix.socket(sockaddr.any.family, posix.SOCK.STREAM | posix.SOCK.CLOEXEC | posix.SOCK.NONBLOCK, 0) catch return status(.limit);
    const deadline = std.time.milliTimestamp() + timeout_ms;
    posix.connect(fd, &sockaddr.any, sockaddr.getOsSockLen()) catch |err| switch (err) {
        error.WouldBlock => {
            const ready = waitFor(fd, posix.POLL.OUT, deadline) catch {
                posix.close(fd);
                return status(.io);
            };
            if (!ready) {
                posix.close(fd);
                return status(.timeout);
            }
            posix.getsockoptError(fd) catch {
                posix.close(fd);
                return status(.connect);
            };
        },
        else => {
            posix.close(fd);
            return status(.connect);
        },
    };
    return fd;
}

/// Takes a connected socket into `ctx`'s handles: the handle, or
/// SMTP_NET_E_LIMIT (the socket is closed then).
pub fn adopt(ctx: *const plugin.HookContext, fd: posix.socket_t) i32 {
    return insert(ctx, fd) orelse {
        posix.close(fd);
        return status(.limit);
    };
}

pub const Io = struct {
    pub fn nowUnixMs(ctx: *const plugin.HookContext) callconv(.c) i64 {
        _ = ctx;
        return std.time.milliTimestamp();
    }

    pub fn netConnect(ctx: *plugin.HookContext, address_ptr: [*]const u8, address_len: usize, timeout_ms: u32) callconv(.c) i32 {
        const address = address_ptr[0..address_len];
        const store = host.storeOf(ctx);
        if (!store.granted(address)) {
            store.recordDenied(address);
            return status(.denied);
        }
        const fd = connectAddress(address, @intCast(remaining(waitDeadline(ctx, timeout_ms))));
        if (fd < 0) return fd;
        return adopt(ctx, fd);
    }

    pub fn netSend(ctx: *plugin.HookContext, handle: i32, data: [*]const u8, len: usize, timeout_ms: u32) callconv(.c) i32 {
        const fd = lookup(ctx, handle) orelse return status(.closed);
        const deadline = waitDeadline(ctx, timeout_ms);
        var sent: usize = 0;
        while (sent < len) {
            const n = posix.send(fd, data[sent..len], posix.MSG.NOSIGNAL) catch |err| switch (err) {
                error.WouldBlock => {
                    const ready = waitFor(fd, posix.POLL.OUT, deadline) catch return failed(ctx, handle);
                    // Part of the data went out: the stream is no longer usable, so the handle goes too.
                    if (!ready) return if (sent > 0) timedOutMidway(ctx, handle) else status(.timeout);
                    continue;
                },
                else => return failed(ctx, handle),
            };
            sent += n;
        }
        return 0;
    }

    pub fn netRecv(ctx: *plugin.HookContext, handle: i32, buf: [*]u8, cap: usize, timeout_ms: u32) callconv(.c) i32 {
        const fd = lookup(ctx, handle) orelse return status(.closed);
        if (cap == 0) return status(.limit);
        const want = @min(cap, recv_bytes_max);
        const deadline = waitDeadline(ctx, timeout_ms);
        while (true) {
            const n = posix.recv(fd, buf[0..want], 0) catch |err| switch (err) {
                error.WouldBlock => {
                    const ready = waitFor(fd, posix.POLL.IN, deadline) catch return failed(ctx, handle);
                    if (!ready) return status(.timeout);
                    continue;
                },
                else => return failed(ctx, handle),
            };
            return @intCast(n);
        }
    }

    pub fn netClose(ctx: *plugin.HookContext, handle: i32) callconv(.c) i32 {
        return if (remove(ctx, handle)) 0 else status(.closed);
    }
};

/// A send that timed out after part of the data went out closes the handle.
fn timedOutMidway(ctx: *plugin.HookContext, handle: i32) i32 {
    _ = remove(ctx, handle);
    return status(.timeout);
}

/// A connection that failed mid-way is closed: its handle is no longer valid.
fn failed(ctx: *plugin.HookContext, handle: i32) i32 {
    _ = remove(ctx, handle);
    return status(.io);
}
