//! rate-limiter: the seed guide's per-domain rate limiter, done properly.
//!
//! Differences from the guide's listing (docs/plugins/rate_limiter.md):
//! - it counts at `command_validated` for MAIL, so a client over its limit
//!   gets `451 4.7.1` before it sends DATA, not after the whole message;
//! - it limits per sender domain and per client IP, over a fixed window
//!   (`window_seconds`) read from the host clock (`ctx.nowMs()`), and the
//!   count really restarts when the window ends (the guide's never did);
//! - by default (`backend = "host"`) it counts with the host's counters (ABI
//!   1.2, `ctx.counterIncr`): in the server's memory, or in the Redis the
//!   server is configured with, shared by every server using it; the host
//!   grants them with `allow_counters = true`;
//! - its own table (`backend = "memory"`) is bounded (`max_tracked_keys`),
//!   owns copies of its keys (the guide stored the host's metadata slice,
//!   which dies with the hook call) and is emptied when a window ends;
//! - with `backend = "redis"` it talks to Redis itself, through a
//!   persistent connection opened with `ctx.connect`;
//! - it chooses its reply (`451 4.7.1 Rate limit exceeded for <who>`), and
//!   a counting failure gives an explicit, configurable answer.
const std = @import("std");
const plugin = @import("smtp-server").plugin;

const log_prefix = "[rate-limiter] ";

/// A domain is at most 255 octets (RFC 1035); longer "domains" are cut
/// there, which can only make their senders share a count.
const subject_bytes_max = 255;
/// Bounds on config strings, so keys and the request always fit the fixed
/// buffers below.
const address_bytes_max = 256;
const key_prefix_bytes_max = 64;
/// prefix ":domain:" subject ":" window index (at most 20 digits).
const key_bytes_max = key_prefix_bytes_max + 8 + subject_bytes_max + 1 + 20;
/// Two checks, each INCR + EXPIRE with the key as a bulk string.
const request_bytes_max = 2 * (2 * (32 + key_bytes_max) + 32);
/// Redis answers four short lines; an error line longer than this is cut
/// off and treated as a protocol error.
const reply_bytes_max = 512;
/// recv calls per exchange: each returns at least one byte, and the
/// deadline bounds the time; this bounds the loop whatever the peer does.
const recv_calls_max = 64;
const window_seconds_max = 31 * 24 * 3600;
const limit_max = 1_000_000_000;
const tracked_keys_max = 1_000_000;
const timeout_ms_max = 60_000;

/// The config as JSON (every key optional). Strings are checked in init and
/// turned into the enums below, so a typo gets a message naming the key.
const Config = struct {
    backend: []const u8 = "host",
    max_per_sender_domain: i64 = 100,
    max_per_client_ip: i64 = 0,
    window_seconds: i64 = 3600,
    max_tracked_keys: i64 = 10_000,
    redis: []const u8 = "tcp:127.0.0.1:6379",
    key_prefix: []const u8 = "smtp-rate",
    timeout_ms: i64 = 500,
    on_backend_error: []const u8 = "tempfail",
};

const Backend = enum { host, memory, redis };
const OnBackendError = enum { tempfail, allow };

/// The validated config. The strings point into `config_parsed`.
const Settings = struct {
    backend: Backend = .host,
    max_per_sender_domain: u32 = 100,
    max_per_client_ip: u32 = 0,
    window_seconds: u32 = 3600,
    max_tracked_keys: u32 = 10_000,
    redis_address: []const u8 = "tcp:127.0.0.1:6379",
    key_prefix: []const u8 = "smtp-rate",
    timeout_ms: u32 = 500,
    on_backend_error: OnBackendError = .tempfail,

    fn windowMs(self: Settings) i64 {
        return @as(i64, self.window_seconds) * 1000;
    }
};

/// What one MAIL is counted against.
const Kind = enum {
    domain,
    ip,

    fn memoryTag(kind: Kind) []const u8 {
        return switch (kind) {
            .domain => "d:",
            .ip => "i:",
        };
    }

    fn hostTag(kind: Kind) []const u8 {
        return switch (kind) {
            .domain => "domain:",
            .ip => "ip:",
        };
    }
};

const Check = struct {
    kind: Kind,
    /// The sender domain (lower case) or the client IP.
    subject: []const u8,
    limit: u32,
};

var allocator: std.mem.Allocator = undefined;
var config_parsed: ?std.json.Parsed(Config) = null;
var settings: Settings = .{};
var counters: MemoryCounters = .{};
var redis: RedisConnection = .{};
/// Whether the last count failed: the failure is logged once, and the
/// recovery too, instead of once per MAIL while a backend is down.
var backend_down: bool = false;

const metadata = plugin.PluginMetadata{
    .name = "rate-limiter",
    .version = "1.0.0",
    .author = "SMTP Team",
    .description = "Per sender domain and per client IP rate limiting, on the host's counters, in its own memory or shared through Redis",
    .license = "MIT",
    .dependencies = &.{},
    .min_server_version = "0.28.0",
    .max_server_version = null,
    .handled_hooks = plugin.hookMask(&.{.command_validated}),
    // A metadata constant: the Redis backend blocks on the network, and so
    // does the host backend when the server counts in Redis. In memory the
    // flag only costs a thread hop; `blocking = false` in config.toml
    // removes it there.
    .flags = plugin.flag_blocking,
};

// --- Config ---------------------------------------------------------------

fn invalid(comptime fmt: []const u8, args: anytype) error{InvalidConfig} {
    std.debug.print(log_prefix ++ "Invalid config: " ++ fmt ++ "\n", args);
    return error.InvalidConfig;
}

fn bounded(name: []const u8, value: i64, min: i64, max: i64) error{InvalidConfig}!u32 {
    if (value < min or value > max) return invalid("{s} must be from {d} to {d}, got {d}", .{ name, min, max, value });
    return @intCast(value);
}

fn validate(config: Config) error{InvalidConfig}!Settings {
    var result: Settings = .{};
    result.backend = std.meta.stringToEnum(Backend, config.backend) orelse
        return invalid("backend must be \"host\", \"memory\" or \"redis\", got \"{s}\"", .{config.backend});
    result.on_backend_error = std.meta.stringToEnum(OnBackendError, config.on_backend_error) orelse
        return invalid("on_backend_error must be \"tempfail\" or \"allow\", got \"{s}\"", .{config.on_backend_error});
    result.max_per_sender_domain = try bounded("max_per_sender_domain", config.max_per_sender_domain, 0, limit_max);
    result.max_per_client_ip = try bounded("max_per_client_ip", config.max_per_client_ip, 0, limit_max);
    result.window_seconds = try bounded("window_seconds", config.window_seconds, 1, window_seconds_max);
    result.max_tracked_keys = try bounded("max_tracked_keys", config.max_tracked_keys, 1, tracked_keys_max);
    result.timeout_ms = try bounded("timeout_ms", config.timeout_ms, 1, timeout_ms_max);
    const address = config.redis;
    const known_scheme = std.mem.startsWith(u8, address, "tcp:") or std.mem.startsWith(u8, address, "unix:");
    if (!known_scheme or address.len > address_bytes_max)
        return invalid("redis must be \"tcp:HOST:PORT\" or \"unix:/PATH\" (at most {d} bytes), got \"{s}\"", .{ address_bytes_max, address });
    result.redis_address = address;
    if (config.key_prefix.len == 0 or config.key_prefix.len > key_prefix_bytes_max)
        return invalid("key_prefix must be 1 to {d} bytes", .{key_prefix_bytes_max});
    result.key_prefix = config.key_prefix;
    return result;
}

// --- Plugin interface -----------------------------------------------------

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    allocator = host_allocator.allocator();
    const config_str = std.mem.span(config);
    const text = if (config_str.len == 0) "{}" else config_str;
    // alloc_always: the strings must outlive `config`, which is only valid
    // during this call (by default they may point into it).
    const parsed = std.json.parseFromSlice(Config, allocator, text, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| {
        std.debug.print(log_prefix ++ "Invalid config: {s}\n", .{@errorName(err)});
        return 1;
    };
    const valid = validate(parsed.value) catch {
        parsed.deinit();
        return 1;
    };
    var table: MemoryCounters = .{ .capacity = valid.max_tracked_keys };
    if (valid.backend == .memory) {
        // Reserved up front: counting never grows the table, and a
        // `max_tracked_keys` the memory cannot hold fails here, not later.
        table.map.ensureTotalCapacity(allocator, valid.max_tracked_keys) catch {
            std.debug.print(log_prefix ++ "Invalid config: no memory for max_tracked_keys = {d}\n", .{valid.max_tracked_keys});
            parsed.deinit();
            return 1;
        };
    }
    config_parsed = parsed;
    settings = valid;
    counters = table;
    backend_down = false;
    switch (settings.backend) {
        .host => std.debug.print(log_prefix ++ "Initialized: host counters, {d} per sender domain, {d} per client IP (0 = unlimited) per {d} s\n", .{ settings.max_per_sender_domain, settings.max_per_client_ip, settings.window_seconds }),
        .memory => std.debug.print(log_prefix ++ "Initialized: memory backend, {d} per sender domain, {d} per client IP (0 = unlimited) per {d} s\n", .{ settings.max_per_sender_domain, settings.max_per_client_ip, settings.window_seconds }),
        .redis => std.debug.print(log_prefix ++ "Initialized: redis backend at {s}, {d} per sender domain, {d} per client IP (0 = unlimited) per {d} s\n", .{ settings.redis_address, settings.max_per_sender_domain, settings.max_per_client_ip, settings.window_seconds }),
    }
    return 0;
}

export fn smtp_plugin_deinit() callconv(.c) void {
    counters.deinit(allocator);
    counters = .{};
    if (config_parsed) |parsed| parsed.deinit();
    config_parsed = null;
    settings = .{};
    // The Redis connection is kept: closing needs a hook context, and a
    // re-init of this instance reuses (or, for a new address, closes) it.
    // The host closes it when it unloads the plugin.
}

export fn smtp_plugin_get_metadata() callconv(.c) ?*const plugin.PluginMetadata {
    return &metadata;
}

export fn smtp_plugin_execute_hook(context: *plugin.HookContext) callconv(.c) c_int {
    return switch (context.hook_type) {
        .command_validated => onCommandValidated(context),
        else => 0,
    };
}

export fn smtp_plugin_enable() callconv(.c) c_int {
    return 0;
}

export fn smtp_plugin_disable() callconv(.c) c_int {
    return 0;
}

export fn smtp_plugin_get_interface() callconv(.c) ?*const plugin.PluginInterface {
    const interface = plugin.PluginInterface{
        .init = smtp_plugin_init,
        .deinit = smtp_plugin_deinit,
        .getMetadata = smtp_plugin_get_metadata,
        .executeHook = smtp_plugin_execute_hook,
        .enable = smtp_plugin_enable,
        .disable = smtp_plugin_disable,
    };
    return &interface;
}

// --- The hook -------------------------------------------------------------

/// The fixed window `now_ms` falls in; every key shares the same windows.
pub fn windowIndex(now_ms: i64, window_ms: i64) i64 {
    return @divFloor(now_ms, window_ms);
}

fn onCommandValidated(ctx: *plugin.HookContext) c_int {
    const command = ctx.getMetadata("command") orelse return 0;
    // RCPT also reaches this hook; a transaction is counted once, at MAIL.
    if (!std.mem.eql(u8, command, "MAIL")) return 0;

    var domain_buf: [subject_bytes_max]u8 = undefined;
    var checks_buf: [2]Check = undefined;
    var checks_len: usize = 0;
    if (settings.max_per_sender_domain > 0) {
        // The null sender (bounces, MAIL FROM:<>) has no domain to count.
        const domain = ctx.getMetadata("sender_domain") orelse "";
        if (domain.len > 0) {
            const cut = domain[0..@min(domain.len, subject_bytes_max)];
            checks_buf[checks_len] = .{ .kind = .domain, .subject = std.ascii.lowerString(&domain_buf, cut), .limit = settings.max_per_sender_domain };
            checks_len += 1;
        }
    }
    if (settings.max_per_client_ip > 0) {
        const ip = ctx.getMetadata("remote_ip") orelse "";
        if (ip.len > 0) {
            checks_buf[checks_len] = .{ .kind = .ip, .subject = ip[0..@min(ip.len, subject_bytes_max)], .limit = settings.max_per_client_ip };
            checks_len += 1;
        }
    }
    const checks = checks_buf[0..checks_len];
    if (checks.len == 0) return 0;

    const window = windowIndex(ctx.nowMs(), settings.windowMs());
    var counts: [2]u64 = undefined;
    // Every check is counted, refused attempts included (an INCR cannot be
    // taken back without a race), so retrying does not get through sooner.
    const counted: CountError!void = switch (settings.backend) {
        .host => countOnHost(ctx, checks, &counts),
        .memory => countInMemory(window, checks, &counts),
        .redis => countInRedis(ctx, window, checks, &counts),
    };
    counted catch |err| return backendFailed(ctx, err);
    if (backend_down) {
        backend_down = false;
        std.debug.print(log_prefix ++ "{s} backend answers again\n", .{@tagName(settings.backend)});
    }
    for (checks, counts[0..checks.len]) |check, count| {
        if (count > check.limit) return refuse(ctx, check);
    }
    return 0;
}

fn refuse(ctx: *plugin.HookContext, check: Check) c_int {
    var text_buf: [64 + subject_bytes_max]u8 = undefined;
    const text = std.fmt.bufPrint(&text_buf, "4.7.1 Rate limit exceeded for {s}", .{check.subject}) catch unreachable;
    // These small sets cannot hit the host's bounds; were one to fail, the
    // cancel below still refuses (with the host's default reply).
    ctx.setMetadata("smtp_reply_code", "451") catch {};
    ctx.setMetadata("smtp_reply_text", text) catch {};
    ctx.setMetadata("rate_limit_exceeded", "true") catch {};
    return @intFromEnum(plugin.HookResult.cancel);
}

fn backendFailed(ctx: *plugin.HookContext, err: CountError) c_int {
    if (!backend_down) {
        backend_down = true;
        const hint = if (err == error.NetDenied) " (is it listed in allow_connect?)" else "";
        switch (settings.backend) {
            .host => std.debug.print(log_prefix ++ "host counters cannot count: {s}{s}; answering per on_backend_error = {s}\n", .{ @errorName(err), if (err == error.CounterDenied) " (is allow_counters = true set for this plugin?)" else "", @tagName(settings.on_backend_error) }),
            .memory => std.debug.print(log_prefix ++ "memory backend cannot count: {s}; answering per on_backend_error = {s}\n", .{ @errorName(err), @tagName(settings.on_backend_error) }),
            .redis => std.debug.print(log_prefix ++ "redis backend {s} failed: {s}{s}; answering per on_backend_error = {s}\n", .{ settings.redis_address, @errorName(err), hint, @tagName(settings.on_backend_error) }),
        }
    }
    switch (settings.on_backend_error) {
        .allow => return 0,
        .tempfail => {
            ctx.setMetadata("smtp_reply_code", "451") catch {};
            ctx.setMetadata("smtp_reply_text", "4.3.0 Rate limit service unavailable, try again later") catch {};
            return @intFromEnum(plugin.HookResult.cancel);
        },
    }
}

const CountError = error{
    OutOfMemory,
    RequestTooLarge,
    RedisError,
    RedisProtocol,
    RedisClosed,
    /// The peer was gone before it answered anything: a reused connection
    /// that Redis closed meanwhile. Safe to retry: nothing was counted.
    ConnectionLost,
} || plugin.NetError || plugin.CounterError;

// --- Host backend: the server's counters (ABI 1.2) ---------------------------

/// `domain:<domain>` or `ip:<ip>`. The host takes keys of UTF-8 without
/// control characters or spaces; other bytes become "_", which can only make
/// their senders share a count.
fn hostKey(buf: *[7 + subject_bytes_max]u8, check: Check) []const u8 {
    const tag = check.kind.hostTag();
    @memcpy(buf[0..tag.len], tag);
    for (check.subject, buf[tag.len..][0..check.subject.len]) |byte, *out| {
        out.* = if (byte <= ' ' or byte >= 0x7f) '_' else byte;
    }
    return buf[0 .. tag.len + check.subject.len];
}

fn countOnHost(ctx: *plugin.HookContext, checks: []const Check, counts: []u64) CountError!void {
    for (checks, 0..) |check, i| {
        var key_buf: [7 + subject_bytes_max]u8 = undefined;
        counts[i] = @intCast(try ctx.counterIncr(hostKey(&key_buf, check), 1, settings.window_seconds));
    }
}

// --- Memory backend -------------------------------------------------------

/// Counts of the current window, one entry per "d:<domain>" or "i:<ip>".
/// Every entry belongs to `window`: when a new window starts the table is
/// emptied at once, which is the eviction of expired windows. Within a
/// window, at most `capacity` keys are tracked; a newcomer to a full table
/// replaces the smallest count and starts from it (the Space-Saving scheme):
/// a count is never lower than the truth, so churning through many keys
/// cannot reset a busy sender's count.
pub const MemoryCounters = struct {
    map: std.StringHashMapUnmanaged(u32) = .empty,
    window: i64 = 0,
    capacity: u32 = 0,

    pub fn deinit(self: *MemoryCounters, gpa: std.mem.Allocator) void {
        self.freeKeys(gpa);
        self.map.deinit(gpa);
    }

    fn freeKeys(self: *MemoryCounters, gpa: std.mem.Allocator) void {
        var keys = self.map.keyIterator();
        while (keys.next()) |key| gpa.free(key.*);
        self.map.clearRetainingCapacity();
    }

    pub fn tracked(self: *const MemoryCounters) u32 {
        return self.map.count();
    }

    /// Adds one to `key` in `window` and returns the new count.
    pub fn increment(self: *MemoryCounters, gpa: std.mem.Allocator, window: i64, key: []const u8) error{OutOfMemory}!u32 {
        std.debug.assert(self.capacity > 0);
        // Any change, a clock stepped back included, starts afresh.
        if (window != self.window) {
            self.freeKeys(gpa);
            self.window = window;
        }
        if (self.map.getPtr(key)) |count| {
            count.* +|= 1;
            return count.*;
        }
        var start: u32 = 0;
        if (self.map.count() >= self.capacity) start = self.evictSmallest(gpa);
        const copy = try gpa.dupe(u8, key);
        // Capacity was reserved at init and the table never exceeds it.
        std.debug.assert(self.map.count() < self.capacity);
        const entry = self.map.getOrPutAssumeCapacity(copy);
        std.debug.assert(!entry.found_existing);
        entry.value_ptr.* = start +| 1;
        return entry.value_ptr.*;
    }

    /// Removes the entry with the smallest count; returns that count.
    fn evictSmallest(self: *MemoryCounters, gpa: std.mem.Allocator) u32 {
        var smallest: ?std.StringHashMapUnmanaged(u32).Entry = null;
        var entries = self.map.iterator();
        while (entries.next()) |entry| {
            if (smallest == null or entry.value_ptr.* < smallest.?.value_ptr.*) smallest = entry;
        }
        const victim = smallest orelse return 0;
        const key = victim.key_ptr.*;
        const count = victim.value_ptr.*;
        self.map.removeByPtr(victim.key_ptr);
        gpa.free(key);
        return count;
    }
};

fn countInMemory(window: i64, checks: []const Check, counts: []u64) CountError!void {
    for (checks, 0..) |check, i| {
        var key_buf: [2 + subject_bytes_max]u8 = undefined;
        const tag = check.kind.memoryTag();
        @memcpy(key_buf[0..tag.len], tag);
        @memcpy(key_buf[tag.len..][0..check.subject.len], check.subject);
        counts[i] = try counters.increment(allocator, window, key_buf[0 .. tag.len + check.subject.len]);
    }
}

// --- Redis backend: RESP over ctx.connect -----------------------------------

/// A byte buffer of fixed size that refuses to overflow.
const Buffer = struct {
    bytes: []u8,
    len: usize = 0,

    fn append(self: *Buffer, data: []const u8) error{RequestTooLarge}!void {
        if (self.bytes.len - self.len < data.len) return error.RequestTooLarge;
        @memcpy(self.bytes[self.len..][0..data.len], data);
        self.len += data.len;
    }

    fn print(self: *Buffer, comptime fmt: []const u8, args: anytype) error{RequestTooLarge}!void {
        const written = std.fmt.bufPrint(self.bytes[self.len..], fmt, args) catch return error.RequestTooLarge;
        self.len += written.len;
    }

    fn slice(self: *const Buffer) []const u8 {
        return self.bytes[0..self.len];
    }
};

/// Appends one command as a RESP array of bulk strings (binary safe, so a
/// domain needs no escaping).
pub fn encodeCommand(out: *Buffer, args: []const []const u8) error{RequestTooLarge}!void {
    try out.print("*{d}\r\n", .{args.len});
    for (args) |arg| {
        try out.print("${d}\r\n", .{arg.len});
        try out.append(arg);
        try out.append("\r\n");
    }
}

/// `prefix:domain:<d>:<window index>` or `prefix:ip:<ip>:<window index>`.
pub fn redisKey(buf: []u8, prefix: []const u8, kind: Kind, subject: []const u8, window: i64) error{RequestTooLarge}![]u8 {
    return std.fmt.bufPrint(buf, "{s}:{s}:{s}:{d}", .{ prefix, @tagName(kind), subject, window }) catch error.RequestTooLarge;
}

/// INCR then EXPIRE for each check, in one write: one round trip whatever
/// the number of checks. The expiry (a window, renewed by each INCR) only
/// collects old keys: the window index in the key is what starts a new count.
pub fn encodeRequest(out: *Buffer, prefix: []const u8, window: i64, window_seconds: u32, checks: []const Check) error{RequestTooLarge}!void {
    var ttl_buf: [16]u8 = undefined;
    const ttl = std.fmt.bufPrint(&ttl_buf, "{d}", .{window_seconds}) catch unreachable;
    for (checks) |check| {
        var key_buf: [key_bytes_max]u8 = undefined;
        const key = try redisKey(&key_buf, prefix, check.kind, check.subject, window);
        try encodeCommand(out, &.{ "INCR", key });
        try encodeCommand(out, &.{ "EXPIRE", key, ttl });
    }
}

pub const Reply = union(enum) {
    integer: i64,
    simple: []const u8,
    failure: []const u8,
};

pub const ParsedReply = struct {
    reply: Reply,
    /// Bytes the reply took, CRLF included.
    len: usize,
};

/// Parses one reply from the start of `bytes`: null when more bytes are
/// needed. Only the one-line replies INCR and EXPIRE can give are accepted.
pub fn parseReply(bytes: []const u8) error{RedisProtocol}!?ParsedReply {
    if (bytes.len == 0) return null;
    const newline = std.mem.indexOfScalar(u8, bytes, '\n') orelse {
        if (bytes.len >= reply_bytes_max) return error.RedisProtocol;
        return null;
    };
    if (newline == 0 or bytes[newline - 1] != '\r') return error.RedisProtocol;
    const body = bytes[1 .. newline - 1];
    const reply: Reply = switch (bytes[0]) {
        ':' => .{ .integer = std.fmt.parseInt(i64, body, 10) catch return error.RedisProtocol },
        '+' => .{ .simple = body },
        '-' => .{ .failure = body },
        else => return error.RedisProtocol,
    };
    return .{ .reply = reply, .len = newline + 1 };
}

/// The connection to Redis, kept across hook calls (the host runs one call
/// of this plugin at a time, so a global is safe).
const RedisConnection = struct {
    socket: ?plugin.Socket = null,
    /// The address `socket` is connected to: a re-init with another
    /// address must not keep talking to the old one.
    address_buf: [address_bytes_max]u8 = undefined,
    address_len: usize = 0,

    fn address(self: *const RedisConnection) []const u8 {
        return self.address_buf[0..self.address_len];
    }

    fn close(self: *RedisConnection, ctx: *plugin.HookContext) void {
        if (self.socket) |socket| socket.close(ctx);
        self.socket = null;
    }

    fn open(self: *RedisConnection, ctx: *plugin.HookContext, deadline_ms: i64) CountError!plugin.Socket {
        const socket = try ctx.connect(settings.redis_address, try remainingMs(ctx, deadline_ms));
        self.socket = socket;
        @memcpy(self.address_buf[0..settings.redis_address.len], settings.redis_address);
        self.address_len = settings.redis_address.len;
        return socket;
    }
};

fn remainingMs(ctx: *const plugin.HookContext, deadline_ms: i64) error{NetTimeout}!u32 {
    const left = deadline_ms - ctx.nowMs();
    if (left <= 0) return error.NetTimeout;
    return @intCast(@min(left, timeout_ms_max));
}

fn countInRedis(ctx: *plugin.HookContext, window: i64, checks: []const Check, counts: []u64) CountError!void {
    var request_buf: [request_bytes_max]u8 = undefined;
    var request: Buffer = .{ .bytes = &request_buf };
    try encodeRequest(&request, settings.key_prefix, window, settings.window_seconds, checks);
    const deadline_ms = ctx.nowMs() + settings.timeout_ms;

    if (redis.socket != null and !std.mem.eql(u8, redis.address(), settings.redis_address)) redis.close(ctx);
    const reused = redis.socket != null;
    const socket = redis.socket orelse try redis.open(ctx, deadline_ms);
    exchange(ctx, socket, request.slice(), counts[0..checks.len], deadline_ms) catch |err| {
        // After any failure the connection's state is unknown (replies may
        // still be on their way): it is never used again.
        redis.close(ctx);
        if (!(reused and err == error.ConnectionLost)) return err;
        // Redis restarted or dropped an idle connection since the last
        // call: one fresh attempt, since nothing was counted.
        const fresh = try redis.open(ctx, deadline_ms);
        exchange(ctx, fresh, request.slice(), counts[0..checks.len], deadline_ms) catch |again| {
            redis.close(ctx);
            return again;
        };
    };
}

/// Sends the request and reads one INCR and one EXPIRE reply per count.
fn exchange(ctx: *plugin.HookContext, socket: plugin.Socket, request: []const u8, counts: []u64, deadline_ms: i64) CountError!void {
    socket.send(ctx, request, try remainingMs(ctx, deadline_ms)) catch |err| return switch (err) {
        error.NetClosed, error.NetIo => error.ConnectionLost,
        else => err,
    };
    const replies_expected = 2 * counts.len;
    var buf: [reply_bytes_max]u8 = undefined;
    var have: usize = 0;
    var parsed: usize = 0;
    var replies: usize = 0;
    var received_any = false;
    var recv_calls: usize = 0;
    while (replies < replies_expected) {
        if (try parseReply(buf[parsed..have])) |one| {
            try takeReply(one.reply, replies, counts);
            parsed += one.len;
            replies += 1;
            continue;
        }
        if (have == buf.len) {
            // parseReply refuses a line as long as the buffer, so a full
            // buffer always starts with parsed replies to drop.
            std.debug.assert(parsed > 0);
            std.mem.copyForwards(u8, buf[0 .. have - parsed], buf[parsed..have]);
            have -= parsed;
            parsed = 0;
        }
        if (recv_calls == recv_calls_max) return error.RedisProtocol;
        recv_calls += 1;
        const got = socket.recv(ctx, buf[have..], try remainingMs(ctx, deadline_ms)) catch |err| return switch (err) {
            error.NetIo => if (received_any) error.NetIo else error.ConnectionLost,
            else => err,
        };
        if (got.len == 0) return if (received_any) error.RedisClosed else error.ConnectionLost;
        received_any = true;
        have += got.len;
    }
    // Bytes beyond the expected replies mean the stream is out of step.
    if (parsed != have) return error.RedisProtocol;
}

fn takeReply(reply: Reply, index: usize, counts: []u64) CountError!void {
    switch (reply) {
        .failure => |text| {
            std.debug.print(log_prefix ++ "redis answered: {s}\n", .{text[0..@min(text.len, 200)]});
            return error.RedisError;
        },
        .simple => return error.RedisProtocol,
        .integer => |value| {
            if (index % 2 == 1) return; // EXPIRE: 1 set, 0 no such key; both fine
            if (value < 1) return error.RedisProtocol;
            counts[index / 2] = @intCast(value);
        },
    }
}

// --- Tests ------------------------------------------------------------------

const testing = std.testing;
const metadata_host = @import("smtp-server").metadata_host;

const hour_ms: i64 = 3600 * 1000;

fn initWith(config: [:0]const u8) !void {
    const host = struct {
        var wrapped: plugin.Allocator = undefined;
    };
    host.wrapped = plugin.Allocator.wrap(&testing.allocator);
    // The host backend counts in the unit-test host's counters: each test starts with none.
    metadata_host.resetTestCounters();
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host.wrapped, config));
}

/// The backends that count on the unit-test host alone (redis needs a peer).
const local_backends = [_][]const u8{ "host", "memory" };

/// initWith `{"backend": "<backend>", <rest>}`.
fn initBackend(backend: []const u8, comptime rest: []const u8) !void {
    var buf: [256]u8 = undefined;
    const text = try std.fmt.bufPrint(buf[0 .. buf.len - 1], "{{\"backend\": \"{s}\", " ++ rest ++ "}}", .{backend});
    buf[text.len] = 0;
    try initWith(buf[0..text.len :0]);
}

/// What the unit-test host's counters answer instead of counting (null: they count).
var host_failure: ?plugin.CounterStatus = null;

/// One MAIL through the plugin at `now_ms`; returns the hook's result and
/// the reply text it chose (owned by the caller's buffer).
fn mail(domain: []const u8, ip: []const u8, now_ms: i64, text_buf: []u8) !struct { code: c_int, text: []const u8 } {
    var ctx = plugin.HookContext.init(testing.allocator, .command_validated);
    defer ctx.deinit();
    metadata_host.storeOf(&ctx).test_now_ms = now_ms;
    metadata_host.storeOf(&ctx).test_counter_failure = host_failure;
    try ctx.setMetadata("command", "MAIL");
    try ctx.setMetadata("sender", "someone@x");
    try ctx.setMetadata("sender_domain", domain);
    try ctx.setMetadata("remote_ip", ip);
    const code = smtp_plugin_execute_hook(&ctx);
    const text = ctx.getMetadata("smtp_reply_text") orelse "";
    @memcpy(text_buf[0..text.len], text);
    if (code != 0) {
        try testing.expectEqualStrings("451", ctx.getMetadata("smtp_reply_code").?);
    }
    if (std.mem.startsWith(u8, text, "4.7.1")) try testing.expectEqualStrings("true", ctx.getMetadata("rate_limit_exceeded").?);
    return .{ .code = code, .text = text_buf[0..text.len] };
}

test "the 4th MAIL of a domain in a window gets 451 4.7.1, other domains pass, the next window starts afresh" {
    for (local_backends) |backend| try fourthMailRefused(backend);
}

fn fourthMailRefused(backend: []const u8) !void {
    try initBackend(backend, "\"max_per_sender_domain\": 3");
    defer smtp_plugin_deinit();
    var buf: [512]u8 = undefined;
    const t0 = 1_700_000_000_000 - @mod(1_700_000_000_000, hour_ms); // the start of a window
    for (0..3) |i| try testing.expectEqual(@as(c_int, 0), (try mail("example.com", "192.0.2.1", t0 + @as(i64, @intCast(i)) * 1000, &buf)).code);
    const over = try mail("Example.COM", "192.0.2.9", t0 + 5000, &buf);
    try testing.expectEqual(@as(c_int, 2), over.code);
    try testing.expectEqualStrings("4.7.1 Rate limit exceeded for example.com", over.text);
    try testing.expectEqual(@as(c_int, 0), (try mail("example.org", "192.0.2.1", t0 + 6000, &buf)).code);
    // Still the same window one millisecond before its end.
    try testing.expectEqual(@as(c_int, 2), (try mail("example.com", "192.0.2.1", t0 + hour_ms - 1, &buf)).code);
    try testing.expectEqual(@as(c_int, 0), (try mail("example.com", "192.0.2.1", t0 + hour_ms, &buf)).code);
}

test "per client IP limit; 0 leaves the domain unlimited" {
    for (local_backends) |backend| try perClientIp(backend);
}

fn perClientIp(backend: []const u8) !void {
    try initBackend(backend, "\"max_per_sender_domain\": 0, \"max_per_client_ip\": 2, \"window_seconds\": 60");
    defer smtp_plugin_deinit();
    var buf: [512]u8 = undefined;
    try testing.expectEqual(@as(c_int, 0), (try mail("a.example", "198.51.100.7", 0, &buf)).code);
    try testing.expectEqual(@as(c_int, 0), (try mail("b.example", "198.51.100.7", 1, &buf)).code);
    const over = try mail("c.example", "198.51.100.7", 2, &buf);
    try testing.expectEqual(@as(c_int, 2), over.code);
    try testing.expectEqualStrings("4.7.1 Rate limit exceeded for 198.51.100.7", over.text);
    try testing.expectEqual(@as(c_int, 0), (try mail("c.example", "198.51.100.8", 3, &buf)).code);
    try testing.expectEqual(@as(c_int, 0), (try mail("c.example", "198.51.100.7", 60_000, &buf)).code);
}

test "RCPT, other hooks and the null sender's missing domain are not counted" {
    for (local_backends) |backend| try onlyMailCounts(backend);
}

fn onlyMailCounts(backend: []const u8) !void {
    try initBackend(backend, "\"max_per_sender_domain\": 1");
    defer smtp_plugin_deinit();
    var rcpt = plugin.HookContext.init(testing.allocator, .command_validated);
    defer rcpt.deinit();
    try rcpt.setMetadata("command", "RCPT");
    try rcpt.setMetadata("sender_domain", "example.com");
    for (0..3) |_| try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&rcpt));
    var other = plugin.HookContext.init(testing.allocator, .message_received);
    defer other.deinit();
    try other.setMetadata("sender_domain", "example.com");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&other));
    var buf: [512]u8 = undefined;
    for (0..3) |_| try testing.expectEqual(@as(c_int, 0), (try mail("", "192.0.2.1", 0, &buf)).code);
    try testing.expectEqual(@as(c_int, 0), (try mail("example.com", "192.0.2.1", 0, &buf)).code);
    try testing.expectEqual(@as(c_int, 2), (try mail("example.com", "192.0.2.1", 0, &buf)).code);
}

test "windowIndex is a floor division, also before the epoch" {
    try testing.expectEqual(@as(i64, 0), windowIndex(0, hour_ms));
    try testing.expectEqual(@as(i64, 0), windowIndex(hour_ms - 1, hour_ms));
    try testing.expectEqual(@as(i64, 1), windowIndex(hour_ms, hour_ms));
    try testing.expectEqual(@as(i64, -1), windowIndex(-1, hour_ms));
}

test "the memory table is bounded: a new window empties it, a newcomer to a full table inherits the smallest count" {
    var table: MemoryCounters = .{ .capacity = 3 };
    try table.map.ensureTotalCapacity(testing.allocator, 3);
    defer table.deinit(testing.allocator);
    try testing.expectEqual(@as(u32, 1), try table.increment(testing.allocator, 7, "d:a"));
    try testing.expectEqual(@as(u32, 2), try table.increment(testing.allocator, 7, "d:a"));
    try testing.expectEqual(@as(u32, 1), try table.increment(testing.allocator, 7, "d:b"));
    try testing.expectEqual(@as(u32, 2), try table.increment(testing.allocator, 7, "d:b"));
    try testing.expectEqual(@as(u32, 1), try table.increment(testing.allocator, 7, "d:c"));
    try testing.expectEqual(@as(u32, 3), table.tracked());
    // Full: "d:c" (count 1) goes; "d:d" starts at 1 + 1, never below the truth.
    try testing.expectEqual(@as(u32, 2), try table.increment(testing.allocator, 7, "d:d"));
    try testing.expectEqual(@as(u32, 3), table.tracked());
    try testing.expect(table.map.get("d:c") == null);
    try testing.expectEqual(@as(u32, 3), try table.increment(testing.allocator, 7, "d:a"));
    // Many newcomers never grow the table past its bound.
    var name_buf: [16]u8 = undefined;
    for (0..50) |i| _ = try table.increment(testing.allocator, 7, try std.fmt.bufPrint(&name_buf, "i:{d}", .{i}));
    try testing.expectEqual(@as(u32, 3), table.tracked());
    // The next window evicts every expired count at once.
    try testing.expectEqual(@as(u32, 1), try table.increment(testing.allocator, 8, "d:a"));
    try testing.expectEqual(@as(u32, 1), table.tracked());
}

test "host backend: the host's keys, bytes it refuses, and its failures per on_backend_error" {
    var key_buf: [7 + subject_bytes_max]u8 = undefined;
    try testing.expectEqualStrings("domain:ex_mple.com", hostKey(&key_buf, .{ .kind = .domain, .subject = "ex mple.com", .limit = 1 }));
    try testing.expectEqualStrings("ip:__::1", hostKey(&key_buf, .{ .kind = .ip, .subject = "\x00\xff::1", .limit = 1 }));
    try initWith("{\"max_per_sender_domain\": 1}");
    var buf: [512]u8 = undefined;
    // Bytes the host would refuse in a key share one count, not an error.
    try testing.expectEqual(@as(c_int, 0), (try mail("caf\xe9.example", "192.0.2.1", 0, &buf)).code);
    try testing.expectEqual(@as(c_int, 2), (try mail("caf\xff.example", "192.0.2.1", 0, &buf)).code);
    defer host_failure = null;
    host_failure = .unavailable;
    const refused = try mail("example.com", "192.0.2.1", 0, &buf);
    try testing.expectEqual(@as(c_int, 2), refused.code);
    try testing.expectEqualStrings("4.3.0 Rate limit service unavailable, try again later", refused.text);
    host_failure = .denied;
    try testing.expectEqual(@as(c_int, 2), (try mail("example.com", "192.0.2.1", 0, &buf)).code);
    smtp_plugin_deinit();
    try initWith("{\"max_per_sender_domain\": 1, \"on_backend_error\": \"allow\"}");
    defer smtp_plugin_deinit();
    host_failure = .unavailable;
    for (0..3) |_| try testing.expectEqual(@as(c_int, 0), (try mail("example.com", "192.0.2.1", 0, &buf)).code);
}

test "max_tracked_keys bounds the plugin's table" {
    try initWith("{\"backend\": \"memory\", \"max_per_sender_domain\": 5, \"max_tracked_keys\": 4}");
    defer smtp_plugin_deinit();
    var buf: [512]u8 = undefined;
    var name_buf: [32]u8 = undefined;
    for (0..20) |i| {
        const domain = try std.fmt.bufPrint(&name_buf, "d{d}.example", .{i});
        try testing.expectEqual(@as(c_int, 0), (try mail(domain, "192.0.2.1", 0, &buf)).code);
    }
    try testing.expectEqual(@as(u32, 4), counters.tracked());
}

test "RESP: commands are arrays of bulk strings, keys carry the window index" {
    var bytes: [request_bytes_max]u8 = undefined;
    var out: Buffer = .{ .bytes = &bytes };
    try encodeCommand(&out, &.{ "INCR", "k" });
    try testing.expectEqualStrings("*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n", out.slice());

    var request: Buffer = .{ .bytes = &bytes };
    const checks = [_]Check{
        .{ .kind = .domain, .subject = "example.com", .limit = 1 },
        .{ .kind = .ip, .subject = "127.0.0.1", .limit = 1 },
    };
    try encodeRequest(&request, "rl", 472222, 3600, &checks);
    try testing.expectEqualStrings(
        "*2\r\n$4\r\nINCR\r\n$28\r\nrl:domain:example.com:472222\r\n" ++
            "*3\r\n$6\r\nEXPIRE\r\n$28\r\nrl:domain:example.com:472222\r\n$4\r\n3600\r\n" ++
            "*2\r\n$4\r\nINCR\r\n$22\r\nrl:ip:127.0.0.1:472222\r\n" ++
            "*3\r\n$6\r\nEXPIRE\r\n$22\r\nrl:ip:127.0.0.1:472222\r\n$4\r\n3600\r\n",
        request.slice(),
    );
    // The largest request the config allows fits its buffer.
    const long: [subject_bytes_max]u8 = @splat('a');
    const prefix: [key_prefix_bytes_max]u8 = @splat('p');
    const worst = [_]Check{ .{ .kind = .domain, .subject = &long, .limit = 1 }, .{ .kind = .domain, .subject = &long, .limit = 1 } };
    var full: Buffer = .{ .bytes = &bytes };
    try encodeRequest(&full, &prefix, std.math.minInt(i64), window_seconds_max, &worst);
    var small_bytes: [8]u8 = undefined;
    var small: Buffer = .{ .bytes = &small_bytes };
    try testing.expectError(error.RequestTooLarge, encodeCommand(&small, &.{ "INCR", "key" }));
}

test "RESP: one-line replies, partial input, and garbage" {
    const one = (try parseReply(":42\r\n:1\r\n")).?;
    try testing.expectEqual(@as(i64, 42), one.reply.integer);
    try testing.expectEqual(@as(usize, 5), one.len);
    try testing.expectEqualStrings("ERR wrong kind", (try parseReply("-ERR wrong kind\r\n")).?.reply.failure);
    try testing.expectEqualStrings("OK", (try parseReply("+OK\r\n")).?.reply.simple);
    try testing.expect(try parseReply("") == null);
    try testing.expect(try parseReply(":4") == null);
    try testing.expect(try parseReply(":42\r") == null);
    try testing.expectError(error.RedisProtocol, parseReply(":4x\r\n"));
    try testing.expectError(error.RedisProtocol, parseReply("$3\r\nabc\r\n"));
    try testing.expectError(error.RedisProtocol, parseReply(":1\n"));
    const endless: [reply_bytes_max]u8 = @splat('-');
    try testing.expectError(error.RedisProtocol, parseReply(&endless));
}

test "config: bad values refuse init, unknown keys are ignored" {
    const host = plugin.Allocator.wrap(&testing.allocator);
    const bad = [_][:0]const u8{
        "{\"backend\": \"memcached\"}",
        "{\"on_backend_error\": \"reject\"}",
        "{\"window_seconds\": 0}",
        "{\"max_per_sender_domain\": -1}",
        "{\"max_per_client_ip\": \"ten\"}",
        "{\"max_tracked_keys\": 0}",
        "{\"timeout_ms\": 0}",
        "{\"backend\": \"redis\", \"redis\": \"127.0.0.1:6379\"}",
        "{\"key_prefix\": \"\"}",
        "not json",
    };
    for (bad) |config| try testing.expectEqual(@as(c_int, 1), smtp_plugin_init(&host, config));
    try initWith("{\"backend\": \"redis\", \"redis\": \"unix:/run/redis.sock\", \"key_prefix\": \"mx1\", \"comment\": \"ignored\"}");
    smtp_plugin_deinit();
}

test "config strings outlive the config text, which is only valid during init" {
    var text = "{\"backend\": \"redis\", \"redis\": \"tcp:127.0.0.1:6380\", \"key_prefix\": \"mx1\"}".*;
    try initWith(&text);
    defer smtp_plugin_deinit();
    @memset(text[0 .. text.len - 1], 'x');
    try testing.expectEqualStrings("tcp:127.0.0.1:6380", settings.redis_address);
    try testing.expectEqualStrings("mx1", settings.key_prefix);
}

test "redis unreachable (unit-test contexts refuse every connect): tempfail by default, allow on request" {
    try initWith("{\"backend\": \"redis\", \"max_per_sender_domain\": 3}");
    var buf: [512]u8 = undefined;
    const refused = try mail("example.com", "192.0.2.1", 0, &buf);
    try testing.expectEqual(@as(c_int, 2), refused.code);
    try testing.expectEqualStrings("4.3.0 Rate limit service unavailable, try again later", refused.text);
    smtp_plugin_deinit();

    try initWith("{\"backend\": \"redis\", \"max_per_sender_domain\": 3, \"on_backend_error\": \"allow\"}");
    defer smtp_plugin_deinit();
    try testing.expectEqual(@as(c_int, 0), (try mail("example.com", "192.0.2.1", 0, &buf)).code);
}

/// A scripted peer behind the host's network functions: records what the
/// plugin sends and answers each recv with the next scripted chunk ("" is
/// the peer closing). Only for the connection-handling tests below; the
/// integration tests run against a real redis-server.
const ScriptedPeer = struct {
    var connects: usize = 0;
    var closes: usize = 0;
    var sent: [4096]u8 = undefined;
    var sent_len: usize = 0;
    var script: []const []const u8 = &.{};
    var next: usize = 0;
    var now_ms: i64 = 0;

    fn reset(chunks: []const []const u8) void {
        connects = 0;
        closes = 0;
        sent_len = 0;
        script = chunks;
        next = 0;
    }

    pub fn nowUnixMs(ctx: *const plugin.HookContext) callconv(.c) i64 {
        _ = ctx;
        return now_ms;
    }
    pub fn netConnect(ctx: *plugin.HookContext, address: [*]const u8, address_len: usize, timeout_ms: u32) callconv(.c) i32 {
        _ = .{ ctx, address, address_len, timeout_ms };
        connects += 1;
        return @intCast(connects);
    }
    pub fn netSend(ctx: *plugin.HookContext, handle: i32, data: [*]const u8, len: usize, timeout_ms: u32) callconv(.c) i32 {
        _ = .{ ctx, handle, timeout_ms };
        @memcpy(sent[sent_len..][0..len], data[0..len]);
        sent_len += len;
        return 0;
    }
    pub fn netRecv(ctx: *plugin.HookContext, handle: i32, buf: [*]u8, cap: usize, timeout_ms: u32) callconv(.c) i32 {
        _ = .{ ctx, handle, timeout_ms };
        if (next == script.len) return @intFromEnum(plugin.NetStatus.timeout);
        const chunk = script[next];
        next += 1;
        std.debug.assert(chunk.len <= cap);
        @memcpy(buf[0..chunk.len], chunk);
        return @intCast(chunk.len);
    }
    pub fn netClose(ctx: *plugin.HookContext, handle: i32) callconv(.c) i32 {
        _ = .{ ctx, handle };
        closes += 1;
        return 0;
    }

    const api = metadata_host.hostApi(ScriptedPeer);

    fn mail(domain: []const u8) !c_int {
        const ctx = metadata_host.createContext(testing.allocator, .{}, &api) orelse return error.OutOfMemory;
        defer metadata_host.destroyContext(ctx);
        ctx.hook_type = .command_validated;
        try ctx.setMetadata("command", "MAIL");
        try ctx.setMetadata("sender_domain", domain);
        try ctx.setMetadata("remote_ip", "127.0.0.1");
        return smtp_plugin_execute_hook(ctx);
    }
};

test "redis: one pipelined write per MAIL, replies read across chunks, the connection kept" {
    try initWith("{\"backend\": \"redis\", \"max_per_sender_domain\": 2, \"key_prefix\": \"t\"}");
    defer smtp_plugin_deinit();
    ScriptedPeer.now_ms = 7 * hour_ms + 5;
    ScriptedPeer.reset(&.{ ":1\r", "\n:1\r\n" });
    try testing.expectEqual(@as(c_int, 0), try ScriptedPeer.mail("example.com"));
    try testing.expectEqualStrings("*2\r\n$4\r\nINCR\r\n$22\r\nt:domain:example.com:7\r\n*3\r\n$6\r\nEXPIRE\r\n$22\r\nt:domain:example.com:7\r\n$4\r\n3600\r\n", ScriptedPeer.sent[0..ScriptedPeer.sent_len]);
    ScriptedPeer.script = &.{ ":3", "\r\n", ":1\r\n" };
    ScriptedPeer.next = 0;
    try testing.expectEqual(@as(c_int, 2), try ScriptedPeer.mail("example.com"));
    try testing.expectEqual(@as(usize, 1), ScriptedPeer.connects);
    try testing.expectEqual(@as(usize, 0), ScriptedPeer.closes);
    // A re-init keeps the connection for the same address, and closes it
    // for another one.
    smtp_plugin_deinit();
    try initWith("{\"backend\": \"redis\", \"redis\": \"tcp:127.0.0.1:6380\"}");
    ScriptedPeer.script = &.{":1\r\n:1\r\n"};
    ScriptedPeer.next = 0;
    try testing.expectEqual(@as(c_int, 0), try ScriptedPeer.mail("example.com"));
    try testing.expectEqual(@as(usize, 2), ScriptedPeer.connects);
    try testing.expectEqual(@as(usize, 1), ScriptedPeer.closes);
    redis.close(scriptedContext());
}

test "redis: a reused connection the server closed is reopened once; an error reply closes it" {
    try initWith("{\"backend\": \"redis\", \"max_per_sender_domain\": 5}");
    defer smtp_plugin_deinit();
    ScriptedPeer.reset(&.{":1\r\n:1\r\n"});
    try testing.expectEqual(@as(c_int, 0), try ScriptedPeer.mail("example.com"));
    // Redis restarted: the old connection reads end-of-stream at once.
    ScriptedPeer.script = &.{ "", ":1\r\n:1\r\n" };
    ScriptedPeer.next = 0;
    try testing.expectEqual(@as(c_int, 0), try ScriptedPeer.mail("example.com"));
    try testing.expectEqual(@as(usize, 2), ScriptedPeer.connects);
    try testing.expectEqual(@as(usize, 1), ScriptedPeer.closes);
    // A fresh connection that fails is not retried: tempfail.
    ScriptedPeer.script = &.{"-MISCONF cannot write\r\n"};
    ScriptedPeer.next = 0;
    try testing.expectEqual(@as(c_int, 2), try ScriptedPeer.mail("example.com"));
    try testing.expectEqual(@as(usize, 2), ScriptedPeer.closes);
    try testing.expect(redis.socket == null);
    // Bytes beyond the expected replies: out of step, refused and closed.
    ScriptedPeer.script = &.{":1\r\n:1\r\n:9\r\n"};
    ScriptedPeer.next = 0;
    try testing.expectEqual(@as(c_int, 2), try ScriptedPeer.mail("example.com"));
    try testing.expect(redis.socket == null);
    try testing.expectEqual(@as(usize, 3), ScriptedPeer.connects);
}

/// A context for closing the scripted connection at the end of a test.
fn scriptedContext() *plugin.HookContext {
    const holder = struct {
        var ctx: plugin.HookContext = .{ .hook_type = .command_validated, .host = &ScriptedPeer.api, .host_data = null };
    };
    return &holder.ctx;
}
