//! message-logger: one structured syslog record per stored message, shipped
//! to a collector (rsyslog, syslog-ng, ...) over TCP.
//!
//! At `message_stored` the plugin builds an RFC 5424 line
//!   <PRI>1 TIMESTAMP HOSTNAME APP-NAME - stored [SD-ID message_id="..." ...]
//! and sends it with RFC 6587 octet-counting framing (`LEN SP MSG`).
//!
//! A collector that is down never blocks or fails mail: the hook always
//! returns continue; records wait in a bounded buffer (the oldest dropped when
//! it is full, drops counted); every network call has a short timeout; after
//! a failure the plugin tries to reconnect at most once every `retry_ms`, so
//! while the collector is down a message costs a buffer append. When the
//! collector is back, a `dropped` record reports what was lost since the last
//! report, then the buffered records follow in order.
//! Delivery is at least once: a record whose send failed mid-way is sent
//! again on the next connection.
const std = @import("std");
const plugin = @import("smtp-server").plugin;

const log_prefix = "[message-logger] ";

const Config = struct {
    /// "tcp:127.0.0.1:514", "tcp:localhost:PORT" or "unix:/PATH"; must also
    /// be granted in the plugin's `allow_connect`.
    collector: []const u8 = "tcp:127.0.0.1:514",
    /// RFC 5424 HOSTNAME; null: the server's hostname from server_starting,
    /// or "-" (the NILVALUE) until it is known.
    hostname: ?[]const u8 = null,
    app_name: []const u8 = "smtp-server",
    /// Custom SD-IDs are name@<enterprise number>; 32473 is the number RFC
    /// 5612 reserves for documentation.
    sd_id: []const u8 = "smtp@32473",
    facility: u8 = 2, // mail
    severity: u8 = 6, // informational
    /// Metadata keys set by earlier filters, logged when present.
    verdict_keys: ?[]const []const u8 = null,
    buffer_records: u32 = 1000,
    connect_timeout_ms: u32 = 200,
    send_timeout_ms: u32 = 200,
    retry_ms: u32 = 5000,
    /// Longer metadata values are cut (at a UTF-8 character boundary).
    value_bytes_max: u32 = 1024,
};

const default_verdict_keys = [_][]const u8{ "spam_score", "is_spam", "virus_name", "rate_limit_exceeded" };

/// Every stored record carries these, in this order, when the hook has them
/// (`time` is the record's own timestamp).
const fixed_keys = [_][]const u8{ "message_id", "sender", "recipients", "size", "spool_id", "quarantined" };

// Bounds on the config, so that the worst-case record size is known at init.
const verdict_keys_max = 32;
const buffer_records_max = 100_000;
const timeout_ms_max = 10_000;
const retry_ms_max = 3_600_000;
const value_bytes_min = 16;
const value_bytes_max_limit = 8192;
const collector_bytes_max = 512;
// RFC 5424 field lengths.
const hostname_bytes_max = 255;
const app_name_bytes_max = 48;
const sd_name_bytes_max = 32;

const severity_warning = 4;
/// "YYYY-MM-DDTHH:MM:SS.mmmZ"
const timestamp_len = 24;
/// Room before a record for its octet count and the space.
const frame_prefix_max = 21;

/// What init validated; strings point into `config_parsed`.
const Settings = struct {
    collector: []const u8,
    hostname: ?[]const u8,
    app_name: []const u8,
    sd_id: []const u8,
    facility: u8,
    severity: u8,
    verdict_keys: []const []const u8,
    connect_timeout_ms: u32,
    send_timeout_ms: u32,
    retry_ms: u32,
    value_bytes_max: usize,
};

var allocator: std.mem.Allocator = undefined;
var config_parsed: ?std.json.Parsed(Config) = null;
var settings: Settings = undefined;
/// Where a record is built before it is copied, at its size, into the buffer.
var scratch: []u8 = &.{};
var pending: Ring = .{};
/// The collector connection; null while down.
var socket: ?plugin.Socket = null;
/// No connect is attempted before this time (ms since the epoch).
var next_connect_ms: i64 = 0;
/// Records lost since the last `dropped` record reached the collector.
var dropped_unreported: u64 = 0;
var first_drop_ms: i64 = 0;
/// For logging state changes once instead of once per message.
var collector_down: bool = false;
/// The server's hostname, learned at server_starting when not configured.
var learned_hostname_buf: [hostname_bytes_max]u8 = undefined;
var learned_hostname: ?[]const u8 = null;

const metadata = plugin.PluginMetadata{
    .name = "message-logger",
    .version = "1.0.0",
    .author = "SMTP Team",
    .description = "One RFC 5424 record per stored message, to a syslog collector over TCP",
    .license = "MIT",
    .dependencies = &.{},
    .min_server_version = "0.28.0",
    .max_server_version = null,
    .handled_hooks = plugin.hookMask(&.{ .message_stored, .server_starting, .server_stopping }),
    .flags = plugin.flag_blocking,
};

/// A bounded FIFO of framed records, each owned (allocated with `allocator`).
pub const Ring = struct {
    slots: [][]u8 = &.{},
    head: usize = 0,
    len: usize = 0,

    pub fn init(a: std.mem.Allocator, capacity: usize) !Ring {
        std.debug.assert(capacity > 0);
        return .{ .slots = try a.alloc([]u8, capacity) };
    }

    pub fn deinit(self: *Ring, a: std.mem.Allocator) void {
        while (self.len > 0) self.popOldest(a);
        a.free(self.slots);
        self.* = .{};
    }

    /// Appends `record` (taking ownership). When full, the oldest record is
    /// freed to make room, and true is returned.
    pub fn push(self: *Ring, a: std.mem.Allocator, record: []u8) bool {
        var dropped = false;
        if (self.len == self.slots.len) {
            self.popOldest(a);
            dropped = true;
        }
        self.slots[(self.head + self.len) % self.slots.len] = record;
        self.len += 1;
        return dropped;
    }

    pub fn oldest(self: *const Ring) ?[]u8 {
        return if (self.len == 0) null else self.slots[self.head];
    }

    pub fn popOldest(self: *Ring, a: std.mem.Allocator) void {
        std.debug.assert(self.len > 0);
        a.free(self.slots[self.head]);
        self.head = (self.head + 1) % self.slots.len;
        self.len -= 1;
    }
};

/// Appends to a fixed buffer; running out of room is a bug (init sized it).
const Out = struct {
    buf: []u8,
    len: usize = 0,

    fn put(self: *Out, bytes: []const u8) error{NoSpaceLeft}!void {
        if (self.buf.len - self.len < bytes.len) return error.NoSpaceLeft;
        @memcpy(self.buf[self.len..][0..bytes.len], bytes);
        self.len += bytes.len;
    }

    fn byte(self: *Out, b: u8) error{NoSpaceLeft}!void {
        if (self.len == self.buf.len) return error.NoSpaceLeft;
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn print(self: *Out, comptime format: []const u8, args: anytype) error{NoSpaceLeft}!void {
        const text = try std.fmt.bufPrint(self.buf[self.len..], format, args);
        self.len += text.len;
    }

    fn written(self: *const Out) []u8 {
        return self.buf[0..self.len];
    }
};

// --- Config ---------------------------------------------------------------

fn invalid(comptime format: []const u8, args: anytype) c_int {
    std.debug.print(log_prefix ++ "Invalid config: " ++ format ++ "\n", args);
    return 1;
}

/// RFC 5424 PRINTUSASCII (33..126), 1 to `max` bytes.
fn isPrintUsAscii(text: []const u8, max: usize) bool {
    if (text.len == 0 or text.len > max) return false;
    for (text) |c| if (c < 33 or c > 126) return false;
    return true;
}

/// RFC 5424 SD-NAME (an SD-ID or a PARAM-NAME): PRINTUSASCII except
/// '=', ' ', ']' and '"', 1 to 32 bytes.
pub fn isSdName(text: []const u8) bool {
    if (!isPrintUsAscii(text, sd_name_bytes_max)) return false;
    for (text) |c| if (c == '=' or c == ']' or c == '"') return false;
    return true;
}

fn isFixedKey(key: []const u8) bool {
    for (fixed_keys) |fixed| if (std.mem.eql(u8, fixed, key)) return true;
    return std.mem.eql(u8, key, "time");
}

/// The largest record the settings can produce, framing included.
fn recordBytesMax(s: Settings) usize {
    const header_bytes = "<191>1 ".len + timestamp_len + 1 + hostname_bytes_max + 1 + app_name_bytes_max + " - dropped [".len + sd_name_bytes_max + 1;
    // ` name="value"`; escaping at most doubles a value.
    const param_bytes = 1 + sd_name_bytes_max + 2 + 2 * @max(s.value_bytes_max, timestamp_len) + 1;
    return frame_prefix_max + header_bytes + (fixed_keys.len + 1 + s.verdict_keys.len) * param_bytes;
}

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    allocator = host_allocator.allocator();
    const config_str = std.mem.span(config);
    const text = if (config_str.len == 0) "{}" else config_str;
    // alloc_always: the strings kept (collector, names, verdict keys) must be
    // copies: the config text is the host's and is gone once init returns.
    const parsed = std.json.parseFromSlice(Config, allocator, text, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| {
        return invalid("{s}", .{@errorName(err)});
    };
    const result = configure(parsed.value);
    if (result != 0) {
        parsed.deinit();
        return result;
    }
    config_parsed = parsed;
    return 0;
}

fn configure(c: Config) c_int {
    if (c.collector.len == 0 or c.collector.len > collector_bytes_max)
        return invalid("collector must be 1 to {d} bytes, e.g. \"tcp:127.0.0.1:514\"", .{collector_bytes_max});
    if (c.hostname) |name| {
        if (!isPrintUsAscii(name, hostname_bytes_max))
            return invalid("hostname must be 1 to {d} printable ASCII characters without spaces", .{hostname_bytes_max});
    }
    if (!isPrintUsAscii(c.app_name, app_name_bytes_max))
        return invalid("app_name must be 1 to {d} printable ASCII characters without spaces", .{app_name_bytes_max});
    if (!isSdName(c.sd_id))
        return invalid("sd_id must be 1 to 32 printable ASCII characters without space, '=', ']' or '\"', e.g. \"smtp@32473\"", .{});
    if (c.facility > 23) return invalid("facility must be 0 to 23 (2 is mail)", .{});
    if (c.severity > 7) return invalid("severity must be 0 to 7 (6 is informational)", .{});
    const verdicts = c.verdict_keys orelse &default_verdict_keys;
    if (verdicts.len > verdict_keys_max) return invalid("at most {d} verdict_keys", .{verdict_keys_max});
    for (verdicts) |key| {
        if (!isSdName(key)) return invalid("verdict_keys: \"{s}\" is not a syslog parameter name (1 to 32 printable ASCII characters without space, '=', ']' or '\"')", .{key});
        if (isFixedKey(key)) return invalid("verdict_keys: \"{s}\" is always logged", .{key});
    }
    if (c.buffer_records == 0 or c.buffer_records > buffer_records_max)
        return invalid("buffer_records must be 1 to {d}", .{buffer_records_max});
    if (c.connect_timeout_ms == 0 or c.connect_timeout_ms > timeout_ms_max)
        return invalid("connect_timeout_ms must be 1 to {d}", .{timeout_ms_max});
    if (c.send_timeout_ms == 0 or c.send_timeout_ms > timeout_ms_max)
        return invalid("send_timeout_ms must be 1 to {d}", .{timeout_ms_max});
    if (c.retry_ms > retry_ms_max) return invalid("retry_ms must be 0 to {d}", .{retry_ms_max});
    if (c.value_bytes_max < value_bytes_min or c.value_bytes_max > value_bytes_max_limit)
        return invalid("value_bytes_max must be {d} to {d}", .{ value_bytes_min, value_bytes_max_limit });

    const s = Settings{
        .collector = c.collector,
        .hostname = c.hostname,
        .app_name = c.app_name,
        .sd_id = c.sd_id,
        .facility = c.facility,
        .severity = c.severity,
        .verdict_keys = verdicts,
        .connect_timeout_ms = c.connect_timeout_ms,
        .send_timeout_ms = c.send_timeout_ms,
        .retry_ms = c.retry_ms,
        .value_bytes_max = c.value_bytes_max,
    };
    const buf = allocator.alloc(u8, recordBytesMax(s)) catch return invalid("no memory for a record buffer", .{});
    const ring = Ring.init(allocator, c.buffer_records) catch {
        allocator.free(buf);
        return invalid("no memory for {d} buffer_records", .{c.buffer_records});
    };
    settings = s;
    scratch = buf;
    pending = ring;
    socket = null;
    next_connect_ms = 0;
    dropped_unreported = 0;
    first_drop_ms = 0;
    collector_down = false;
    learned_hostname = null;
    return 0;
}

export fn smtp_plugin_deinit() callconv(.c) void {
    if (config_parsed == null) return;
    if (pending.len > 0 or dropped_unreported > 0) {
        std.debug.print(log_prefix ++ "unloading with {d} records not sent and {d} dropped unreported\n", .{ pending.len, dropped_unreported });
    }
    // The host closes the connection at unload (closing needs a context).
    socket = null;
    pending.deinit(allocator);
    allocator.free(scratch);
    scratch = &.{};
    config_parsed.?.deinit();
    config_parsed = null;
}

export fn smtp_plugin_get_metadata() callconv(.c) ?*const plugin.PluginMetadata {
    return &metadata;
}

export fn smtp_plugin_execute_hook(context: *plugin.HookContext) callconv(.c) c_int {
    if (config_parsed == null) return 0;
    switch (context.hook_type) {
        .message_stored => onStored(context),
        .server_starting => learnHostname(context),
        .server_stopping => {
            // Last chance before unload: try now, whatever the retry wait.
            next_connect_ms = 0;
            flush(context, context.nowMs());
        },
        else => {},
    }
    // Logging is never a reason to refuse or delay mail.
    return 0;
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

// --- The hook ---------------------------------------------------------------

fn learnHostname(context: *plugin.HookContext) void {
    const name = context.getMetadata("hostname") orelse return;
    if (!isPrintUsAscii(name, hostname_bytes_max)) return;
    @memcpy(learned_hostname_buf[0..name.len], name);
    learned_hostname = learned_hostname_buf[0..name.len];
}

fn onStored(context: *plugin.HookContext) void {
    const now = context.nowMs();
    // Sending what waits first makes room, so a collector that just came
    // back gets every buffered record before the buffer must drop one.
    flush(context, now);
    const record = buildStored(context, now) catch {
        noteDrops(1, now);
        return;
    };
    if (pending.push(allocator, record)) noteDrops(1, now);
    flush(context, now);
}

fn noteDrops(count: u64, now: i64) void {
    if (dropped_unreported == 0) first_drop_ms = now;
    dropped_unreported += count;
}

fn header(out: *Out, severity: u8, now: i64, msgid: []const u8) !void {
    var ts: [timestamp_len]u8 = undefined;
    const hostname = settings.hostname orelse learned_hostname orelse "-";
    try out.print("<{d}>1 {s} {s} {s} - {s} [{s}", .{
        @as(u16, settings.facility) * 8 + severity,
        formatTimestamp(&ts, now),
        hostname,
        settings.app_name,
        msgid,
        settings.sd_id,
    });
}

fn param(out: *Out, name: []const u8, value: []const u8) !void {
    try out.byte(' ');
    try out.put(name);
    try out.put("=\"");
    try writeParamValue(out, value, settings.value_bytes_max);
    try out.byte('"');
}

/// The framed record for the message in `context`, allocated.
fn buildStored(context: *const plugin.HookContext, now: i64) ![]u8 {
    var out = Out{ .buf = scratch[frame_prefix_max..] };
    try formatStored(&out, context, now);
    return frameAlloc(allocator, out.written());
}

pub fn formatStored(out: *Out, context: *const plugin.HookContext, now: i64) !void {
    try header(out, settings.severity, now, "stored");
    for (fixed_keys) |key| {
        if (context.getMetadata(key)) |value| try param(out, key, value);
    }
    var ts: [timestamp_len]u8 = undefined;
    try param(out, "time", formatTimestamp(&ts, now));
    for (settings.verdict_keys) |key| {
        if (context.getMetadata(key)) |value| try param(out, key, value);
    }
    try out.byte(']');
}

pub fn formatDropped(out: *Out, count: u64, since_ms: i64, now: i64) !void {
    try header(out, severity_warning, now, "dropped");
    var number: [20]u8 = undefined;
    try param(out, "dropped", std.fmt.bufPrint(&number, "{d}", .{count}) catch unreachable);
    var ts: [timestamp_len]u8 = undefined;
    try param(out, "since", formatTimestamp(&ts, since_ms));
    try param(out, "time", formatTimestamp(&ts, now));
    try out.byte(']');
}

// --- Sending ----------------------------------------------------------------

/// Sends the drop report, then every buffered record in order, while the
/// collector takes them. Returns at the first failure; nothing here waits
/// longer than one connect or one send timeout.
fn flush(context: *plugin.HookContext, now: i64) void {
    if (pending.len == 0 and dropped_unreported == 0) return;
    const s = connected(context, now) orelse return;
    if (dropped_unreported > 0) {
        var out = Out{ .buf = scratch[frame_prefix_max..] };
        formatDropped(&out, dropped_unreported, first_drop_ms, now) catch unreachable;
        const msg = out.written();
        // Frame in place: the prefix goes into the room left before msg.
        var prefix_buf: [frame_prefix_max]u8 = undefined;
        const prefix = std.fmt.bufPrint(&prefix_buf, "{d} ", .{msg.len}) catch unreachable;
        const start = frame_prefix_max - prefix.len;
        @memcpy(scratch[start..frame_prefix_max], prefix);
        s.send(context, scratch[start .. frame_prefix_max + msg.len], settings.send_timeout_ms) catch |err| return lost(context, s, now, err);
        dropped_unreported = 0;
    }
    while (pending.oldest()) |record| {
        s.send(context, record, settings.send_timeout_ms) catch |err| return lost(context, s, now, err);
        pending.popOldest(allocator);
    }
}

/// The open connection, after checking that the collector has not closed
/// it; else a new one when the retry wait is over; else null.
fn connected(context: *plugin.HookContext, now: i64) ?plugin.Socket {
    if (socket) |s| {
        if (!peerClosed(context, s)) return s;
        s.close(context);
        socket = null;
    }
    if (now < next_connect_ms) return null;
    const s = context.connect(settings.collector, settings.connect_timeout_ms) catch |err| {
        next_connect_ms = now + settings.retry_ms;
        if (!collector_down) {
            std.debug.print(log_prefix ++ "collector {s} unreachable ({s}): buffering up to {d} records, retrying every {d} ms\n", .{ settings.collector, @errorName(err), pending.slots.len, settings.retry_ms });
        }
        collector_down = true;
        return null;
    };
    if (collector_down) {
        std.debug.print(log_prefix ++ "collector {s} is back: sending {d} buffered records, {d} dropped\n", .{ settings.collector, pending.len, dropped_unreported });
    }
    collector_down = false;
    socket = s;
    return s;
}

/// A collector never writes to us, so anything but "nothing yet" means the
/// connection is over. Without this check the first record after the
/// collector closed would be written into a dead socket and lost.
fn peerClosed(context: *plugin.HookContext, s: plugin.Socket) bool {
    var probe: [64]u8 = undefined;
    const got = s.recv(context, &probe, 0) catch |err| return err != error.NetTimeout;
    return got.len == 0;
}

fn lost(context: *plugin.HookContext, s: plugin.Socket, now: i64, err: plugin.NetError) void {
    s.close(context);
    socket = null;
    next_connect_ms = now + settings.retry_ms;
    if (!collector_down) {
        std.debug.print(log_prefix ++ "sending to collector {s} failed ({s}): buffering up to {d} records, retrying every {d} ms\n", .{ settings.collector, @errorName(err), pending.slots.len, settings.retry_ms });
    }
    collector_down = true;
}

// --- Formatting -------------------------------------------------------------

/// Writes `value` as an RFC 5424 PARAM-VALUE: '"', '\' and ']' are escaped
/// with a backslash. Bytes that are not UTF-8 become '?', and so do control
/// characters (legal in syslog, but line-oriented collectors and files split
/// on them). At most `bytes_max` bytes of `value` are used, cut at a
/// character boundary.
pub fn writeParamValue(out: *Out, value: []const u8, bytes_max: usize) !void {
    var i: usize = 0;
    while (i < value.len) {
        const c = value[i];
        const n = std.unicode.utf8ByteSequenceLength(c) catch 1;
        if (i + n > bytes_max) break;
        if (n == 1) {
            if (c == '"' or c == '\\' or c == ']') {
                try out.byte('\\');
                try out.byte(c);
            } else if (c < 0x20 or c >= 0x7f) {
                try out.byte('?'); // a control or a stray non-ASCII byte
            } else {
                try out.byte(c);
            }
            i += 1;
            continue;
        }
        if (i + n <= value.len and std.unicode.utf8ValidateSlice(value[i .. i + n])) {
            try out.put(value[i .. i + n]);
            i += n;
        } else {
            try out.byte('?');
            i += 1;
        }
    }
}

/// RFC 6587 octet counting: "LEN SP MSG", LEN the byte count of MSG.
pub fn frameAlloc(a: std.mem.Allocator, msg: []const u8) ![]u8 {
    var prefix_buf: [frame_prefix_max]u8 = undefined;
    const prefix = std.fmt.bufPrint(&prefix_buf, "{d} ", .{msg.len}) catch unreachable;
    const framed = try a.alloc(u8, prefix.len + msg.len);
    @memcpy(framed[0..prefix.len], prefix);
    @memcpy(framed[prefix.len..], msg);
    return framed;
}

pub const CivilDate = struct { year: i64, month: u8, day: u8 };

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// civil_from_days: shift the year to start in March, so the leap day ends
/// it, then split into 400-year eras of 146097 days).
pub fn civilFromDays(days: i64) CivilDate {
    const z = days + 719_468; // days from 0000-03-01
    const era = @divFloor(z, 146_097);
    const doe = z - era * 146_097; // [0, 146096]
    const yoe = @divTrunc(doe - @divTrunc(doe, 1460) + @divTrunc(doe, 36_524) - @divTrunc(doe, 146_096), 365); // [0, 399]
    const doy = doe - (365 * yoe + @divTrunc(yoe, 4) - @divTrunc(yoe, 100)); // [0, 365]
    const mp = @divTrunc(5 * doy + 2, 153); // [0, 11], March = 0
    const day = doy - @divTrunc(153 * mp + 2, 5) + 1;
    const month = if (mp < 10) mp + 3 else mp - 9;
    const year = yoe + era * 400 + @as(i64, if (month <= 2) 1 else 0);
    return .{ .year = year, .month = @intCast(month), .day = @intCast(day) };
}

/// The latest instant with a four-digit year: 9999-12-31T23:59:59.999Z.
const timestamp_ms_max: i64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds, as RFC 5424 TIMESTAMP wants it. Times
/// before 1970 or after 9999 are clamped (a wrong clock must not make a
/// record unparsable).
pub fn formatTimestamp(buf: *[timestamp_len]u8, unix_ms: i64) []const u8 {
    const ms = std.math.clamp(unix_ms, 0, timestamp_ms_max);
    const days = @divFloor(ms, 86_400_000);
    const in_day = ms - days * 86_400_000;
    const date = civilFromDays(days);
    const hour: u64 = @intCast(@divTrunc(in_day, 3_600_000));
    const minute: u64 = @intCast(@divTrunc(@mod(in_day, 3_600_000), 60_000));
    const second: u64 = @intCast(@divTrunc(@mod(in_day, 60_000), 1000));
    const milli: u64 = @intCast(@mod(in_day, 1000));
    const year: u64 = @intCast(date.year);
    return std.fmt.bufPrint(buf, "{d:0>4}-{d:0>2}-{d:0>2}T{d:0>2}:{d:0>2}:{d:0>2}.{d:0>3}Z", .{ year, date.month, date.day, hour, minute, second, milli }) catch unreachable;
}

// --- Tests ------------------------------------------------------------------

const testing = std.testing;
const metadata_host = @import("smtp-server").metadata_host;

fn testInit(config: [:0]const u8) !void {
    const host = struct {
        var allocator_table: plugin.Allocator = undefined;
    };
    host.allocator_table = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host.allocator_table, config));
}

fn storedContext(message_id: []const u8) plugin.HookContext {
    var context = plugin.HookContext.init(testing.allocator, .message_stored);
    context.setMetadata("message_id", message_id) catch unreachable;
    context.setMetadata("sender", "bob@example.com") catch unreachable;
    context.setMetadata("recipients", "carol@example.org,dave@example.org") catch unreachable;
    context.setMetadata("size", "321") catch unreachable;
    context.setMetadata("spool_id", "abc123") catch unreachable;
    context.setMetadata("quarantined", "false") catch unreachable;
    return context;
}

/// The record without its frame, for comparing.
fn unframed(record: []const u8) []const u8 {
    const space = std.mem.indexOfScalar(u8, record, ' ').?;
    return record[space + 1 ..];
}

test "timestamps are RFC 3339 UTC with milliseconds" {
    var buf: [timestamp_len]u8 = undefined;
    try testing.expectEqualStrings("1970-01-01T00:00:00.000Z", formatTimestamp(&buf, 0));
    try testing.expectEqualStrings("2024-02-29T12:34:56.789Z", formatTimestamp(&buf, 1_709_210_096_789));
    try testing.expectEqualStrings("2000-02-29T00:00:00.000Z", formatTimestamp(&buf, 951_782_400_000));
    try testing.expectEqualStrings("1999-12-31T23:59:59.999Z", formatTimestamp(&buf, 946_684_799_999));
    try testing.expectEqualStrings("2100-03-01T00:00:00.000Z", formatTimestamp(&buf, 4_107_542_400_000));
    try testing.expectEqualStrings("9999-12-31T23:59:59.999Z", formatTimestamp(&buf, timestamp_ms_max));
    // A clock outside 1970..9999 is clamped, not printed as garbage.
    try testing.expectEqualStrings("1970-01-01T00:00:00.000Z", formatTimestamp(&buf, -5));
    try testing.expectEqualStrings("9999-12-31T23:59:59.999Z", formatTimestamp(&buf, std.math.maxInt(i64)));
}

test "the civil date agrees with counting days one by one from 1970 to 2400" {
    const month_days = [_]u8{ 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    var year: i64 = 1970;
    var month: u8 = 1;
    var day: u8 = 1;
    var days: i64 = 0;
    while (year < 2400) : (days += 1) {
        const got = civilFromDays(days);
        try testing.expectEqual(CivilDate{ .year = year, .month = month, .day = day }, got);
        const leap = @mod(year, 4) == 0 and (@mod(year, 100) != 0 or @mod(year, 400) == 0);
        const length = if (month == 2 and leap) 29 else month_days[month - 1];
        day += 1;
        if (day > length) {
            day = 1;
            month += 1;
            if (month > 12) {
                month = 1;
                year += 1;
            }
        }
    }
}

test "param values escape '\"', '\\' and ']' and replace controls and bad UTF-8" {
    var buf: [128]u8 = undefined;
    var out = Out{ .buf = &buf };
    try writeParamValue(&out, "a\"b\\c]d=e[f", 100);
    try testing.expectEqualStrings("a\\\"b\\\\c\\]d=e[f", out.written());

    out = .{ .buf = &buf };
    try writeParamValue(&out, "line\r\nnext\x00\x7f", 100);
    try testing.expectEqualStrings("line??next??", out.written());

    out = .{ .buf = &buf };
    try writeParamValue(&out, "caf\xc3\xa9 \xff \xe2\x82", 100);
    try testing.expectEqualStrings("caf\xc3\xa9 ? ??", out.written());
}

test "param values are cut at bytes_max on a character boundary" {
    var buf: [64]u8 = undefined;
    var out = Out{ .buf = &buf };
    try writeParamValue(&out, "abcdef", 4);
    try testing.expectEqualStrings("abcd", out.written());
    // "é" is two bytes: cutting after one would leave half a character.
    out = .{ .buf = &buf };
    try writeParamValue(&out, "abc\xc3\xa9", 4);
    try testing.expectEqualStrings("abc", out.written());
}

test "octet-counting framing counts bytes, not characters" {
    const framed = try frameAlloc(testing.allocator, "hello");
    defer testing.allocator.free(framed);
    try testing.expectEqualStrings("5 hello", framed);
    const accented = try frameAlloc(testing.allocator, "\xc3\xa9t\xc3\xa9");
    defer testing.allocator.free(accented);
    try testing.expectEqualStrings("5 \xc3\xa9t\xc3\xa9", accented);
}

test "the ring keeps the newest records and says when it dropped one" {
    var ring = try Ring.init(testing.allocator, 3);
    defer ring.deinit(testing.allocator);
    var dropped: usize = 0;
    for (0..5) |i| {
        const record = try std.fmt.allocPrint(testing.allocator, "r{d}", .{i});
        if (ring.push(testing.allocator, record)) dropped += 1;
    }
    try testing.expectEqual(@as(usize, 2), dropped);
    try testing.expectEqual(@as(usize, 3), ring.len);
    for ([_][]const u8{ "r2", "r3", "r4" }) |want| {
        try testing.expectEqualStrings(want, ring.oldest().?);
        ring.popOldest(testing.allocator);
    }
    try testing.expect(ring.oldest() == null);
}

test "a stored message becomes one RFC 5424 record with the filters' verdicts" {
    try testInit("{\"collector\": \"tcp:127.0.0.1:5514\", \"hostname\": \"mx.test\", \"retry_ms\": 1000}");
    defer smtp_plugin_deinit();
    var context = storedContext("<m1@example.com>");
    defer context.deinit();
    try context.setMetadata("spam_score", "2");
    try context.setMetadata("virus_name", "Eicar \"Test\" [sig]");
    try context.setMetadata("message_body", "never logged");
    metadata_host.storeOf(&context).test_now_ms = 1_709_210_096_789;

    // Test contexts refuse every connection: the record waits in the buffer.
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expectEqual(@as(usize, 1), pending.len);
    const record = pending.oldest().?;
    const msg = "<22>1 2024-02-29T12:34:56.789Z mx.test smtp-server - stored [smtp@32473" ++
        " message_id=\"<m1@example.com>\" sender=\"bob@example.com\" recipients=\"carol@example.org,dave@example.org\"" ++
        " size=\"321\" spool_id=\"abc123\" quarantined=\"false\" time=\"2024-02-29T12:34:56.789Z\"" ++
        " spam_score=\"2\" virus_name=\"Eicar \\\"Test\\\" [sig\\]\"]";
    try testing.expectEqualStrings(std.fmt.comptimePrint("{d} ", .{msg.len}) ++ msg, record);
}

test "the hostname comes from server_starting when not configured, and configured keys are used" {
    try testInit("{\"app_name\": \"mail\", \"sd_id\": \"m@1\", \"facility\": 16, \"severity\": 5, \"verdict_keys\": [\"x_flag\"]}");
    defer smtp_plugin_deinit();
    var starting = plugin.HookContext.init(testing.allocator, .server_starting);
    defer starting.deinit();
    try starting.setMetadata("hostname", "mx.example.net");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&starting));

    var context = plugin.HookContext.init(testing.allocator, .message_stored);
    defer context.deinit();
    try context.setMetadata("sender", "");
    try context.setMetadata("x_flag", "yes");
    try context.setMetadata("spam_score", "9"); // not in verdict_keys
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expectEqualStrings("<133>1 1970-01-01T00:00:00.000Z mx.example.net mail - stored [m@1 sender=\"\" time=\"1970-01-01T00:00:00.000Z\" x_flag=\"yes\"]", unframed(pending.oldest().?));
}

test "the config strings are copied: the host may reuse the config text after init" {
    const host = struct {
        var allocator_table: plugin.Allocator = undefined;
    };
    host.allocator_table = plugin.Allocator.wrap(&testing.allocator);
    var config = "{\"hostname\": \"mx.test\", \"app_name\": \"mailer\", \"sd_id\": \"s@1\", \"verdict_keys\": [\"v\"]}".*;
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host.allocator_table, &config));
    defer smtp_plugin_deinit();
    @memset(&config, 'x');
    var context = plugin.HookContext.init(testing.allocator, .message_stored);
    defer context.deinit();
    try context.setMetadata("v", "1");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expectEqualStrings("<22>1 1970-01-01T00:00:00.000Z mx.test mailer - stored [s@1 time=\"1970-01-01T00:00:00.000Z\" v=\"1\"]", unframed(pending.oldest().?));
}

test "a full buffer drops the oldest record and counts it" {
    try testInit("{\"buffer_records\": 3, \"retry_ms\": 60000}");
    defer smtp_plugin_deinit();
    for (0..5) |i| {
        var id_buf: [16]u8 = undefined;
        var context = storedContext(try std.fmt.bufPrint(&id_buf, "<m{d}>", .{i}));
        defer context.deinit();
        try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    }
    try testing.expectEqual(@as(usize, 3), pending.len);
    try testing.expectEqual(@as(u64, 2), dropped_unreported);
    try testing.expect(std.mem.indexOf(u8, pending.oldest().?, "message_id=\"<m2>\"") != null);
}

test "the drop report names the count and since when" {
    try testInit("{\"hostname\": \"h\"}");
    defer smtp_plugin_deinit();
    var buf: [256]u8 = undefined;
    var out = Out{ .buf = &buf };
    try formatDropped(&out, 3, 1000, 61_000);
    try testing.expectEqualStrings("<20>1 1970-01-01T00:01:01.000Z h smtp-server - dropped [smtp@32473 dropped=\"3\" since=\"1970-01-01T00:00:01.000Z\" time=\"1970-01-01T00:01:01.000Z\"]", out.written());
}

test "after a failed connect the next attempt waits retry_ms" {
    try testInit("{\"retry_ms\": 1000}");
    defer smtp_plugin_deinit();
    var context = storedContext("<m>");
    defer context.deinit();
    const store = metadata_host.storeOf(&context);
    store.test_now_ms = 10_000;
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expect(store.net_denied); // it tried, once per call at most
    store.net_denied = false;
    store.test_now_ms = 10_999;
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expect(!store.net_denied);
    store.test_now_ms = 11_000;
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expect(store.net_denied);
    try testing.expectEqual(@as(usize, 3), pending.len);
}

test "server_stopping tries the collector at once and other hooks are ignored" {
    try testInit("{\"retry_ms\": 3600000}");
    defer smtp_plugin_deinit();
    var context = storedContext("<m>");
    defer context.deinit();
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    var stopping = plugin.HookContext.init(testing.allocator, .server_stopping);
    defer stopping.deinit();
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&stopping));
    try testing.expect(metadata_host.storeOf(&stopping).net_denied);
    var other = plugin.HookContext.init(testing.allocator, .message_received);
    defer other.deinit();
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&other));
    try testing.expect(!metadata_host.storeOf(&other).net_denied);
    try testing.expectEqual(@as(usize, 1), pending.len);
}

test "bad config values refuse init" {
    const host = plugin.Allocator.wrap(&testing.allocator);
    const bad = [_][:0]const u8{
        "{\"buffer_records\": 0}",
        "{\"buffer_records\": \"many\"}",
        "{\"facility\": 24}",
        "{\"severity\": 8}",
        "{\"collector\": \"\"}",
        "{\"hostname\": \"two words\"}",
        "{\"app_name\": \"\"}",
        "{\"sd_id\": \"a=b\"}",
        "{\"verdict_keys\": [\"has space\"]}",
        "{\"verdict_keys\": [\"size\"]}",
        "{\"connect_timeout_ms\": 0}",
        "{\"send_timeout_ms\": 10001}",
        "{\"retry_ms\": -1}",
        "{\"value_bytes_max\": 8}",
        "not json",
    };
    for (bad) |config| {
        try testing.expectEqual(@as(c_int, 1), smtp_plugin_init(&host, config));
    }
    try testing.expect(config_parsed == null);
}

test "the metadata declares the blocking flag and the hooks handled" {
    const m = smtp_plugin_get_metadata().?;
    try testing.expectEqual(plugin.flag_blocking, m.flags & plugin.flag_blocking);
    try testing.expectEqual(plugin.hookMask(&.{ .message_stored, .server_starting, .server_stopping }), m.handled_hooks);
}
