//! The host counters of ABI 1.2 (smtp_host_api.counter_incr): one store for
//! the whole process, whichever backend runs the plugin. Native in-process
//! plugins reach it through their context's table (host_runtime.zig), the
//! sandbox through an export called by koffi (on the event loop's thread or a
//! sandbox worker's), process-isolated plugins through the host half of their
//! channel (isolation_host.zig). Calls come from several threads at once, so
//! every shared thing here is under `lock`.
//!
//! Fixed windows: a count lives in window floor(now_s / window_seconds) and
//! starts at 0 in the next one. Two backends:
//!  - memory: a table bounded by counter_keys_max, keyed by plugin name, key
//!    and window length; a slot whose window ended restarts at its next use,
//!    and the slots of windows that ended are swept out to make room;
//!  - Redis (when configured): INCRBY and EXPIRE (two windows) pipelined in
//!    one round trip on a pooled connection, every wait bounded by the
//!    configured timeout (and the hook's deadline). A failure marks Redis
//!    down for redis_backoff_ms, so that calls meanwhile do not each wait a
//!    timeout; they get the policy's answer at once: UNAVAILABLE
//!    ("tempfail") or a count in the memory table ("local").
const std = @import("std");
const posix = std.posix;
const host = @import("smtp-host");
const plugin = host.plugin;
const net = @import("net.zig");

const gpa = std.heap.c_allocator;

/// How long Redis counts as down after a failure before a call tries it again.
pub const redis_backoff_ms: i64 = 1000;
/// Connections to Redis open at once, in use and idle; a caller beyond them waits for one, within its timeout.
const redis_connections_max = 8;
/// The longest Redis reply line taken (our commands answer integers and +OK).
const redis_reply_bytes_max = 512;
/// recv calls per exchange: each returns at least one byte, the deadline bounds the time; this bounds the loop.
const redis_recv_calls_max = 64;
/// The longest plugin name (a namespace): the host's bound on metadata strings.
pub const namespace_bytes_max = 256;
/// [cluster] key_prefix.
pub const prefix_bytes_max = 64;
/// A Redis user name or password.
pub const credential_bytes_max = 256;
/// The table is swept at most this often while it is not full.
const sweep_interval_ms: i64 = 60_000;
/// `<prefix>:ctr:<namespace>:<key>:<window_seconds>:<window index>`.
const redis_key_bytes_max = prefix_bytes_max + ":ctr:".len + namespace_bytes_max + 1 + plugin.counter_key_bytes_max + 1 + 10 + 1 + 20;
/// INCRBY and EXPIRE of one key, as RESP arrays.
const request_bytes_max = 2 * redis_key_bytes_max + 128;
/// AUTH user password, SELECT db.
const handshake_bytes_max = 2 * credential_bytes_max + 128;
/// `<namespace> 0 <key> 0 <window_seconds>`: the memory table's key.
const table_key_bytes_max = namespace_bytes_max + 1 + plugin.counter_key_bytes_max + 1 + 10;

/// What a call answers while Redis is down ([cluster] on_redis_down).
pub const Policy = enum(u32) { tempfail = 0, local = 1 };

/// A counter call's bounds.
pub const Options = struct {
    /// When the hook call's session stops waiting (a milliTimestamp; 0: none): Redis waits are cut to it.
    deadline_ms: i64 = 0,
    /// False: a call that would need the network fails with WouldBlock
    /// instead (the caller, on the event loop's thread, hands it to a thread
    /// that may wait).
    network: bool = true,
};

fn status(s: plugin.CounterStatus) i64 {
    return @intFromEnum(s);
}

fn Text(comptime bytes_max: usize) type {
    return struct {
        buf: [bytes_max]u8 = undefined,
        len: usize = 0,

        fn set(self: *@This(), value: []const u8) bool {
            if (value.len > bytes_max) return false;
            @memcpy(self.buf[0..value.len], value);
            self.len = value.len;
            return true;
        }

        pub fn slice(self: *const @This()) []const u8 {
            return self.buf[0..self.len];
        }
    };
}

/// The configuration (smtp_host_counters_configure). A call copies it under the lock.
const Settings = struct {
    /// null: memory only.
    redis: ?std.net.Address = null,
    /// A Redis is configured that the host cannot use (rediss://, a name
    /// that did not resolve): taken as down for good.
    redis_unusable: bool = false,
    db: u32 = 0,
    user: Text(credential_bytes_max) = .{},
    password: Text(credential_bytes_max) = .{},
    timeout_ms: u32 = 500,
    policy: Policy = .tempfail,
    prefix: Text(prefix_bytes_max) = .{},
    /// Bumped by every configure: connections of an older one are closed, not reused.
    generation: u32 = 0,
};

const Slot = struct {
    /// The window the count belongs to.
    index: i64,
    count: i64,
    /// When that window ends (ms): the slot may be swept from then on.
    ends_ms: i64,
};

var lock: std.Thread.Mutex = .{};
var settings: Settings = .{};
var table: std.StringHashMapUnmanaged(Slot) = .empty;
var last_sweep_ms: i64 = 0;
/// No slot's window ends before this (a lower bound): a full table is swept only when something can go.
var earliest_end_ms: i64 = std.math.maxInt(i64);

/// Idle connections, and how many are open (idle and in use).
var idle: [redis_connections_max]posix.socket_t = undefined;
var idle_len: usize = 0;
var open_count: usize = 0;
var connection_freed: std.Thread.Condition = .{};
/// Until then Redis is taken as down.
var down_until_ms: i64 = 0;
var down: bool = false;
var failures: u64 = 0;
var last_error: Text(128) = .{};

/// Sets the backend: `redis_host` empty for memory only, else an IPv4 or
/// IPv6 address with its port, and the database, credentials (empty: no
/// AUTH), timeout, policy and key prefix; `unusable`: a Redis is configured
/// that cannot be used, every call answers as if it were down. Idle
/// connections of an earlier configuration are closed; Redis is taken as
/// up. False when a value is over its bound or the address is not an IP
/// address.
pub fn configure(redis_host: []const u8, port: u16, db: u32, user: []const u8, password: []const u8, timeout_ms: u32, policy: Policy, prefix: []const u8, unusable: bool) bool {
    var next: Settings = .{ .db = db, .timeout_ms = timeout_ms, .policy = policy, .redis_unusable = unusable };
    if (redis_host.len > 0 and !unusable) next.redis = std.net.Address.parseIp(redis_host, port) catch return false;
    if (!next.user.set(user) or !next.password.set(password) or !next.prefix.set(prefix)) return false;
    if (timeout_ms == 0) return false;
    lock.lock();
    defer lock.unlock();
    next.generation = settings.generation +% 1;
    settings = next;
    closeIdleLocked();
    down = unusable;
    down_until_ms = 0;
    if (unusable) _ = last_error.set("Unusable");
    connection_freed.broadcast();
    return true;
}

/// Empties the memory table (the tests here).
pub fn resetMemory() void {
    lock.lock();
    defer lock.unlock();
    var keys = table.keyIterator();
    while (keys.next()) |key| gpa.free(key.*);
    table.clearAndFree(gpa);
    earliest_end_ms = std.math.maxInt(i64);
}

/// What the host reports: keys in the memory table, whether Redis is configured and down, failures so far, the last failure.
pub const State = struct {
    keys: u64,
    redis_configured: bool,
    redis_down: bool,
    failures: u64,
    last_error: Text(128),
};

pub fn state() State {
    lock.lock();
    defer lock.unlock();
    return .{ .keys = table.count(), .redis_configured = settings.redis != null or settings.redis_unusable, .redis_down = down, .failures = failures, .last_error = last_error };
}

/// counter_incr for the plugin `namespace` (its name, non-empty): the count
/// after adding `by`, or an smtp_counter_status; WouldBlock only when
/// `options.network` is false and the call needs Redis.
pub fn incr(namespace: []const u8, key_ptr: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32, options: Options) error{WouldBlock}!i64 {
    std.debug.assert(namespace.len > 0 and namespace.len <= namespace_bytes_max);
    const key = host.counterKey(key_ptr, key_len, by, window_seconds) orelse return status(.invalid);
    const now_ms = std.time.milliTimestamp();
    var snapshot: Settings = undefined;
    {
        lock.lock();
        defer lock.unlock();
        if (settings.redis_unusable) return downAnswerLocked(namespace, key, by, window_seconds, now_ms);
        if (settings.redis == null) return incrMemoryLocked(namespace, key, by, window_seconds, now_ms);
        if (now_ms < down_until_ms) return downAnswerLocked(namespace, key, by, window_seconds, now_ms);
        if (!options.network) return error.WouldBlock;
        snapshot = settings;
    }
    const redis_deadline_ms = now_ms + snapshot.timeout_ms;
    const cut = options.deadline_ms != 0 and options.deadline_ms < redis_deadline_ms;
    const deadline_ms = if (cut) options.deadline_ms else redis_deadline_ms;
    if (incrRedis(&snapshot, namespace, key, by, window_seconds, host.counterWindow(now_ms, window_seconds), deadline_ms)) |count| {
        lock.lock();
        defer lock.unlock();
        down = false;
        return count;
    } else |err| {
        lock.lock();
        defer lock.unlock();
        // Out of the hook's time, not Redis's fault: answer, but do not mark it down.
        if (!(cut and err == error.Timeout)) markDownLocked(err, snapshot.generation);
        return downAnswerLocked(namespace, key, by, window_seconds, now_ms);
    }
}

fn downAnswerLocked(namespace: []const u8, key: []const u8, by: i64, window_seconds: u32, now_ms: i64) i64 {
    return switch (settings.policy) {
        .tempfail => status(.unavailable),
        .local => incrMemoryLocked(namespace, key, by, window_seconds, now_ms),
    };
}

fn markDownLocked(err: RedisError, generation: u32) void {
    // A failure of a connection made before the last configure says nothing about the Redis now configured.
    if (generation != settings.generation) return;
    failures += 1;
    down = true;
    down_until_ms = std.time.milliTimestamp() + redis_backoff_ms;
    _ = last_error.set(@errorName(err));
    // The others are likely as dead as the one that failed.
    closeIdleLocked();
}

fn closeIdleLocked() void {
    for (idle[0..idle_len]) |fd| posix.close(fd);
    open_count -= idle_len;
    idle_len = 0;
}

// --- memory ------------------------------------------------------------------

fn incrMemoryLocked(namespace: []const u8, key: []const u8, by: i64, window_seconds: u32, now_ms: i64) i64 {
    const index = host.counterWindow(now_ms, window_seconds);
    var name_buf: [table_key_bytes_max]u8 = undefined;
    const name = std.fmt.bufPrint(&name_buf, "{s}\x00{s}\x00{d}", .{ namespace, key, window_seconds }) catch unreachable;
    const ends_ms = (index + 1) * @as(i64, window_seconds) * std.time.ms_per_s;
    if (table.getPtr(name)) |slot| {
        // Any other window (the clock stepped back included) starts afresh.
        if (slot.index != index) slot.* = .{ .index = index, .count = 0, .ends_ms = ends_ms };
        slot.count +|= by;
        earliest_end_ms = @min(earliest_end_ms, ends_ms);
        return slot.count;
    }
    const full = table.count() >= plugin.counter_keys_max;
    if (now_ms >= earliest_end_ms and (full or now_ms - last_sweep_ms >= sweep_interval_ms)) sweepLocked(now_ms);
    if (table.count() >= plugin.counter_keys_max) return status(.limit);
    const owned = gpa.dupe(u8, name) catch return status(.limit);
    table.put(gpa, owned, .{ .index = index, .count = by, .ends_ms = ends_ms }) catch {
        gpa.free(owned);
        return status(.limit);
    };
    earliest_end_ms = @min(earliest_end_ms, ends_ms);
    return by;
}

/// Drops every slot whose window has ended (its next use would restart it at 0 anyway).
fn sweepLocked(now_ms: i64) void {
    last_sweep_ms = now_ms;
    var earliest: i64 = std.math.maxInt(i64);
    var slots = table.iterator();
    // Removal leaves a tombstone and moves nothing, so the iteration stays valid.
    while (slots.next()) |entry| {
        if (entry.value_ptr.ends_ms <= now_ms) {
            const owned = entry.key_ptr.*;
            table.removeByPtr(entry.key_ptr);
            gpa.free(owned);
        } else {
            earliest = @min(earliest, entry.value_ptr.ends_ms);
        }
    }
    earliest_end_ms = earliest;
}

// --- Redis -------------------------------------------------------------------

const RedisError = error{
    /// No connection, no answer or no free connection in time.
    Timeout,
    /// Refused, unreachable.
    ConnectFailed,
    /// The connection broke after part of the exchange.
    Io,
    /// The peer was gone before it answered anything: a reused connection
    /// that Redis closed meanwhile. Safe to retry: nothing was counted.
    ConnectionLost,
    /// Redis answered with an error (a refused AUTH, MISCONF, ...).
    RedisError,
    /// Bytes that are not the replies asked for.
    RedisProtocol,
};

const Connection = struct {
    fd: posix.socket_t,
    /// Taken from the idle ones (it may have been closed by Redis meanwhile).
    reused: bool,
    generation: u32,
};

/// An idle connection, or the right to open one (fd -1), waiting for one to
/// be freed until `deadline_ms` when all are in use.
fn acquire(generation: u32, deadline_ms: i64) RedisError!Connection {
    lock.lock();
    defer lock.unlock();
    while (true) {
        if (generation != settings.generation) return error.ConnectFailed;
        if (idle_len > 0) {
            idle_len -= 1;
            return .{ .fd = idle[idle_len], .reused = true, .generation = generation };
        }
        if (open_count < redis_connections_max) {
            open_count += 1;
            return .{ .fd = -1, .reused = false, .generation = generation };
        }
        const left_ms = deadline_ms - std.time.milliTimestamp();
        if (left_ms <= 0) return error.Timeout;
        connection_freed.timedWait(&lock, @as(u64, @intCast(left_ms)) * std.time.ns_per_ms) catch return error.Timeout;
    }
}

/// Gives a connection back: kept idle when it is in step and of the current
/// configuration, else closed.
fn release(connection: Connection, keep: bool) void {
    lock.lock();
    defer lock.unlock();
    defer connection_freed.signal();
    if (keep and connection.fd >= 0 and connection.generation == settings.generation and idle_len < redis_connections_max) {
        idle[idle_len] = connection.fd;
        idle_len += 1;
        return;
    }
    if (connection.fd >= 0) posix.close(connection.fd);
    // A connection of an older configuration was already uncounted when it was closed idle; busy ones count until here.
    open_count -= 1;
}

fn incrRedis(config: *const Settings, namespace: []const u8, key: []const u8, by: i64, window_seconds: u32, index: i64, deadline_ms: i64) RedisError!i64 {
    var key_buf: [redis_key_bytes_max]u8 = undefined;
    const redis_key = std.fmt.bufPrint(&key_buf, "{s}:ctr:{s}:{s}:{d}:{d}", .{ config.prefix.slice(), namespace, key, window_seconds, index }) catch unreachable;
    var request_buf: [request_bytes_max]u8 = undefined;
    var request = std.io.fixedBufferStream(&request_buf);
    var by_text: [24]u8 = undefined;
    var ttl_text: [24]u8 = undefined;
    encodeCommand(request.writer(), &.{ "INCRBY", redis_key, std.fmt.bufPrint(&by_text, "{d}", .{by}) catch unreachable }) catch unreachable;
    // Two windows: the key outlives the end of its window by at least one, and is then collected.
    encodeCommand(request.writer(), &.{ "EXPIRE", redis_key, std.fmt.bufPrint(&ttl_text, "{d}", .{2 * @as(u64, window_seconds)}) catch unreachable }) catch unreachable;

    var connection = try acquire(config.generation, deadline_ms);
    var replies: [2]i64 = undefined;
    const exchanged = exchangeOn(config, &connection, request.getWritten(), &replies, deadline_ms);
    if (exchanged) |_| {} else |err| {
        release(connection, false);
        if (!(connection.reused and err == error.ConnectionLost)) return err;
        // Redis restarted or dropped an idle connection: one fresh attempt, since nothing was counted.
        connection = try acquire(config.generation, deadline_ms);
        exchangeOn(config, &connection, request.getWritten(), &replies, deadline_ms) catch |again| {
            release(connection, false);
            return again;
        };
    }
    release(connection, true);
    if (replies[0] < 0) return error.RedisProtocol;
    return replies[0];
}

/// Opens the connection when it has none, then sends `request` and reads one integer reply per slot of `replies`.
fn exchangeOn(config: *const Settings, connection: *Connection, request: []const u8, replies: []i64, deadline_ms: i64) RedisError!void {
    if (connection.fd < 0) connection.fd = try open(config, deadline_ms);
    try sendAll(connection.fd, request, deadline_ms);
    try readReplies(connection.fd, replies, deadline_ms);
}

fn open(config: *const Settings, deadline_ms: i64) RedisError!posix.socket_t {
    const fd = net.connectTo(config.redis.?, @intCast(net.remaining(deadline_ms)));
    if (fd < 0) return if (fd == @intFromEnum(plugin.NetStatus.timeout)) error.Timeout else error.ConnectFailed;
    errdefer posix.close(fd);
    if (config.password.len == 0 and config.db == 0) return fd;
    var buf: [handshake_bytes_max]u8 = undefined;
    var out = std.io.fixedBufferStream(&buf);
    var expected: usize = 0;
    if (config.password.len > 0) {
        if (config.user.len > 0) {
            encodeCommand(out.writer(), &.{ "AUTH", config.user.slice(), config.password.slice() }) catch unreachable;
        } else {
            encodeCommand(out.writer(), &.{ "AUTH", config.password.slice() }) catch unreachable;
        }
        expected += 1;
    }
    var db_text: [16]u8 = undefined;
    if (config.db != 0) {
        encodeCommand(out.writer(), &.{ "SELECT", std.fmt.bufPrint(&db_text, "{d}", .{config.db}) catch unreachable }) catch unreachable;
        expected += 1;
    }
    sendAll(fd, out.getWritten(), deadline_ms) catch |err| return if (err == error.ConnectionLost) error.Io else err;
    var oks: [2]i64 = undefined;
    readReplies(fd, oks[0..expected], deadline_ms) catch |err| return if (err == error.ConnectionLost) error.Io else err;
    return fd;
}

/// Appends one command as a RESP array of bulk strings (binary safe).
fn encodeCommand(out: anytype, args: []const []const u8) !void {
    try out.print("*{d}\r\n", .{args.len});
    for (args) |arg| try out.print("${d}\r\n{s}\r\n", .{ arg.len, arg });
}

fn sendAll(fd: posix.socket_t, data: []const u8, deadline_ms: i64) RedisError!void {
    var sent: usize = 0;
    while (sent < data.len) {
        const n = posix.send(fd, data[sent..], posix.MSG.NOSIGNAL) catch |err| switch (err) {
            error.WouldBlock => {
                const ready = net.waitFor(fd, posix.POLL.OUT, deadline_ms) catch return error.Io;
                if (!ready) return error.Timeout;
                continue;
            },
            error.ConnectionResetByPeer, error.BrokenPipe => return if (sent == 0) error.ConnectionLost else error.Io,
            else => return error.Io,
        };
        sent += n;
    }
}

/// Reads one reply line per slot of `replies`: an integer (`:n`) is stored,
/// `+OK` stores 0, an error line (`-...`) is RedisError once all were read.
fn readReplies(fd: posix.socket_t, replies: []i64, deadline_ms: i64) RedisError!void {
    var buf: [2 * redis_reply_bytes_max]u8 = undefined;
    var have: usize = 0;
    var parsed: usize = 0;
    var taken: usize = 0;
    var refused = false;
    var recv_calls: usize = 0;
    while (taken < replies.len) {
        if (std.mem.indexOfScalarPos(u8, buf[0..have], parsed, '\n')) |newline| {
            const line = buf[parsed..newline];
            if (line.len < 2 or line[line.len - 1] != '\r') return error.RedisProtocol;
            const body = line[1 .. line.len - 1];
            switch (line[0]) {
                ':' => replies[taken] = std.fmt.parseInt(i64, body, 10) catch return error.RedisProtocol,
                '+' => replies[taken] = 0,
                '-' => refused = true,
                else => return error.RedisProtocol,
            }
            taken += 1;
            parsed = newline + 1;
            continue;
        }
        if (have - parsed >= redis_reply_bytes_max) return error.RedisProtocol;
        if (parsed > 0) {
            std.mem.copyForwards(u8, buf[0 .. have - parsed], buf[parsed..have]);
            have -= parsed;
            parsed = 0;
        }
        if (recv_calls == redis_recv_calls_max) return error.RedisProtocol;
        recv_calls += 1;
        const got = recvSome(fd, buf[have..], deadline_ms) catch |err| return if (err == error.Io and have == 0 and taken == 0) error.ConnectionLost else err;
        if (got == 0) return if (have == 0 and taken == 0) error.ConnectionLost else error.Io;
        have += got;
    }
    // Bytes beyond the replies asked for: the stream is out of step.
    if (parsed != have) return error.RedisProtocol;
    if (refused) return error.RedisError;
}

fn recvSome(fd: posix.socket_t, buf: []u8, deadline_ms: i64) RedisError!usize {
    while (true) {
        return posix.recv(fd, buf, 0) catch |err| switch (err) {
            error.WouldBlock => {
                const ready = net.waitFor(fd, posix.POLL.IN, deadline_ms) catch return error.Io;
                if (!ready) return error.Timeout;
                continue;
            },
            else => return error.Io,
        };
    }
}

// --- tests ---------------------------------------------------------------------

test "memory: counts per plugin, key and window length; a new window restarts; bad arguments are refused" {
    resetMemory();
    defer resetMemory();
    try std.testing.expectEqual(@as(i64, 1), try incr("a", "k", 1, 1, 60, .{}));
    try std.testing.expectEqual(@as(i64, 3), try incr("a", "k", 1, 2, 60, .{}));
    try std.testing.expectEqual(@as(i64, 3), try incr("a", "k", 1, 0, 60, .{}));
    try std.testing.expectEqual(@as(i64, 1), try incr("b", "k", 1, 1, 60, .{}));
    try std.testing.expectEqual(@as(i64, 1), try incr("a", "k", 1, 1, 3600, .{}));
    try std.testing.expectEqual(status(.invalid), try incr("a", "a b", 3, 1, 60, .{}));
    try std.testing.expectEqual(status(.invalid), try incr("a", "k", 1, 1, 0, .{}));
    try std.testing.expectEqual(@as(u64, 3), state().keys);
    // A slot of an earlier window restarts at its next use.
    table.getPtr("a\x00k\x0060").?.index -= 1;
    try std.testing.expectEqual(@as(i64, 1), try incr("a", "k", 1, 1, 60, .{}));
}

test "memory: a full table makes room from windows that ended, else refuses" {
    resetMemory();
    defer resetMemory();
    const now_ms = std.time.milliTimestamp();
    var name: [32]u8 = undefined;
    // Fill the table with slots whose windows ended long ago (as if from an hour back).
    for (0..plugin.counter_keys_max) |i| {
        const key = std.fmt.bufPrint(&name, "k{d}", .{i}) catch unreachable;
        try std.testing.expectEqual(@as(i64, 1), incrMemoryLocked("p", key, 1, 1, now_ms - 3_600_000));
    }
    try std.testing.expectEqual(@as(i64, 1), try incr("p", "fresh", 5, 1, 60, .{}));
    try std.testing.expectEqual(@as(u64, 1), state().keys);
    for (0..plugin.counter_keys_max - 1) |i| {
        const key = std.fmt.bufPrint(&name, "n{d}", .{i}) catch unreachable;
        _ = try incr("p", key.ptr, key.len, 1, 60, .{});
    }
    try std.testing.expectEqual(status(.limit), try incr("p", "one-too-many", 7, 1, 60, .{}));
    // Keys already counted still count.
    try std.testing.expectEqual(@as(i64, 2), try incr("p", "fresh", 5, 1, 60, .{}));
}

test "RESP: replies are read across chunks, errors after every reply, garbage refused" {
    var pair: [2]i32 = undefined;
    const linux = std.os.linux;
    try std.testing.expectEqual(@as(usize, 0), linux.socketpair(linux.AF.UNIX, linux.SOCK.STREAM | linux.SOCK.NONBLOCK, 0, &pair));
    defer posix.close(pair[0]);
    defer posix.close(pair[1]);
    const deadline = std.time.milliTimestamp() + 1000;
    var replies: [2]i64 = undefined;
    _ = try posix.write(pair[1], ":41\r\n:1\r\n");
    try readReplies(pair[0], &replies, deadline);
    try std.testing.expectEqual(@as(i64, 41), replies[0]);
    _ = try posix.write(pair[1], "-ERR nope\r\n:1\r\n");
    try std.testing.expectError(error.RedisError, readReplies(pair[0], &replies, deadline));
    _ = try posix.write(pair[1], ":1\r\n:1\r\n:9\r\n");
    try std.testing.expectError(error.RedisProtocol, readReplies(pair[0], &replies, deadline));
    _ = try posix.write(pair[1], "$3\r\nabc\r\n");
    try std.testing.expectError(error.RedisProtocol, readReplies(pair[0], &replies, deadline));
    try std.testing.expectError(error.Timeout, readReplies(pair[0], &replies, std.time.milliTimestamp() + 20));
    var out: [64]u8 = undefined;
    var stream = std.io.fixedBufferStream(&out);
    try encodeCommand(stream.writer(), &.{ "INCRBY", "k", "1" });
    try std.testing.expectEqualStrings("*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$1\r\n1\r\n", stream.getWritten());
}
