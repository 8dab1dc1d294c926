//! virus-scanner: the guide's ClamAV plugin, scanning through a real clamd.
//!
//! At `message_filtered` it streams `message_body` (the raw message) to clamd
//! with INSTREAM over the host's socket functions (ABI 1.1), so the same
//! source runs native and sandboxed. The guide reads `message_path`, but
//! that key only exists from `message_stored` on: at the filtering stage the
//! message is not on disk yet (docs/plugins/virus_scanner.md).
//!
//! Verdicts: clean -> `virus_scan = "clean"`, continue; infected ->
//! `virus_name`, `infected = "true"`, then refuse (554) or quarantine, as
//! `action` says; scanner down, erroring or slow -> `on_scanner_error`:
//! tempfail (451, the default: never accept unscanned mail silently) or
//! accept with `virus_scan = "skipped"`.
const std = @import("std");
const plugin = @import("smtp-server").plugin;

/// The guide's `clamav_socket`. /var/run is /run on Debian; the grant in
/// `allow_connect` must spell the address exactly as normalised here.
const default_socket = "/var/run/clamav/clamd.sock";
const default_timeout_ms: u32 = 5_000;
const default_chunk_bytes: u32 = 64 * 1024;

/// The host's net_recv copies at most 1 MiB a call; a chunk is sent whole, so
/// one bound for both keeps every call within what the host takes.
const chunk_bytes_max: u32 = 1024 * 1024;
const timeout_ms_max: u32 = 600_000;
/// "unix:" + a sun_path (108 bytes with its NUL on Linux), or "tcp:host:port".
const address_bytes_max = 5 + 107;
/// clamd's replies are one line: "stream: <signature name> FOUND". Names are
/// short; the bound only stops a misbehaving peer from filling memory.
const reply_bytes_max = 1024;
/// What is quoted of a virus name in the SMTP reply text (the host caps the
/// whole text at 400 characters anyway).
const reply_name_bytes_max = 200;

const Action = enum { reject, quarantine };
const OnScannerError = enum { tempfail, accept };

/// The JSON config. Numbers are read as i64 so that a negative or huge value
/// gets a message naming the key and its range, not a bare parse error.
const Config = struct {
    clamav_socket: []const u8 = default_socket,
    action: []const u8 = "reject",
    on_scanner_error: []const u8 = "tempfail",
    timeout_ms: i64 = default_timeout_ms,
    chunk_bytes: i64 = default_chunk_bytes,
};

var address_buf: [address_bytes_max]u8 = undefined;
var address: []const u8 = "unix:" ++ default_socket;
var action: Action = .reject;
var on_scanner_error: OnScannerError = .tempfail;
var timeout_ms: u32 = default_timeout_ms;
var chunk_bytes: u32 = default_chunk_bytes;

const metadata = plugin.PluginMetadata{
    .name = "virus-scanner",
    .version = "1.0.0",
    .author = "SMTP Team",
    .description = "Scans each message with ClamAV (clamd INSTREAM) and refuses or quarantines infected mail",
    .license = "MIT",
    .dependencies = &.{},
    .min_server_version = "0.28.0",
    .max_server_version = null,
    .handled_hooks = plugin.hookMask(&.{.message_filtered}),
    // Every scan waits on clamd: the host runs the hook off its event loop.
    .flags = plugin.flag_blocking,
};

fn invalidConfig(comptime format: []const u8, args: anytype) c_int {
    std.debug.print("[virus-scanner] Invalid config: " ++ format ++ "\n", args);
    return 1;
}

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    const allocator = host_allocator.allocator();
    const config_str = std.mem.span(config);
    const text = if (config_str.len == 0) "{}" else config_str;
    // Everything is copied out below, so the parsed tree is freed at once.
    const parsed = std.json.parseFromSlice(Config, allocator, text, .{ .ignore_unknown_fields = true }) catch |err| {
        return invalidConfig("{s} (expected clamav_socket, action, on_scanner_error as strings, timeout_ms, chunk_bytes as integers)", .{@errorName(err)});
    };
    defer parsed.deinit();
    const c = parsed.value;

    const new_action = std.meta.stringToEnum(Action, c.action) orelse
        return invalidConfig("action must be \"reject\" or \"quarantine\", got \"{s}\"", .{c.action});
    const new_on_error = std.meta.stringToEnum(OnScannerError, c.on_scanner_error) orelse
        return invalidConfig("on_scanner_error must be \"tempfail\" or \"accept\", got \"{s}\"", .{c.on_scanner_error});
    if (c.timeout_ms < 1 or c.timeout_ms > timeout_ms_max)
        return invalidConfig("timeout_ms must be an integer from 1 to {d}, got {d}", .{ timeout_ms_max, c.timeout_ms });
    if (c.chunk_bytes < 1 or c.chunk_bytes > chunk_bytes_max)
        return invalidConfig("chunk_bytes must be an integer from 1 to {d}, got {d}", .{ chunk_bytes_max, c.chunk_bytes });
    var new_address_buf: [address_bytes_max]u8 = undefined;
    const new_address = normaliseAddress(c.clamav_socket, &new_address_buf) catch |err| return invalidConfig(
        "clamav_socket must be a socket path (\"/run/clamav/clamd.sock\"), \"unix:/PATH\" or \"tcp:HOST:PORT\" ({s}), got \"{s}\"",
        .{ @errorName(err), c.clamav_socket },
    );

    address_buf = new_address_buf;
    address = address_buf[0..new_address.len];
    action = new_action;
    on_scanner_error = new_on_error;
    timeout_ms = @intCast(c.timeout_ms);
    chunk_bytes = @intCast(c.chunk_bytes);
    std.debug.print("[virus-scanner] Initialized: clamd at {s}, action {s}, on_scanner_error {s}\n", .{ address, @tagName(action), @tagName(on_scanner_error) });
    return 0;
}

export fn smtp_plugin_deinit() callconv(.c) void {
    address = "unix:" ++ default_socket;
    action = .reject;
    on_scanner_error = .tempfail;
    timeout_ms = default_timeout_ms;
    chunk_bytes = default_chunk_bytes;
}

export fn smtp_plugin_get_metadata() callconv(.c) ?*const plugin.PluginMetadata {
    return &metadata;
}

export fn smtp_plugin_execute_hook(context: *plugin.HookContext) callconv(.c) c_int {
    return switch (context.hook_type) {
        .message_filtered => filterMessage(context),
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

pub const AddressError = error{ EmptyAddress, AddressTooLong, NotAbsolutePath, BadTcpAddress, UnknownScheme };

/// The host's address form for `clamav_socket`: a bare path means a unix
/// socket ("/run/clamav/clamd.sock" -> "unix:/run/clamav/clamd.sock");
/// "unix:/PATH" and "tcp:HOST:PORT" are taken as written.
pub fn normaliseAddress(text: []const u8, out: *[address_bytes_max]u8) AddressError![]const u8 {
    if (text.len == 0) return error.EmptyAddress;
    if (std.mem.startsWith(u8, text, "tcp:")) {
        const rest = text["tcp:".len..];
        const colon = std.mem.lastIndexOfScalar(u8, rest, ':') orelse return error.BadTcpAddress;
        if (colon == 0) return error.BadTcpAddress;
        const port = std.fmt.parseInt(u16, rest[colon + 1 ..], 10) catch return error.BadTcpAddress;
        if (port == 0) return error.BadTcpAddress;
        return copyAddress("", text, out);
    }
    if (std.mem.startsWith(u8, text, "unix:")) {
        if (!std.mem.startsWith(u8, text["unix:".len..], "/")) return error.NotAbsolutePath;
        return copyAddress("", text, out);
    }
    if (text[0] == '/') return copyAddress("unix:", text, out);
    return error.UnknownScheme;
}

fn copyAddress(comptime prefix: []const u8, text: []const u8, out: *[address_bytes_max]u8) AddressError![]const u8 {
    if (prefix.len + text.len > out.len) return error.AddressTooLong;
    // A NUL would end the path early in the kernel: a different socket.
    if (std.mem.indexOfScalar(u8, text, 0) != null) return error.UnknownScheme;
    @memcpy(out[0..prefix.len], prefix);
    @memcpy(out[prefix.len..][0..text.len], text);
    return out[0 .. prefix.len + text.len];
}

/// What clamd answered, as far as the plugin cares.
pub const Reply = union(enum) {
    clean,
    /// The signature name, e.g. "Eicar-Test-Signature" (a slice of the reply).
    infected: []const u8,
    /// clamd's own error line, e.g. "INSTREAM size limit exceeded. ERROR".
    scanner_error: []const u8,
    /// Anything else: never taken as clean.
    unrecognised: []const u8,
};

/// Reads one INSTREAM reply: "stream: OK", "stream: NAME FOUND", or
/// "... ERROR", each ended by NUL (the "z" command form), a newline, or the
/// end of the text. Only the exact "stream: OK" is clean; a FOUND anywhere
/// wins, so a reply listing several matches (clamd's AllMatch) is infected.
pub fn parseReply(raw: []const u8) Reply {
    const end = std.mem.indexOfScalar(u8, raw, 0) orelse raw.len;
    const text = raw[0..end];
    var first: ?[]const u8 = null;
    var lines = std.mem.splitScalar(u8, text, '\n');
    while (lines.next()) |line_raw| {
        const line = trim(line_raw);
        if (line.len == 0) continue;
        if (first == null) first = line;
        const body = if (std.mem.startsWith(u8, line, "stream:")) trim(line["stream:".len..]) else line;
        if (std.mem.endsWith(u8, body, " FOUND")) {
            const name = trim(body[0 .. body.len - " FOUND".len]);
            if (name.len > 0) return .{ .infected = name };
        }
    }
    const line = first orelse return .{ .unrecognised = "" };
    if (std.mem.eql(u8, line, "stream: OK")) return .clean;
    if (std.mem.endsWith(u8, line, "ERROR")) return .{ .scanner_error = line };
    return .{ .unrecognised = line };
}

fn trim(text: []const u8) []const u8 {
    var start: usize = 0;
    var end: usize = text.len;
    while (start < end and isSpace(text[start])) start += 1;
    while (end > start and isSpace(text[end - 1])) end -= 1;
    return text[start..end];
}

fn isSpace(byte: u8) bool {
    return byte == ' ' or byte == '\t' or byte == '\r' or byte == '\n';
}

/// The INSTREAM command in its NUL-terminated ("z") form.
pub const instream_command = "zINSTREAM\x00";

/// Sends `body` as INSTREAM chunks: `<u32 big-endian length><bytes>`, each
/// at most `chunk_max` bytes, then the zero length that ends the stream.
/// `conn` is anything with `send([]const u8) !void`.
pub fn sendChunks(conn: anytype, body: []const u8, chunk_max: u32) !void {
    std.debug.assert(chunk_max > 0);
    var at: usize = 0;
    // Bounded: each turn sends at least one byte of `body`.
    while (at < body.len) {
        const n: u32 = @intCast(@min(@as(usize, chunk_max), body.len - at));
        var header: [4]u8 = undefined;
        std.mem.writeInt(u32, &header, n, .big);
        try conn.send(&header);
        try conn.send(body[at..][0..n]);
        at += n;
    }
    try conn.send(&[4]u8{ 0, 0, 0, 0 });
}

pub const ReadError = error{ReplyTooLong};

/// Reads the reply into `buf` until its NUL terminator or until clamd closes
/// the connection (it does after every INSTREAM reply).
/// `conn` is anything with `recv([]u8) ![]u8` (empty = closed).
pub fn readReply(conn: anytype, buf: []u8) ![]const u8 {
    var len: usize = 0;
    // Bounded: each turn fills at least one byte of `buf`, or returns.
    while (len < buf.len) {
        const got = try conn.recv(buf[len..]);
        if (got.len == 0) return buf[0..len];
        if (std.mem.indexOfScalar(u8, got, 0)) |nul| return buf[0 .. len + nul];
        len += got.len;
    }
    return error.ReplyTooLong;
}

/// One INSTREAM exchange over `conn`: command, chunks, reply.
pub fn scan(conn: anytype, body: []const u8, chunk_max: u32, reply_buf: []u8) !Reply {
    try conn.send(instream_command);
    sendChunks(conn, body, chunk_max) catch |err| {
        // clamd drops the connection when a stream passes its StreamMaxLength,
        // after writing why: prefer that reason to the broken pipe.
        const reply = readReply(conn, reply_buf) catch return err;
        if (reply.len == 0) return err;
        return parseReply(reply);
    };
    return parseReply(try readReply(conn, reply_buf));
}

/// The host socket, with one deadline for the whole scan (`timeout_ms` from
/// the start of the connect), so a slow clamd cannot take longer in total.
const HostConnection = struct {
    ctx: *plugin.HookContext,
    socket: plugin.Socket,
    deadline_ms: i64,

    fn remainingMs(self: *const HostConnection) plugin.NetError!u32 {
        const left = self.deadline_ms - self.ctx.nowMs();
        if (left <= 0) return error.NetTimeout;
        return @intCast(@min(left, timeout_ms_max));
    }

    pub fn send(self: *HostConnection, bytes: []const u8) plugin.NetError!void {
        try self.socket.send(self.ctx, bytes, try self.remainingMs());
    }

    pub fn recv(self: *HostConnection, buf: []u8) plugin.NetError![]u8 {
        return self.socket.recv(self.ctx, buf, try self.remainingMs());
    }
};

/// The result of scanning one message.
pub const Outcome = union(enum) {
    clean,
    infected: []const u8,
    /// Why no verdict was had (for the log).
    failed: []const u8,
};

/// Connects to clamd and scans `body`; the connection is closed afterwards
/// because clamd closes its side after every INSTREAM reply.
fn scanWithClamd(ctx: *plugin.HookContext, body: []const u8, reply_buf: []u8) Outcome {
    const started_ms = ctx.nowMs();
    const socket = ctx.connect(address, timeout_ms) catch |err| return .{ .failed = @errorName(err) };
    defer socket.close(ctx);
    var conn = HostConnection{ .ctx = ctx, .socket = socket, .deadline_ms = started_ms + timeout_ms };
    const reply = scan(&conn, body, chunk_bytes, reply_buf) catch |err| return .{ .failed = @errorName(err) };
    return switch (reply) {
        .clean => .clean,
        .infected => |name| .{ .infected = name },
        .scanner_error => |line| .{ .failed = line },
        .unrecognised => |line| .{ .failed = if (line.len == 0) "empty reply" else line },
    };
}

fn filterMessage(ctx: *plugin.HookContext) c_int {
    var reply_buf: [reply_bytes_max]u8 = undefined;
    const outcome: Outcome = if (ctx.getMetadata("message_body")) |body|
        scanWithClamd(ctx, body, &reply_buf)
    else
        .{ .failed = "no message_body to scan" };
    return applyOutcome(ctx, outcome);
}

/// Sets the verdict keys and the reply, and returns the hook result.
/// A metadata write that fails still leaves the right result: a cancel
/// without the chosen reply gets the stage's default 554 refusal, which
/// loses no mail either.
pub fn applyOutcome(ctx: *plugin.HookContext, outcome: Outcome) c_int {
    const message_id = ctx.getMetadata("message_id") orelse "-";
    switch (outcome) {
        .clean => {
            ctx.setMetadata("virus_scan", "clean") catch {};
            return @intFromEnum(plugin.HookResult.@"continue");
        },
        .infected => |name| {
            ctx.setMetadata("virus_name", name) catch {};
            ctx.setMetadata("infected", "true") catch {};
            ctx.setMetadata("virus_scan", "infected") catch {};
            const shown = name[0..@min(name.len, reply_name_bytes_max)];
            switch (action) {
                .reject => {
                    var text_buf: [64 + reply_name_bytes_max]u8 = undefined;
                    const text = std.fmt.bufPrint(&text_buf, "5.7.1 Virus found: {s}", .{shown}) catch unreachable;
                    ctx.setMetadata("smtp_reply_code", "554") catch {};
                    ctx.setMetadata("smtp_reply_text", text) catch {};
                },
                // Accepted (250) and kept in the quarantine folder; the cancel
                // keeps it out of the mailbox (docs/hooks.md).
                .quarantine => ctx.setMetadata("quarantine", "true") catch {},
            }
            std.debug.print("[virus-scanner] Virus found in {s}: {s} ({s})\n", .{ message_id, shown, @tagName(action) });
            ctx.cancel = true;
            return @intFromEnum(plugin.HookResult.cancel);
        },
        .failed => |reason| {
            std.debug.print("[virus-scanner] Scanner error at {s} for {s}: {s} ({s})\n", .{ address, message_id, reason, @tagName(on_scanner_error) });
            switch (on_scanner_error) {
                .tempfail => {
                    ctx.setMetadata("smtp_reply_code", "451") catch {};
                    ctx.setMetadata("smtp_reply_text", "4.7.1 Virus scanner unavailable, try again later") catch {};
                    ctx.cancel = true;
                    return @intFromEnum(plugin.HookResult.cancel);
                },
                .accept => {
                    ctx.setMetadata("virus_scan", "skipped") catch {};
                    return @intFromEnum(plugin.HookResult.@"continue");
                },
            }
        },
    }
}

// ---------------------------------------------------------------- tests ---

const testing = std.testing;

/// An in-memory clamd: records what the plugin sends, answers `reply` in
/// pieces of `recv_piece` bytes, and can fail a send after `sends_ok` sends.
const FakeClamd = struct {
    sent: [4096]u8 = undefined,
    sent_len: usize = 0,
    reply: []const u8,
    reply_at: usize = 0,
    recv_piece: usize = 1024,
    sends_ok: usize = std.math.maxInt(usize),

    pub fn send(self: *FakeClamd, bytes: []const u8) error{ NetIo, NoSpace }!void {
        if (self.sends_ok == 0) return error.NetIo;
        self.sends_ok -= 1;
        if (self.sent_len + bytes.len > self.sent.len) return error.NoSpace;
        @memcpy(self.sent[self.sent_len..][0..bytes.len], bytes);
        self.sent_len += bytes.len;
    }

    pub fn recv(self: *FakeClamd, buf: []u8) error{}![]u8 {
        const n = @min(buf.len, self.recv_piece, self.reply.len - self.reply_at);
        @memcpy(buf[0..n], self.reply[self.reply_at..][0..n]);
        self.reply_at += n;
        return buf[0..n];
    }

    fn written(self: *const FakeClamd) []const u8 {
        return self.sent[0..self.sent_len];
    }
};

fn initWith(config: [*:0]const u8) !void {
    const host = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host, config));
}

test "replies: clean, infected, errors and odd ones" {
    try testing.expectEqual(Reply.clean, parseReply("stream: OK\x00"));
    try testing.expectEqual(Reply.clean, parseReply("stream: OK\n"));
    try testing.expectEqual(Reply.clean, parseReply("stream: OK"));
    try testing.expectEqualStrings("Eicar-Test-Signature", parseReply("stream: Eicar-Test-Signature FOUND\x00").infected);
    try testing.expectEqualStrings("Win.Test.EICAR_HDB-1", parseReply("stream: Win.Test.EICAR_HDB-1 FOUND\r\n").infected);
    // AllMatch lists several matches; the first is named.
    try testing.expectEqualStrings("A.One", parseReply("stream: A.One FOUND\nstream: B.Two FOUND\n").infected);
    try testing.expectEqualStrings("INSTREAM size limit exceeded. ERROR", parseReply("INSTREAM size limit exceeded. ERROR\x00").scanner_error);
    try testing.expectEqualStrings("stream: Can't allocate memory ERROR", parseReply("stream: Can't allocate memory ERROR\x00").scanner_error);
    // Never clean: an empty reply, an empty name, an unknown command, a
    // bare "OK", text after the NUL ignored.
    try testing.expectEqualStrings("", parseReply("").unrecognised);
    try testing.expectEqualStrings("", parseReply("\x00stream: OK").unrecognised);
    try testing.expectEqualStrings("stream: FOUND", parseReply("stream: FOUND\x00").unrecognised);
    try testing.expectEqualStrings("UNKNOWN COMMAND", parseReply("UNKNOWN COMMAND\n").unrecognised);
    try testing.expectEqualStrings("OK", parseReply("OK").unrecognised);
    try testing.expectEqualStrings("stream: OKAY", parseReply("stream: OKAY").unrecognised);
}

test "chunk framing: big-endian lengths, at most chunk_max bytes, a zero length at the end" {
    var clamd = FakeClamd{ .reply = "" };
    try sendChunks(&clamd, "abcdefghij", 4);
    try testing.expectEqualSlices(u8, "\x00\x00\x00\x04abcd\x00\x00\x00\x04efgh\x00\x00\x00\x02ij\x00\x00\x00\x00", clamd.written());

    var exact = FakeClamd{ .reply = "" };
    try sendChunks(&exact, "abcdefgh", 4);
    try testing.expectEqualSlices(u8, "\x00\x00\x00\x04abcd\x00\x00\x00\x04efgh\x00\x00\x00\x00", exact.written());

    var empty = FakeClamd{ .reply = "" };
    try sendChunks(&empty, "", 65536);
    try testing.expectEqualSlices(u8, "\x00\x00\x00\x00", empty.written());

    var big: [300]u8 = @splat('x');
    var one = FakeClamd{ .reply = "" };
    try sendChunks(&one, &big, 65536);
    try testing.expectEqualSlices(u8, "\x00\x00\x01\x2c", one.written()[0..4]);
    try testing.expectEqual(@as(usize, 4 + 300 + 4), one.written().len);
}

test "a scan sends the command, the chunks, and reads a reply split across reads" {
    var clamd = FakeClamd{ .reply = "stream: Eicar-Test-Signature FOUND\x00", .recv_piece = 3 };
    var buf: [reply_bytes_max]u8 = undefined;
    const reply = try scan(&clamd, "hello", 2, &buf);
    try testing.expectEqualStrings("Eicar-Test-Signature", reply.infected);
    try testing.expectEqualSlices(u8, "zINSTREAM\x00\x00\x00\x00\x02he\x00\x00\x00\x02ll\x00\x00\x00\x01o\x00\x00\x00\x00", clamd.written());
}

test "a reply without its NUL ends at close; an endless one is refused" {
    var closes = FakeClamd{ .reply = "stream: OK" };
    var buf: [reply_bytes_max]u8 = undefined;
    try testing.expectEqual(Reply.clean, try scan(&closes, "x", 64, &buf));

    const endless_reply = "stream: ".* ++ @as([40]u8, @splat('A'));
    var endless = FakeClamd{ .reply = &endless_reply };
    var small: [16]u8 = undefined;
    try testing.expectError(error.ReplyTooLong, scan(&endless, "x", 64, &small));
}

test "a connection clamd drops mid-stream reports clamd's reason, else the send error" {
    var limited = FakeClamd{ .reply = "INSTREAM size limit exceeded. ERROR\x00", .sends_ok = 3 };
    var buf: [reply_bytes_max]u8 = undefined;
    try testing.expectEqualStrings("INSTREAM size limit exceeded. ERROR", (try scan(&limited, "abcdefgh", 2, &buf)).scanner_error);

    var silent = FakeClamd{ .reply = "", .sends_ok = 3 };
    try testing.expectError(error.NetIo, scan(&silent, "abcdefgh", 2, &buf));
}

test "address normalisation" {
    var out: [address_bytes_max]u8 = undefined;
    try testing.expectEqualStrings("unix:/run/clamav/clamd.sock", try normaliseAddress("/run/clamav/clamd.sock", &out));
    try testing.expectEqualStrings("unix:/tmp/x/clamd.sock", try normaliseAddress("unix:/tmp/x/clamd.sock", &out));
    try testing.expectEqualStrings("tcp:127.0.0.1:3310", try normaliseAddress("tcp:127.0.0.1:3310", &out));
    try testing.expectEqualStrings("tcp:localhost:3310", try normaliseAddress("tcp:localhost:3310", &out));
    try testing.expectError(error.EmptyAddress, normaliseAddress("", &out));
    try testing.expectError(error.NotAbsolutePath, normaliseAddress("unix:clamd.sock", &out));
    try testing.expectError(error.UnknownScheme, normaliseAddress("clamd.sock", &out));
    try testing.expectError(error.UnknownScheme, normaliseAddress("127.0.0.1:3310", &out));
    try testing.expectError(error.BadTcpAddress, normaliseAddress("tcp:127.0.0.1", &out));
    try testing.expectError(error.BadTcpAddress, normaliseAddress("tcp::3310", &out));
    try testing.expectError(error.BadTcpAddress, normaliseAddress("tcp:localhost:0", &out));
    try testing.expectError(error.BadTcpAddress, normaliseAddress("tcp:localhost:65536", &out));
    try testing.expectError(error.UnknownScheme, normaliseAddress("/tmp/a\x00b", &out));
    const long = "/".* ++ @as([107]u8, @splat('d'));
    try testing.expectError(error.AddressTooLong, normaliseAddress(&long, &out));
    try testing.expectEqual(@as(usize, 112), (try normaliseAddress(long[0..107], &out)).len);
}

test "config: defaults, a path made unix:, and bad values refused" {
    try initWith("{}");
    try testing.expectEqualStrings("unix:/var/run/clamav/clamd.sock", address);
    try testing.expectEqual(Action.reject, action);
    try testing.expectEqual(OnScannerError.tempfail, on_scanner_error);
    try testing.expectEqual(@as(u32, 65536), chunk_bytes);
    try initWith("{\"clamav_socket\": \"/run/clamav/clamd.sock\", \"action\": \"quarantine\", \"on_scanner_error\": \"accept\", \"timeout_ms\": 250, \"chunk_bytes\": 4096, \"enabled\": true}");
    try testing.expectEqualStrings("unix:/run/clamav/clamd.sock", address);
    try testing.expectEqual(Action.quarantine, action);
    try testing.expectEqual(OnScannerError.accept, on_scanner_error);
    try testing.expectEqual(@as(u32, 250), timeout_ms);
    try testing.expectEqual(@as(u32, 4096), chunk_bytes);
    smtp_plugin_deinit();

    const host = plugin.Allocator.wrap(&testing.allocator);
    for ([_][*:0]const u8{
        "{\"action\": \"delete\"}",
        "{\"on_scanner_error\": \"ignore\"}",
        "{\"timeout_ms\": 0}",
        "{\"timeout_ms\": -5}",
        "{\"timeout_ms\": \"5s\"}",
        "{\"chunk_bytes\": 0}",
        "{\"chunk_bytes\": 2000000}",
        "{\"clamav_socket\": \"clamd.sock\"}",
        "{\"clamav_socket\": 3310}",
        "not json",
    }) |bad| {
        try testing.expectEqual(@as(c_int, 1), smtp_plugin_init(&host, bad));
    }
    // A refused config leaves the previous (default) settings in force.
    try testing.expectEqualStrings("unix:/var/run/clamav/clamd.sock", address);
}

test "infected: reject by default with 554 naming the virus" {
    try initWith("{}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    try testing.expectEqual(@as(c_int, 2), applyOutcome(&ctx, .{ .infected = "Eicar-Test-Signature" }));
    try testing.expect(ctx.cancel);
    try testing.expectEqualStrings("Eicar-Test-Signature", ctx.getMetadata("virus_name").?);
    try testing.expectEqualStrings("true", ctx.getMetadata("infected").?);
    try testing.expectEqualStrings("554", ctx.getMetadata("smtp_reply_code").?);
    try testing.expectEqualStrings("5.7.1 Virus found: Eicar-Test-Signature", ctx.getMetadata("smtp_reply_text").?);
    try testing.expect(ctx.getMetadata("quarantine") == null);
}

test "infected with action quarantine: quarantine and cancel, no reply" {
    try initWith("{\"action\": \"quarantine\"}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    try testing.expectEqual(@as(c_int, 2), applyOutcome(&ctx, .{ .infected = "Eicar-Test-Signature" }));
    try testing.expectEqualStrings("true", ctx.getMetadata("quarantine").?);
    try testing.expectEqualStrings("true", ctx.getMetadata("infected").?);
    try testing.expect(ctx.getMetadata("smtp_reply_code") == null);
}

test "a long virus name is cut in the reply text, kept whole in virus_name" {
    try initWith("{}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    const name: [300]u8 = @splat('N');
    _ = applyOutcome(&ctx, .{ .infected = &name });
    try testing.expectEqual(@as(usize, 300), ctx.getMetadata("virus_name").?.len);
    try testing.expectEqual(@as(usize, "5.7.1 Virus found: ".len + reply_name_bytes_max), ctx.getMetadata("smtp_reply_text").?.len);
}

test "clean: continue and say so" {
    try initWith("{}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    try testing.expectEqual(@as(c_int, 0), applyOutcome(&ctx, .clean));
    try testing.expect(!ctx.cancel);
    try testing.expectEqualStrings("clean", ctx.getMetadata("virus_scan").?);
}

test "scanner unreachable (here: no grant): 451 by default, through the real hook" {
    try initWith("{\"clamav_socket\": \"/tmp/none/clamd.sock\"}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    try ctx.setMetadata("message_body", "Subject: hi\r\n\r\nhello\r\n");
    try testing.expectEqual(@as(c_int, 2), smtp_plugin_execute_hook(&ctx));
    try testing.expect(ctx.cancel);
    try testing.expectEqualStrings("451", ctx.getMetadata("smtp_reply_code").?);
    try testing.expectEqualStrings("4.7.1 Virus scanner unavailable, try again later", ctx.getMetadata("smtp_reply_text").?);
    try testing.expect(ctx.getMetadata("virus_scan") == null);
}

test "scanner unreachable with on_scanner_error accept: continue, marked skipped" {
    try initWith("{\"on_scanner_error\": \"accept\"}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    try ctx.setMetadata("message_body", "hello");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&ctx));
    try testing.expect(!ctx.cancel);
    try testing.expectEqualStrings("skipped", ctx.getMetadata("virus_scan").?);
    try testing.expect(ctx.getMetadata("smtp_reply_code") == null);
}

test "no message_body is a scanner error, not a pass; other hooks are ignored" {
    try initWith("{}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer ctx.deinit();
    try testing.expectEqual(@as(c_int, 2), smtp_plugin_execute_hook(&ctx));
    try testing.expectEqualStrings("451", ctx.getMetadata("smtp_reply_code").?);
    var other = plugin.HookContext.init(testing.allocator, .message_received);
    defer other.deinit();
    try other.setMetadata("message_body", "hello");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&other));
    try testing.expect(other.getMetadata("virus_scan") == null);
}

test "metadata declares message_filtered only and blocking" {
    const m = smtp_plugin_get_metadata().?;
    try testing.expectEqual(plugin.hookMask(&.{.message_filtered}), m.handled_hooks);
    try testing.expectEqual(plugin.flag_blocking, m.flags);
}
