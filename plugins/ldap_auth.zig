//! ldap-auth: checks SMTP AUTH passwords against an LDAP directory with a
//! simple bind (RFC 4511), the protocol written out by hand in BER so that the
//! same source builds native and as a sandboxed wasm32-wasi module, where the
//! only way out is the host's `ctx.connect` (docs/plugins/ldap_auth.md).
//!
//! Two ways to find the user's entry:
//! - `bind_dn_template`: "uid={username},ou=people,dc=example,dc=org", the
//!   username escaped as an RFC 4514 attribute value, one round trip;
//! - `search_base` + `search_attribute`: bind as the service account (or
//!   anonymously), search for (attribute=username), require exactly one
//!   entry, then bind as that entry.
//!
//! Verdicts at `auth_started`: the bind succeeds -> continue (the login goes
//! on); wrong password, unknown or ambiguous user, empty password -> cancel
//! (535); the directory unreachable, slow or talking nonsense -> cancel with
//! 454 4.7.0 (`on_server_error = "tempfail"`, the default), never accept.
const std = @import("std");
const plugin = @import("smtp-server").plugin;

// --- Bounds -----------------------------------------------------------------

/// SMTP usernames longer than this are refused without asking the directory.
const username_bytes_max = 256;
/// Passwords longer than this are refused (the request buffer is sized for it).
const password_bytes_max = 1024;
/// A DN, from the template or from a search result.
const dn_bytes_max = 2048;
/// One encoded request: the DN and the password plus a few dozen bytes of BER.
const request_bytes_max = dn_bytes_max + password_bytes_max + 256;
/// One LDAP message from the server. Our searches ask for no attributes, so
/// a legitimate reply is a few hundred bytes; anything over this is refused.
const response_bytes_max = 64 * 1024;
/// Messages read for one search (entries, references, then the done).
const search_messages_max = 16;
/// timeout_ms: the budget of one authentication, connect included.
const timeout_ms_max = 60_000;
const config_string_bytes_max = 1024;

// --- Config -----------------------------------------------------------------

const Config = struct {
    server: ?[]const u8 = null,
    timeout_ms: i64 = 5000,
    on_server_error: []const u8 = "tempfail",
    bind_dn_template: ?[]const u8 = null,
    search_base: ?[]const u8 = null,
    search_attribute: []const u8 = "uid",
    search_scope: []const u8 = "sub",
    service_bind_dn: ?[]const u8 = null,
    service_password: ?[]const u8 = null,
};

const ServerErrorPolicy = enum { tempfail, reject };

/// SearchRequest.scope values.
const Scope = enum(u8) { base = 0, one = 1, sub = 2 };

const Mode = union(enum) {
    template: []const u8,
    search: struct {
        base: []const u8,
        attribute: []const u8,
        scope: Scope,
        service_dn: ?[]const u8,
        service_password: ?[]const u8,
    },
};

const Settings = struct {
    server: []const u8,
    timeout_ms: u32,
    on_server_error: ServerErrorPolicy,
    mode: Mode,
};

const username_placeholder = "{username}";

var allocator: std.mem.Allocator = undefined;
var config_parsed: ?std.json.Parsed(Config) = null;
var settings: ?Settings = null;

/// The connection to the directory, kept across hook calls (the host runs one
/// call of this plugin at a time) and dropped after any error.
var connection: ?plugin.Socket = null;
var inbox: Inbox = .{};
var last_message_id: i32 = 0;

const metadata = plugin.PluginMetadata{
    .name = "ldap-auth",
    .version = "1.0.0",
    .author = "SMTP Team",
    .description = "Checks SMTP AUTH passwords with an LDAP simple bind",
    .license = "MIT",
    .dependencies = &.{},
    .min_server_version = "0.28.0",
    .max_server_version = null,
    .handled_hooks = plugin.hookMask(&.{.auth_started}),
    // Every authentication waits on the network.
    .flags = plugin.flag_blocking,
};

fn invalidConfig(comptime fmt: []const u8, args: anytype) c_int {
    std.debug.print("[ldap-auth] Invalid config: " ++ fmt ++ "\n", args);
    return 1;
}

/// Checks the parsed config and derives the settings, or prints why not.
fn validate(c: Config) ?Settings {
    const server = c.server orelse {
        _ = invalidConfig("\"server\" is required (e.g. \"tcp:127.0.0.1:389\")", .{});
        return null;
    };
    if (!(std.mem.startsWith(u8, server, "tcp:") or std.mem.startsWith(u8, server, "unix:")) or server.len > config_string_bytes_max) {
        _ = invalidConfig("\"server\" must be \"tcp:HOST:PORT\" or \"unix:/PATH\"", .{});
        return null;
    }
    if (c.timeout_ms < 1 or c.timeout_ms > timeout_ms_max) {
        _ = invalidConfig("\"timeout_ms\" must be between 1 and {d}", .{timeout_ms_max});
        return null;
    }
    const policy = std.meta.stringToEnum(ServerErrorPolicy, c.on_server_error) orelse {
        _ = invalidConfig("\"on_server_error\" must be \"tempfail\" or \"reject\"", .{});
        return null;
    };
    if ((c.bind_dn_template == null) == (c.search_base == null)) {
        _ = invalidConfig("set exactly one of \"bind_dn_template\" and \"search_base\"", .{});
        return null;
    }
    var result = Settings{ .server = server, .timeout_ms = @intCast(c.timeout_ms), .on_server_error = policy, .mode = undefined };
    if (c.bind_dn_template) |template| {
        if (std.mem.indexOf(u8, template, username_placeholder) == null or template.len > config_string_bytes_max) {
            _ = invalidConfig("\"bind_dn_template\" must contain {{username}} (e.g. \"uid={{username}},ou=people,dc=example,dc=org\")", .{});
            return null;
        }
        if (c.service_bind_dn != null or c.service_password != null) {
            _ = invalidConfig("\"service_bind_dn\"/\"service_password\" only apply with \"search_base\"", .{});
            return null;
        }
        result.mode = .{ .template = template };
        return result;
    }
    const base = c.search_base.?;
    if (base.len > config_string_bytes_max) {
        _ = invalidConfig("\"search_base\" is longer than {d} bytes", .{config_string_bytes_max});
        return null;
    }
    if (!validAttributeName(c.search_attribute)) {
        _ = invalidConfig("\"search_attribute\" must be an attribute name such as \"uid\" or \"mail\"", .{});
        return null;
    }
    const scope = std.meta.stringToEnum(Scope, c.search_scope) orelse {
        _ = invalidConfig("\"search_scope\" must be \"sub\", \"one\" or \"base\"", .{});
        return null;
    };
    if ((c.service_bind_dn == null) != (c.service_password == null)) {
        _ = invalidConfig("set both \"service_bind_dn\" and \"service_password\", or neither (anonymous search)", .{});
        return null;
    }
    if (c.service_bind_dn) |dn| {
        // An empty password would make an "unauthenticated bind", which
        // succeeds without checking anything (RFC 4513 5.1.2).
        if (dn.len == 0 or dn.len > dn_bytes_max or c.service_password.?.len == 0 or c.service_password.?.len > password_bytes_max) {
            _ = invalidConfig("\"service_bind_dn\" and \"service_password\" must be non-empty", .{});
            return null;
        }
    }
    result.mode = .{ .search = .{
        .base = base,
        .attribute = c.search_attribute,
        .scope = scope,
        .service_dn = c.service_bind_dn,
        .service_password = c.service_password,
    } };
    return result;
}

/// An attribute description (RFC 4512 2.5): a name or a numeric OID, with no
/// byte that could break out of a filter.
fn validAttributeName(name: []const u8) bool {
    if (name.len == 0 or name.len > 128) return false;
    for (name) |byte| {
        if (!(std.ascii.isAlphanumeric(byte) or byte == '-' or byte == '.' or byte == ';')) return false;
    }
    return true;
}

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    allocator = host_allocator.allocator();
    const config_str = std.mem.span(config);
    const text = if (config_str.len == 0) "{}" else config_str;
    // alloc_always: the config text is only valid during this call, and the
    // settings keep slices of its strings.
    const parsed = std.json.parseFromSlice(Config, allocator, text, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| {
        return invalidConfig("{s}", .{@errorName(err)});
    };
    const valid = validate(parsed.value) orelse {
        parsed.deinit();
        return 1;
    };
    if (config_parsed) |previous| previous.deinit();
    config_parsed = parsed;
    settings = valid;
    connection = null;
    inbox = .{};
    std.debug.print("[ldap-auth] Initialized: server {s}, {s}\n", .{ valid.server, @tagName(valid.mode) });
    return 0;
}

export fn smtp_plugin_deinit() callconv(.c) void {
    // The host closes the plugin's sockets at unload; deinit has no context to do it.
    connection = null;
    inbox = .{};
    settings = null;
    if (config_parsed) |parsed| parsed.deinit();
    config_parsed = null;
}

export fn smtp_plugin_get_metadata() callconv(.c) ?*const plugin.PluginMetadata {
    return &metadata;
}

export fn smtp_plugin_execute_hook(context: *plugin.HookContext) callconv(.c) c_int {
    return switch (context.hook_type) {
        .auth_started => authStarted(context),
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

// --- The hook ---------------------------------------------------------------

const result_continue: c_int = 0;
const result_cancel: c_int = 2;

/// Why a login is refused (535). The client is told nothing more, so that a
/// wrong password and an unknown user look alike.
const Refusal = enum {
    empty_password,
    bad_username,
    password_too_long,
    invalid_credentials,
    unknown_user,
    ambiguous_user,
};

const Verdict = union(enum) {
    accepted,
    refused: Refusal,
};

fn authStarted(ctx: *plugin.HookContext) c_int {
    const s = settings orelse return serverError(ctx, .tempfail, "not initialized", "");
    const username = ctx.getMetadata("username") orelse "";
    const password = ctx.getMetadata("password") orelse "";
    const remote_ip = ctx.getMetadata("remote_ip") orelse "?";
    if (!validUsername(username)) return refuse(ctx, .bad_username, "(invalid username)", remote_ip, null);
    // Checked before any bind: a simple bind with a DN and an empty password
    // is an "unauthenticated bind" (RFC 4513 5.1.2), which servers that allow
    // it answer with success without checking anything.
    if (password.len == 0) return refuse(ctx, .empty_password, username, remote_ip, null);
    if (password.len > password_bytes_max) return refuse(ctx, .password_too_long, username, remote_ip, null);

    const verdict = authenticate(ctx, s, username, password) catch |err| {
        return serverError(ctx, s.on_server_error, @errorName(err), username);
    };
    switch (verdict) {
        .accepted => {
            std.debug.print("[ldap-auth] {s} authenticated (from {s})\n", .{ username, printable(remote_ip) });
            return result_continue;
        },
        .refused => |why| return refuse(ctx, why, username, remote_ip, if (why == .invalid_credentials) last_result_code else null),
    }
}

fn refuse(ctx: *plugin.HookContext, why: Refusal, username: []const u8, remote_ip: []const u8, ldap_code: ?u32) c_int {
    if (ldap_code) |code| {
        std.debug.print("[ldap-auth] {s} refused: {s} (LDAP result {d}, from {s})\n", .{ username, @tagName(why), code, printable(remote_ip) });
    } else {
        std.debug.print("[ldap-auth] {s} refused: {s} (from {s})\n", .{ username, @tagName(why), printable(remote_ip) });
    }
    // No reply chosen: the host answers its default for a refused login,
    // 535 5.7.8 Authentication credentials invalid.
    ctx.cancel = true;
    return result_cancel;
}

fn serverError(ctx: *plugin.HookContext, policy: ServerErrorPolicy, what: []const u8, username: []const u8) c_int {
    const server = if (settings) |s| s.server else "?";
    const answer = if (policy == .tempfail) "454" else "535";
    if (last_result_code) |code| {
        std.debug.print("[ldap-auth] LDAP server {s} failed ({s}, LDAP result {d}) authenticating {s}: answering {s}\n", .{ server, what, code, username, answer });
    } else {
        std.debug.print("[ldap-auth] LDAP server {s} failed ({s}) authenticating {s}: answering {s}\n", .{ server, what, username, answer });
    }
    if (policy == .tempfail) {
        // Best effort: if the host cannot take the reply, the cancel alone
        // still refuses the login (with the host's 535).
        ctx.setMetadata("smtp_reply_code", "454") catch {};
        ctx.setMetadata("smtp_reply_text", "4.7.0 Temporary authentication failure") catch {};
    }
    ctx.cancel = true;
    return result_cancel;
}

/// 1..username_bytes_max bytes of UTF-8 without control characters: what an
/// SMTP username can reasonably be, and safe to print in a log line.
fn validUsername(username: []const u8) bool {
    if (username.len == 0 or username.len > username_bytes_max) return false;
    if (!std.unicode.utf8ValidateSlice(username)) return false;
    for (username) |byte| {
        if (byte < 0x20 or byte == 0x7f) return false;
    }
    return true;
}

/// `text` if it is safe in a log line, else a placeholder.
fn printable(text: []const u8) []const u8 {
    for (text) |byte| {
        if (byte < 0x20 or byte >= 0x7f) return "(unprintable)";
    }
    return text;
}

/// Errors that mean "the directory could not answer": never an acceptance.
const ServerError = plugin.NetError || error{
    PeerClosed,
    Protocol,
    ResponseTooLarge,
    RequestTooLarge,
    ServerDisconnected,
    ServerRefused,
    ServiceBindRefused,
    SearchFailed,
};

/// The LDAP result code of the last bind or search, for the log.
var last_result_code: ?u32 = null;

fn authenticate(ctx: *plugin.HookContext, s: Settings, username: []const u8, password: []const u8) ServerError!Verdict {
    const deadline_ms = ctx.nowMs() + s.timeout_ms;
    last_result_code = null;
    // A kept connection may have been closed by the server while idle: one
    // retry on a fresh connection, only for errors that say so.
    var attempt: u32 = 0;
    while (attempt < 2) : (attempt += 1) {
        const reused = connection != null;
        if (connection == null) {
            connection = try ctx.connect(s.server, try remainingMs(ctx, deadline_ms));
            inbox = .{};
        }
        var io = SocketIo{ .ctx = ctx, .socket = connection.?, .deadline_ms = deadline_ms };
        const verdict = exchange(&io, s, username, password) catch |err| {
            connection.?.close(ctx);
            connection = null;
            inbox = .{};
            const stale = err == error.PeerClosed or err == error.NetClosed or err == error.NetIo;
            if (reused and stale) continue;
            return err;
        };
        return verdict;
    }
    return error.PeerClosed;
}

/// The transport of a real hook call: every wait is bounded by what is left
/// of the authentication's budget.
const SocketIo = struct {
    ctx: *plugin.HookContext,
    socket: plugin.Socket,
    deadline_ms: i64,

    pub fn send(self: *SocketIo, bytes: []const u8) plugin.NetError!void {
        try self.socket.send(self.ctx, bytes, try remainingMs(self.ctx, self.deadline_ms));
    }

    pub fn recv(self: *SocketIo, buf: []u8) plugin.NetError![]u8 {
        return self.socket.recv(self.ctx, buf, try remainingMs(self.ctx, self.deadline_ms));
    }
};

fn remainingMs(ctx: *const plugin.HookContext, deadline_ms: i64) plugin.NetError!u32 {
    const left = deadline_ms - ctx.nowMs();
    if (left <= 0) return error.NetTimeout;
    return @intCast(@min(left, timeout_ms_max));
}

/// The LDAP conversation of one authentication over `io` (anything with
/// `send(bytes)` and `recv(buf)`: the socket, or a script in unit tests).
fn exchange(io: anytype, s: Settings, username: []const u8, password: []const u8) ServerError!Verdict {
    var dn_buf: [dn_bytes_max]u8 = undefined;
    switch (s.mode) {
        .template => |template| {
            const dn = expandTemplate(&dn_buf, template, username) catch return error.RequestTooLarge;
            return userBind(io, dn, password);
        },
        .search => |search| {
            // Rebind first: the connection may still be bound as the last user.
            const code = try bind(io, search.service_dn orelse "", search.service_password orelse "");
            if (code != result_success) {
                last_result_code = code;
                return error.ServiceBindRefused;
            }
            const found = try searchOne(io, search.base, search.scope, search.attribute, username, s.timeout_ms, &dn_buf);
            switch (found) {
                .none => return .{ .refused = .unknown_user },
                .many => return .{ .refused = .ambiguous_user },
                .one => |dn| return userBind(io, dn, password),
            }
        },
    }
}

fn userBind(io: anytype, dn: []const u8, password: []const u8) ServerError!Verdict {
    // An empty name with a password is an anonymous bind to some servers.
    if (dn.len == 0) return .{ .refused = .unknown_user };
    const code = try bind(io, dn, password);
    last_result_code = code;
    if (code == result_success) return .accepted;
    return switch (classifyBindResult(code)) {
        .refused => .{ .refused = .invalid_credentials },
        .server_error => error.ServerRefused,
    };
}

// --- LDAP result codes (RFC 4511 4.1.9) ----------------------------------------

const result_success: u32 = 0;
const result_size_limit_exceeded: u32 = 4;

/// Bind results that are about these credentials (refuse the login) rather
/// than about the server (answer per on_server_error).
fn classifyBindResult(code: u32) enum { refused, server_error } {
    return switch (code) {
        19, // constraintViolation: password policy (locked, expired)
        32, // noSuchObject
        34, // invalidDNSyntax
        48, // inappropriateAuthentication
        49, // invalidCredentials
        50, // insufficientAccessRights
        53, // unwillingToPerform
        => .refused,
        else => .server_error,
    };
}

// --- Requests ---------------------------------------------------------------

fn nextMessageId() i32 {
    last_message_id = if (last_message_id >= std.math.maxInt(i32)) 1 else last_message_id + 1;
    return last_message_id;
}

/// Sends a simple BindRequest and returns the BindResponse's result code.
fn bind(io: anytype, dn: []const u8, password: []const u8) ServerError!u32 {
    var buf: [request_bytes_max]u8 = undefined;
    const id = nextMessageId();
    const request = encodeBindRequest(&buf, id, dn, password) catch return error.RequestTooLarge;
    try io.send(request);
    const message = try receive(io, id);
    if (message.op_tag != tag_bind_response) return error.Protocol;
    return (try parseResult(message.op)).code;
}

const SearchOutcome = union(enum) {
    none,
    one: []const u8,
    many,
};

/// Searches for entries whose `attribute` equals `value`; the DN of the one
/// entry found is copied into `dn_buf`.
fn searchOne(io: anytype, base: []const u8, scope: Scope, attribute: []const u8, value: []const u8, timeout_ms: u32, dn_buf: []u8) ServerError!SearchOutcome {
    var buf: [request_bytes_max]u8 = undefined;
    const id = nextMessageId();
    const time_limit_s: i32 = @intCast((timeout_ms + 999) / 1000);
    const request = encodeSearchRequest(&buf, id, base, scope, attribute, value, time_limit_s) catch return error.RequestTooLarge;
    try io.send(request);
    var entries: usize = 0;
    var dn_len: usize = 0;
    for (0..search_messages_max) |_| {
        const message = try receive(io, id);
        switch (message.op_tag) {
            tag_search_result_entry => {
                var r = Reader{ .bytes = message.op };
                const dn = try r.expect(tag_octet_string);
                entries += 1;
                if (entries == 1) {
                    if (dn.len > dn_buf.len) return error.Protocol;
                    @memcpy(dn_buf[0..dn.len], dn);
                    dn_len = dn.len;
                }
            },
            tag_search_result_reference => {}, // referrals are not followed
            tag_search_result_done => {
                const result = try parseResult(message.op);
                last_result_code = result.code;
                if (result.code == result_size_limit_exceeded) return .many;
                if (result.code != result_success) return error.SearchFailed;
                var filter_buf: [3 * username_bytes_max + 160]u8 = undefined;
                const filter = describeFilter(&filter_buf, attribute, value);
                return switch (entries) {
                    0 => blk: {
                        std.debug.print("[ldap-auth] no entry matches {s} under {s}\n", .{ filter, base });
                        break :blk .none;
                    },
                    1 => .{ .one = dn_buf[0..dn_len] },
                    else => blk: {
                        std.debug.print("[ldap-auth] {d} entries match {s} under {s}\n", .{ entries, filter, base });
                        break :blk .many;
                    },
                };
            },
            else => return error.Protocol,
        }
    }
    // We asked for at most two entries: a server sending more is misbehaving.
    return error.Protocol;
}

/// The search's filter in its RFC 4515 text form, for log lines. The request
/// itself carries the value as raw bytes in BER (no escaping is needed or
/// possible there); the text form must escape it so that a username such as
/// "*" or "a)(uid=*" reads as what was searched for.
fn describeFilter(buf: []u8, attribute: []const u8, value: []const u8) []const u8 {
    var at: usize = 0;
    const parts = [_][]const u8{ "(", attribute, "=" };
    for (parts) |part| {
        if (at + part.len > buf.len) return "(filter too long to show)";
        @memcpy(buf[at .. at + part.len], part);
        at += part.len;
    }
    const escaped = escapeFilterValue(buf[at..], value) catch return "(filter too long to show)";
    at += escaped.len;
    if (at >= buf.len) return "(filter too long to show)";
    buf[at] = ')';
    return buf[0 .. at + 1];
}

const ReceivedMessage = struct {
    op_tag: u8,
    op: []const u8,
};

/// The next message answering request `id`. A Notice of Disconnection
/// (message ID 0) or a reply to another request ends the conversation.
fn receive(io: anytype, id: i32) ServerError!ReceivedMessage {
    const bytes = try inbox.next(io);
    const message = try parseMessage(bytes);
    if (message.id == 0 and message.op_tag == tag_extended_response) return error.ServerDisconnected;
    if (message.id != id) return error.Protocol;
    return .{ .op_tag = message.op_tag, .op = message.op };
}

// --- Escaping ---------------------------------------------------------------

/// `template` with every "{username}" replaced by `username` escaped as an
/// RFC 4514 attribute value.
fn expandTemplate(out: []u8, template: []const u8, username: []const u8) error{NoSpaceLeft}![]const u8 {
    var at: usize = 0;
    var rest = template;
    // Each round consumes at least one placeholder; the template is bounded.
    for (0..config_string_bytes_max + 1) |_| {
        const index = std.mem.indexOf(u8, rest, username_placeholder) orelse break;
        if (at + index > out.len) return error.NoSpaceLeft;
        @memcpy(out[at .. at + index], rest[0..index]);
        at += index;
        at += (try escapeDnValue(out[at..], username)).len;
        rest = rest[index + username_placeholder.len ..];
    }
    if (at + rest.len > out.len) return error.NoSpaceLeft;
    @memcpy(out[at .. at + rest.len], rest);
    return out[0 .. at + rest.len];
}

/// RFC 4514 section 2.4: a backslash before `"+,;<>\` and `=`, before a
/// leading space or '#' and a trailing space; control bytes as \XX.
fn escapeDnValue(out: []u8, value: []const u8) error{NoSpaceLeft}![]const u8 {
    var at: usize = 0;
    for (value, 0..) |byte, i| {
        const special = switch (byte) {
            '"', '+', ',', ';', '<', '>', '\\', '=' => true,
            ' ' => i == 0 or i == value.len - 1,
            '#' => i == 0,
            else => false,
        };
        if (byte < 0x20 or byte == 0x7f) {
            if (at + 3 > out.len) return error.NoSpaceLeft;
            out[at] = '\\';
            out[at + 1] = hex_digits[byte >> 4];
            out[at + 2] = hex_digits[byte & 0xf];
            at += 3;
        } else if (special) {
            if (at + 2 > out.len) return error.NoSpaceLeft;
            out[at] = '\\';
            out[at + 1] = byte;
            at += 2;
        } else {
            if (at + 1 > out.len) return error.NoSpaceLeft;
            out[at] = byte;
            at += 1;
        }
    }
    return out[0..at];
}

/// RFC 4515 section 3: `*`, `(`, `)`, `\` and NUL as \XX (control bytes too,
/// so the result is printable).
fn escapeFilterValue(out: []u8, value: []const u8) error{NoSpaceLeft}![]const u8 {
    var at: usize = 0;
    for (value) |byte| {
        const escape = switch (byte) {
            '*', '(', ')', '\\' => true,
            else => byte < 0x20 or byte == 0x7f,
        };
        if (escape) {
            if (at + 3 > out.len) return error.NoSpaceLeft;
            out[at] = '\\';
            out[at + 1] = hex_digits[byte >> 4];
            out[at + 2] = hex_digits[byte & 0xf];
            at += 3;
        } else {
            if (at + 1 > out.len) return error.NoSpaceLeft;
            out[at] = byte;
            at += 1;
        }
    }
    return out[0..at];
}

const hex_digits = "0123456789abcdef";

// --- BER (RFC 4511 section 5.1: definite lengths, one-byte tags) ------------

const tag_integer: u8 = 0x02;
const tag_octet_string: u8 = 0x04;
const tag_boolean: u8 = 0x01;
const tag_enumerated: u8 = 0x0a;
const tag_sequence: u8 = 0x30;
const tag_bind_request: u8 = 0x60; // [APPLICATION 0] constructed
const tag_bind_response: u8 = 0x61; // [APPLICATION 1]
const tag_search_request: u8 = 0x63; // [APPLICATION 3]
const tag_search_result_entry: u8 = 0x64; // [APPLICATION 4]
const tag_search_result_done: u8 = 0x65; // [APPLICATION 5]
const tag_search_result_reference: u8 = 0x73; // [APPLICATION 19]
const tag_extended_response: u8 = 0x78; // [APPLICATION 24]
const tag_auth_simple: u8 = 0x80; // [0] primitive, in BindRequest
const tag_filter_equality: u8 = 0xa3; // [3] constructed, in Filter

/// Builds a BER encoding in a fixed buffer. A constructed element is opened
/// with `begin` (one length byte reserved) and closed with `end`, which
/// moves the content when its length needs the long form.
const Encoder = struct {
    buf: []u8,
    len: usize = 0,

    const Error = error{NoSpaceLeft};

    fn byte(self: *Encoder, value: u8) Error!void {
        if (self.len == self.buf.len) return error.NoSpaceLeft;
        self.buf[self.len] = value;
        self.len += 1;
    }

    fn raw(self: *Encoder, bytes: []const u8) Error!void {
        if (self.buf.len - self.len < bytes.len) return error.NoSpaceLeft;
        @memcpy(self.buf[self.len .. self.len + bytes.len], bytes);
        self.len += bytes.len;
    }

    /// Writes `tag` and a placeholder length; returns where the content starts.
    fn begin(self: *Encoder, tag: u8) Error!usize {
        try self.byte(tag);
        try self.byte(0);
        return self.len;
    }

    fn end(self: *Encoder, start: usize) Error!void {
        const content_len = self.len - start;
        if (content_len < 0x80) {
            self.buf[start - 1] = @intCast(content_len);
            return;
        }
        var extra: usize = 0;
        var rest = content_len;
        while (rest != 0) : (rest >>= 8) extra += 1;
        if (self.buf.len - self.len < extra) return error.NoSpaceLeft;
        std.mem.copyBackwards(u8, self.buf[start + extra .. self.len + extra], self.buf[start..self.len]);
        self.buf[start - 1] = 0x80 | @as(u8, @intCast(extra));
        for (0..extra) |i| {
            self.buf[start + i] = @truncate(content_len >> @intCast(8 * (extra - 1 - i)));
        }
        self.len += extra;
    }

    fn octetString(self: *Encoder, tag: u8, value: []const u8) Error!void {
        const start = try self.begin(tag);
        try self.raw(value);
        try self.end(start);
    }

    /// A two's-complement INTEGER (or ENUMERATED) in the fewest bytes.
    fn integer(self: *Encoder, tag: u8, value: i32) Error!void {
        var bytes: [4]u8 = undefined;
        std.mem.writeInt(i32, &bytes, value, .big);
        var first: usize = 0;
        while (first < 3) : (first += 1) {
            const redundant = (bytes[first] == 0x00 and bytes[first + 1] & 0x80 == 0) or
                (bytes[first] == 0xff and bytes[first + 1] & 0x80 != 0);
            if (!redundant) break;
        }
        const start = try self.begin(tag);
        try self.raw(bytes[first..]);
        try self.end(start);
    }

    fn boolean(self: *Encoder, value: bool) Error!void {
        try self.raw(&.{ tag_boolean, 1, if (value) 0xff else 0x00 });
    }
};

/// LDAPMessage { messageID, BindRequest { version 3, name, simple password } }.
fn encodeBindRequest(buf: []u8, id: i32, dn: []const u8, password: []const u8) Encoder.Error![]const u8 {
    var e = Encoder{ .buf = buf };
    const message = try e.begin(tag_sequence);
    try e.integer(tag_integer, id);
    const op = try e.begin(tag_bind_request);
    try e.integer(tag_integer, 3);
    try e.octetString(tag_octet_string, dn);
    try e.octetString(tag_auth_simple, password);
    try e.end(op);
    try e.end(message);
    return buf[0..e.len];
}

/// LDAPMessage { messageID, SearchRequest { base, scope, neverDerefAliases,
/// sizeLimit 2, timeLimit, typesOnly false, (attribute=value), ["1.1"] } }.
/// A size limit of 2 is enough to tell one entry from several; "1.1" asks
/// for no attributes: only the DN is needed.
fn encodeSearchRequest(buf: []u8, id: i32, base: []const u8, scope: Scope, attribute: []const u8, value: []const u8, time_limit_s: i32) Encoder.Error![]const u8 {
    var e = Encoder{ .buf = buf };
    const message = try e.begin(tag_sequence);
    try e.integer(tag_integer, id);
    const op = try e.begin(tag_search_request);
    try e.octetString(tag_octet_string, base);
    try e.integer(tag_enumerated, @intFromEnum(scope));
    try e.integer(tag_enumerated, 0);
    try e.integer(tag_integer, 2);
    try e.integer(tag_integer, time_limit_s);
    try e.boolean(false);
    const filter = try e.begin(tag_filter_equality);
    try e.octetString(tag_octet_string, attribute);
    try e.octetString(tag_octet_string, value);
    try e.end(filter);
    const attributes = try e.begin(tag_sequence);
    try e.octetString(tag_octet_string, "1.1");
    try e.end(attributes);
    try e.end(op);
    try e.end(message);
    return buf[0..e.len];
}

const DecodeError = error{ Protocol, ResponseTooLarge };

const Tlv = struct {
    tag: u8,
    content: []const u8,
};

/// Reads BER elements from a complete, untrusted buffer: every length is
/// checked against what is left before anything is sliced.
const Reader = struct {
    bytes: []const u8,
    pos: usize = 0,

    fn next(self: *Reader) DecodeError!Tlv {
        const header = try parseHeader(self.bytes[self.pos..]) orelse return error.Protocol;
        const start = self.pos + header.header_len;
        if (self.bytes.len - start < header.content_len) return error.Protocol;
        self.pos = start + header.content_len;
        return .{ .tag = header.tag, .content = self.bytes[start..self.pos] };
    }

    fn expect(self: *Reader, tag: u8) DecodeError![]const u8 {
        const tlv = try self.next();
        if (tlv.tag != tag) return error.Protocol;
        return tlv.content;
    }
};

const Header = struct {
    tag: u8,
    header_len: usize,
    content_len: usize,
};

/// The tag and length at the start of `bytes`; null when more bytes are
/// needed to know them. Refuses multi-byte tags, the indefinite form and
/// lengths over response_bytes_max.
fn parseHeader(bytes: []const u8) DecodeError!?Header {
    if (bytes.len < 2) return null;
    const tag = bytes[0];
    if (tag & 0x1f == 0x1f) return error.Protocol;
    const first = bytes[1];
    if (first < 0x80) return .{ .tag = tag, .header_len = 2, .content_len = first };
    const count: usize = first & 0x7f;
    if (count == 0 or count > 4) return error.Protocol;
    if (bytes.len < 2 + count) return null;
    var length: usize = 0;
    for (bytes[2 .. 2 + count]) |b| length = (length << 8) | b;
    if (length > response_bytes_max) return error.ResponseTooLarge;
    return .{ .tag = tag, .header_len = 2 + count, .content_len = length };
}

/// A non-negative INTEGER or ENUMERATED of at most 4 bytes.
fn decodeUnsigned(content: []const u8) DecodeError!u32 {
    if (content.len == 0 or content.len > 4 or content[0] & 0x80 != 0) return error.Protocol;
    var value: u32 = 0;
    for (content) |b| value = (value << 8) | b;
    return value;
}

const Message = struct {
    id: i32,
    op_tag: u8,
    op: []const u8,
};

/// LDAPMessage ::= SEQUENCE { messageID, protocolOp, controls OPTIONAL }.
fn parseMessage(bytes: []const u8) DecodeError!Message {
    var outer = Reader{ .bytes = bytes };
    const content = try outer.expect(tag_sequence);
    if (outer.pos != bytes.len) return error.Protocol;
    var r = Reader{ .bytes = content };
    const id = try decodeUnsigned(try r.expect(tag_integer));
    if (id > std.math.maxInt(i32)) return error.Protocol;
    const op = try r.next();
    return .{ .id = @intCast(id), .op_tag = op.tag, .op = op.content };
}

const LdapResult = struct {
    code: u32,
    matched_dn: []const u8,
    diagnostic: []const u8,
};

/// LDAPResult ::= resultCode, matchedDN, diagnosticMessage, referral OPTIONAL.
fn parseResult(op: []const u8) DecodeError!LdapResult {
    var r = Reader{ .bytes = op };
    const code = try decodeUnsigned(try r.expect(tag_enumerated));
    const matched_dn = try r.expect(tag_octet_string);
    const diagnostic = try r.expect(tag_octet_string);
    return .{ .code = code, .matched_dn = matched_dn, .diagnostic = diagnostic };
}

/// Bytes received from the server, cut into whole LDAPMessages.
const Inbox = struct {
    buf: [response_bytes_max]u8 = undefined,
    len: usize = 0,
    /// Length of the message handed out last, dropped on the next call.
    consumed: usize = 0,

    /// The next complete message (valid until the next call). Reads until
    /// one is complete: each read adds at least one byte to a bounded buffer.
    fn next(self: *Inbox, io: anytype) ServerError![]const u8 {
        if (self.consumed > 0) {
            std.mem.copyForwards(u8, self.buf[0 .. self.len - self.consumed], self.buf[self.consumed..self.len]);
            self.len -= self.consumed;
            self.consumed = 0;
        }
        for (0..response_bytes_max + 1) |_| {
            if (try parseHeader(self.buf[0..self.len])) |header| {
                if (header.tag != tag_sequence) return error.Protocol;
                const total = header.header_len + header.content_len;
                if (total > self.buf.len) return error.ResponseTooLarge;
                if (total <= self.len) {
                    self.consumed = total;
                    return self.buf[0..total];
                }
            }
            const got = try io.recv(self.buf[self.len..]);
            if (got.len == 0) return error.PeerClosed;
            self.len += got.len;
        }
        return error.ResponseTooLarge;
    }
};

// --- Tests ------------------------------------------------------------------

const testing = std.testing;

/// A scripted LDAP server for the conversation tests: replies are handed
/// out in the given chunks, and whatever the plugin sends is recorded.
const ScriptIo = struct {
    chunks: []const []const u8,
    next_chunk: usize = 0,
    sent: [8192]u8 = undefined,
    sent_len: usize = 0,

    pub fn send(self: *ScriptIo, bytes: []const u8) plugin.NetError!void {
        if (self.sent.len - self.sent_len < bytes.len) return error.NetLimit;
        @memcpy(self.sent[self.sent_len .. self.sent_len + bytes.len], bytes);
        self.sent_len += bytes.len;
    }

    pub fn recv(self: *ScriptIo, buf: []u8) plugin.NetError![]u8 {
        if (self.next_chunk == self.chunks.len) return buf[0..0];
        const chunk = self.chunks[self.next_chunk];
        self.next_chunk += 1;
        @memcpy(buf[0..chunk.len], chunk);
        return buf[0..chunk.len];
    }
};

fn initForTest(config: [:0]const u8) !void {
    const host = struct {
        var wrapped: plugin.Allocator = undefined;
    };
    host.wrapped = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host.wrapped, config));
    last_message_id = 0;
}

fn initResult(config: [:0]const u8) c_int {
    const host = plugin.Allocator.wrap(&testing.allocator);
    const code = smtp_plugin_init(&host, config);
    if (code == 0) smtp_plugin_deinit();
    return code;
}

test "BindRequest encodes as RFC 4511 says, short and long lengths" {
    var buf: [request_bytes_max]u8 = undefined;
    const short = try encodeBindRequest(&buf, 1, "cn=admin", "secret");
    try testing.expectEqualSlices(u8, "\x30\x1a\x02\x01\x01\x60\x15\x02\x01\x03\x04\x08cn=admin\x80\x06secret", short);

    // A 200-byte DN needs the long form: 0x81 0xc8 for the DN, 0x81 for the
    // op and the message.
    const dn: [200]u8 = @splat('d');
    const long = try encodeBindRequest(&buf, 300, &dn, "pw");
    try testing.expectEqualSlices(u8, "\x30\x81\xd9\x02\x02\x01\x2c\x60\x81\xd2\x02\x01\x03\x04\x81\xc8", long[0..16]);
    try testing.expectEqualSlices(u8, "\x80\x02pw", long[long.len - 4 ..]);
    try testing.expectEqual(@as(usize, 3 + 0xd9), long.len);

    // The whole thing parses back with our own decoder.
    const message = try parseMessage(long);
    try testing.expectEqual(@as(i32, 300), message.id);
    try testing.expectEqual(tag_bind_request, message.op_tag);
    var r = Reader{ .bytes = message.op };
    try testing.expectEqual(@as(u32, 3), try decodeUnsigned(try r.expect(tag_integer)));
    try testing.expectEqualSlices(u8, &dn, try r.expect(tag_octet_string));
    try testing.expectEqualSlices(u8, "pw", try r.expect(tag_auth_simple));

    // Three-byte lengths (a 1000-byte password) round-trip too.
    const long_password: [1000]u8 = @splat('p');
    const big = try encodeBindRequest(&buf, 7, "cn=x", &long_password);
    try testing.expectEqualSlices(u8, "\x30\x82", big[0..2]);
    var pr = Reader{ .bytes = (try parseMessage(big)).op };
    _ = try pr.expect(tag_integer);
    _ = try pr.expect(tag_octet_string);
    try testing.expectEqual(@as(usize, 1000), (try pr.expect(tag_auth_simple)).len);

    var tiny: [20]u8 = undefined;
    try testing.expectError(error.NoSpaceLeft, encodeBindRequest(&tiny, 1, "cn=admin", "secret"));
}

test "INTEGER uses the fewest two's-complement bytes" {
    const cases = [_]struct { value: i32, bytes: []const u8 }{
        .{ .value = 0, .bytes = "\x02\x01\x00" },
        .{ .value = 127, .bytes = "\x02\x01\x7f" },
        .{ .value = 128, .bytes = "\x02\x02\x00\x80" },
        .{ .value = 256, .bytes = "\x02\x02\x01\x00" },
        .{ .value = -1, .bytes = "\x02\x01\xff" },
        .{ .value = -129, .bytes = "\x02\x02\xff\x7f" },
        .{ .value = std.math.maxInt(i32), .bytes = "\x02\x04\x7f\xff\xff\xff" },
    };
    for (cases) |c| {
        var buf: [8]u8 = undefined;
        var e = Encoder{ .buf = &buf };
        try e.integer(tag_integer, c.value);
        try testing.expectEqualSlices(u8, c.bytes, buf[0..e.len]);
    }
}

test "SearchRequest carries the equality filter with the raw value" {
    var buf: [request_bytes_max]u8 = undefined;
    const request = try encodeSearchRequest(&buf, 2, "dc=example,dc=org", .sub, "uid", "a*)(x", 5);
    const message = try parseMessage(request);
    try testing.expectEqual(tag_search_request, message.op_tag);
    var r = Reader{ .bytes = message.op };
    try testing.expectEqualSlices(u8, "dc=example,dc=org", try r.expect(tag_octet_string));
    try testing.expectEqual(@as(u32, 2), try decodeUnsigned(try r.expect(tag_enumerated))); // sub
    try testing.expectEqual(@as(u32, 0), try decodeUnsigned(try r.expect(tag_enumerated))); // never deref
    try testing.expectEqual(@as(u32, 2), try decodeUnsigned(try r.expect(tag_integer))); // size limit
    try testing.expectEqual(@as(u32, 5), try decodeUnsigned(try r.expect(tag_integer))); // time limit
    try testing.expectEqualSlices(u8, "\x00", try r.expect(tag_boolean));
    var filter = Reader{ .bytes = try r.expect(tag_filter_equality) };
    try testing.expectEqualSlices(u8, "uid", try filter.expect(tag_octet_string));
    // In BER the assertion value is bytes, not filter text: no escaping.
    try testing.expectEqualSlices(u8, "a*)(x", try filter.expect(tag_octet_string));
    var attributes = Reader{ .bytes = try r.expect(tag_sequence) };
    try testing.expectEqualSlices(u8, "1.1", try attributes.expect(tag_octet_string));
    try testing.expectEqual(r.bytes.len, r.pos);
}

test "BindResponse, SearchResultEntry and SearchResultDone parse" {
    // What slapd sends for a wrong password: invalidCredentials (49).
    const bind_response = "\x30\x0c\x02\x01\x01\x61\x07\x0a\x01\x31\x04\x00\x04\x00";
    const message = try parseMessage(bind_response);
    try testing.expectEqual(@as(i32, 1), message.id);
    try testing.expectEqual(tag_bind_response, message.op_tag);
    try testing.expectEqual(@as(u32, 49), (try parseResult(message.op)).code);

    const entry = "\x30\x2e\x02\x01\x02\x64\x29\x04\x25uid=alice,ou=people,dc=example,dc=org\x30\x00";
    const parsed = try parseMessage(entry);
    try testing.expectEqual(tag_search_result_entry, parsed.op_tag);
    var r = Reader{ .bytes = parsed.op };
    try testing.expectEqualStrings("uid=alice,ou=people,dc=example,dc=org", try r.expect(tag_octet_string));

    // A result with a diagnostic message and a control after the op.
    const done = "\x30\x16\x02\x01\x02\x65\x0a\x0a\x01\x20\x04\x00\x04\x03bad\xa0\x05\x30\x03\x04\x01x";
    const d = try parseMessage(done);
    const result = try parseResult(d.op);
    try testing.expectEqual(@as(u32, 32), result.code);
    try testing.expectEqualStrings("bad", result.diagnostic);
}

test "malformed BER is refused, never read out of bounds" {
    const bad = [_][]const u8{
        "",
        "\x30",
        "\x30\x80\x02\x01\x01\x00\x00", // indefinite length
        "\x30\x85\x00\x00\x00\x00\x01", // five length bytes
        "\x30\x84\x7f\xff\xff\xff", // over the bound
        "\x30\x05\x02\x01\x01\x61", // content shorter than its length
        "\x31\x03\x02\x01\x01", // not a SEQUENCE
        "\x30\x03\x02\x01\x01", // no protocolOp
        "\x30\x06\x02\x01\xff\x61\x01\x00", // negative message ID
        "\x30\x08\x02\x05\x01\x02\x03\x04\x05\x61", // 5-byte message ID
        "\x30\x04\x1f\x81\x01\x00", // multi-byte tag
        "\x30\x03\x02\x01\x01\x00", // trailing byte after the SEQUENCE
    };
    for (bad) |bytes| {
        if (parseMessage(bytes)) |_| {
            std.debug.print("accepted: {any}\n", .{bytes});
            return error.TestUnexpectedResult;
        } else |_| {}
    }
    // A result whose code is missing or of the wrong type.
    try testing.expectError(error.Protocol, parseResult("\x04\x00\x04\x00"));
    try testing.expectError(error.Protocol, parseResult("\x0a\x01\x31\x04\x00"));
    try testing.expectError(error.Protocol, parseResult("\x0a\x00\x04\x00\x04\x00"));
}

test "random bytes never crash the decoder" {
    var prng = std.Random.DefaultPrng.init(0x1da9);
    const random = prng.random();
    var buf: [96]u8 = undefined;
    for (0..20_000) |round| {
        const len = random.uintAtMost(usize, buf.len);
        random.bytes(buf[0..len]);
        // Bias half the inputs towards plausible LDAP so the deeper paths run.
        if (round % 2 == 0 and len >= 2) {
            buf[0] = tag_sequence;
            buf[1] = @intCast(len - 2);
        }
        if (parseMessage(buf[0..len])) |message| {
            _ = parseResult(message.op) catch {};
            var r = Reader{ .bytes = message.op };
            _ = r.expect(tag_octet_string) catch {};
        } else |_| {}
        _ = parseHeader(buf[0..len]) catch {};
    }
}

test "the inbox reassembles split messages and refuses garbage" {
    inbox = .{};
    // One BindResponse in three chunks, then a second message in the same chunk as the tail.
    var io = ScriptIo{ .chunks = &.{ "\x30", "\x0c\x02\x01\x01\x61\x07", "\x0a\x01\x00\x04\x00\x04\x00\x30\x0c\x02\x01\x02\x61\x07\x0a\x01\x31\x04\x00\x04\x00" } };
    const first = try parseMessage(try inbox.next(&io));
    try testing.expectEqual(@as(i32, 1), first.id);
    const second = try parseMessage(try inbox.next(&io));
    try testing.expectEqual(@as(i32, 2), second.id);
    try testing.expectError(error.PeerClosed, inbox.next(&io));

    inbox = .{};
    var garbage = ScriptIo{ .chunks = &.{"HTTP/1.1 400 Bad Request\r\n"} };
    try testing.expectError(error.Protocol, inbox.next(&garbage));

    inbox = .{};
    var huge = ScriptIo{ .chunks = &.{"\x30\x83\x10\x00\x00"} };
    try testing.expectError(error.ResponseTooLarge, inbox.next(&huge));
    inbox = .{};
}

test "RFC 4514 escaping of the username in a DN" {
    var buf: [128]u8 = undefined;
    try testing.expectEqualStrings("alice", try escapeDnValue(&buf, "alice"));
    try testing.expectEqualStrings("a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h\\=i", try escapeDnValue(&buf, "a,b+c\"d\\e<f>g;h=i"));
    try testing.expectEqualStrings("\\ a b\\ ", try escapeDnValue(&buf, " a b "));
    try testing.expectEqualStrings("\\#a#", try escapeDnValue(&buf, "#a#"));
    try testing.expectEqualStrings("a\\00b\\0a", try escapeDnValue(&buf, "a\x00b\n"));
    try testing.expectEqualStrings("\\ ", try escapeDnValue(&buf, " "));
    try testing.expectEqualStrings("jürgen", try escapeDnValue(&buf, "jürgen"));
    var small: [4]u8 = undefined;
    try testing.expectError(error.NoSpaceLeft, escapeDnValue(&small, "a,b,c"));

    try testing.expectEqualStrings("uid=bob\\,ou\\=admins,ou=people,dc=example,dc=org", try expandTemplate(&buf, "uid={username},ou=people,dc=example,dc=org", "bob,ou=admins"));
    try testing.expectEqualStrings("cn=x,mail=x@y", try expandTemplate(&buf, "cn={username},mail={username}@y", "x"));
    try testing.expectError(error.NoSpaceLeft, expandTemplate(&small, "uid={username}", "alice"));
}

test "RFC 4515 escaping of the value in the filter text" {
    var buf: [64]u8 = undefined;
    try testing.expectEqualStrings("alice", try escapeFilterValue(&buf, "alice"));
    try testing.expectEqualStrings("\\2a", try escapeFilterValue(&buf, "*"));
    try testing.expectEqualStrings("a\\29\\28uid=\\2a", try escapeFilterValue(&buf, "a)(uid=*"));
    try testing.expectEqualStrings("\\5c\\00", try escapeFilterValue(&buf, "\\\x00"));
    try testing.expectEqualStrings("(uid=\\2a)", describeFilter(&buf, "uid", "*"));
}

test "config: exactly one mode, and every value checked" {
    try testing.expectEqual(@as(c_int, 0), initResult("{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\"}"));
    try testing.expectEqual(@as(c_int, 0), initResult("{\"server\":\"unix:/run/slapd/ldapi\",\"search_base\":\"dc=x\",\"service_bind_dn\":\"cn=s,dc=x\",\"service_password\":\"p\",\"timeout_ms\":2000,\"on_server_error\":\"reject\",\"search_scope\":\"one\",\"search_attribute\":\"mail\",\"unrelated\":1}"));
    const refused = [_][:0]const u8{
        "not json",
        "{}",
        "{\"server\":\"127.0.0.1:389\",\"bind_dn_template\":\"uid={username}\"}",
        "{\"server\":\"tcp:127.0.0.1:389\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid=x\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username}\",\"search_base\":\"dc=x\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username}\",\"timeout_ms\":0}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username}\",\"timeout_ms\":\"5s\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username}\",\"on_server_error\":\"accept\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username}\",\"service_bind_dn\":\"cn=s\",\"service_password\":\"p\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"search_base\":\"dc=x\",\"service_bind_dn\":\"cn=s\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"search_base\":\"dc=x\",\"service_bind_dn\":\"cn=s\",\"service_password\":\"\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"search_base\":\"dc=x\",\"search_attribute\":\"uid)(x\"}",
        "{\"server\":\"tcp:127.0.0.1:389\",\"search_base\":\"dc=x\",\"search_scope\":\"subtree\"}",
    };
    for (refused) |config| {
        if (initResult(config) != 1) {
            std.debug.print("accepted: {s}\n", .{config});
            return error.TestUnexpectedResult;
        }
    }
}

test "the settings outlive the config text init was given" {
    var text: [128:0]u8 = @splat(0);
    const config = "{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\"}";
    @memcpy(text[0..config.len], config);
    try initForTest(text[0..config.len :0]);
    defer smtp_plugin_deinit();
    @memset(&text, 'X');
    try testing.expectEqualStrings("tcp:127.0.0.1:389", settings.?.server);
    try testing.expectEqualStrings("uid={username},dc=x", settings.?.mode.template);
    // A second init replaces the first without leaking it (testing.allocator checks).
    try initForTest("{\"server\":\"unix:/tmp/ldapi\",\"search_base\":\"dc=x\"}");
    try testing.expectEqualStrings("unix:/tmp/ldapi", settings.?.server);
}

test "an empty password is refused before any connection is tried" {
    try initForTest("{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\"}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .auth_started);
    defer ctx.deinit();
    try ctx.setMetadata("username", "alice");
    try ctx.setMetadata("password", "");
    try testing.expectEqual(result_cancel, smtp_plugin_execute_hook(&ctx));
    try testing.expect(ctx.cancel);
    // No 454: the host's 535 answers a refused login.
    try testing.expect(ctx.getMetadata("smtp_reply_code") == null);
    // Nothing asked to connect (the test host records refused connects).
    try testing.expectEqual(@as(u32, 0), @import("smtp-server").metadata_host.contextStatus(&ctx) & 2);

    var no_password = plugin.HookContext.init(testing.allocator, .auth_started);
    defer no_password.deinit();
    try no_password.setMetadata("username", "alice");
    try testing.expectEqual(result_cancel, smtp_plugin_execute_hook(&no_password));
    try testing.expectEqual(@as(u32, 0), @import("smtp-server").metadata_host.contextStatus(&no_password) & 2);
}

test "a username with control bytes or over the bound is refused without asking" {
    try initForTest("{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\"}");
    defer smtp_plugin_deinit();
    const long_name: [username_bytes_max + 1]u8 = @splat('u');
    const names = [_][]const u8{ "", "ali\nce", "a\x00", "\xff\xfe", &long_name };
    for (names) |name| {
        var ctx = plugin.HookContext.init(testing.allocator, .auth_started);
        defer ctx.deinit();
        try ctx.setMetadata("username", name);
        try ctx.setMetadata("password", "secret");
        try testing.expectEqual(result_cancel, smtp_plugin_execute_hook(&ctx));
        try testing.expect(ctx.getMetadata("smtp_reply_code") == null);
        try testing.expectEqual(@as(u32, 0), @import("smtp-server").metadata_host.contextStatus(&ctx) & 2);
    }
}

test "a directory it may not reach gets 454 by default, 535 with on_server_error reject, never acceptance" {
    try initForTest("{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\"}");
    var ctx = plugin.HookContext.init(testing.allocator, .auth_started);
    defer ctx.deinit();
    @import("smtp-server").metadata_host.storeOf(&ctx).test_now_ms = 1_700_000_000_000;
    try ctx.setMetadata("username", "alice");
    try ctx.setMetadata("password", "secret");
    try testing.expectEqual(result_cancel, smtp_plugin_execute_hook(&ctx));
    try testing.expectEqualStrings("454", ctx.getMetadata("smtp_reply_code").?);
    try testing.expectEqualStrings("4.7.0 Temporary authentication failure", ctx.getMetadata("smtp_reply_text").?);
    try testing.expectEqual(@as(u32, 2), @import("smtp-server").metadata_host.contextStatus(&ctx) & 2);
    smtp_plugin_deinit();

    try initForTest("{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\",\"on_server_error\":\"reject\"}");
    defer smtp_plugin_deinit();
    var rejected = plugin.HookContext.init(testing.allocator, .auth_started);
    defer rejected.deinit();
    @import("smtp-server").metadata_host.storeOf(&rejected).test_now_ms = 1_700_000_000_000;
    try rejected.setMetadata("username", "alice");
    try rejected.setMetadata("password", "secret");
    try testing.expectEqual(result_cancel, smtp_plugin_execute_hook(&rejected));
    try testing.expect(rejected.getMetadata("smtp_reply_code") == null);
}

test "other hooks pass untouched" {
    try initForTest("{\"server\":\"tcp:127.0.0.1:389\",\"bind_dn_template\":\"uid={username},dc=x\"}");
    defer smtp_plugin_deinit();
    var ctx = plugin.HookContext.init(testing.allocator, .auth_completed);
    defer ctx.deinit();
    try ctx.setMetadata("username", "alice");
    try testing.expectEqual(result_continue, smtp_plugin_execute_hook(&ctx));
    try testing.expect(!ctx.cancel);
}

/// LDAPResult replies for the conversation tests.
fn bindResponse(comptime id: u8, comptime code: u8) []const u8 {
    return comptime "\x30\x0c\x02\x01" ++ [_]u8{id} ++ "\x61\x07\x0a\x01" ++ [_]u8{code} ++ "\x04\x00\x04\x00";
}

fn searchDone(comptime id: u8, comptime code: u8) []const u8 {
    return comptime "\x30\x0c\x02\x01" ++ [_]u8{id} ++ "\x65\x07\x0a\x01" ++ [_]u8{code} ++ "\x04\x00\x04\x00";
}

fn searchEntry(comptime id: u8, comptime dn: []const u8) []const u8 {
    return comptime "\x30" ++ [_]u8{@intCast(dn.len + 9)} ++ "\x02\x01" ++ [_]u8{id} ++ "\x64" ++ [_]u8{@intCast(dn.len + 4)} ++ "\x04" ++ [_]u8{@intCast(dn.len)} ++ dn ++ "\x30\x00";
}

/// `text` n times (Zig 0.15 and later have no `**` operator).
fn repeat(comptime text: []const u8, comptime n: usize) []const u8 {
    comptime var out: [text.len * n]u8 = undefined;
    inline for (0..n) |i| @memcpy(out[i * text.len .. (i + 1) * text.len], text);
    const result = out;
    return &result;
}

const template_settings = Settings{ .server = "tcp:127.0.0.1:389", .timeout_ms = 1000, .on_server_error = .tempfail, .mode = .{ .template = "uid={username},ou=people,dc=example,dc=org" } };

fn searchSettings(service: bool) Settings {
    return .{ .server = "tcp:127.0.0.1:389", .timeout_ms = 1000, .on_server_error = .tempfail, .mode = .{ .search = .{
        .base = "dc=example,dc=org",
        .attribute = "uid",
        .scope = .sub,
        .service_dn = if (service) "cn=reader,dc=example,dc=org" else null,
        .service_password = if (service) "readerpw" else null,
    } } };
}

test "template mode: one bind as the escaped DN; 0 accepts, 49 refuses, 51 is a server error" {
    const cases = [_]struct { reply: []const u8, expected: ServerError!Verdict }{
        .{ .reply = bindResponse(1, 0), .expected = .accepted },
        .{ .reply = bindResponse(1, 49), .expected = .{ .refused = .invalid_credentials } },
        .{ .reply = bindResponse(1, 51), .expected = error.ServerRefused },
        .{ .reply = bindResponse(2, 0), .expected = error.Protocol }, // another request's reply
        .{ .reply = "\x30\x0c\x02\x01\x01\x65\x07\x0a\x01\x00\x04\x00\x04\x00", .expected = error.Protocol }, // not a BindResponse
        .{ .reply = "", .expected = error.PeerClosed },
    };
    for (cases) |c| {
        inbox = .{};
        last_message_id = 0;
        var io = ScriptIo{ .chunks = if (c.reply.len == 0) &.{} else &.{c.reply} };
        const got = exchange(&io, template_settings, "bob,x", "hunter2");
        if (c.expected) |verdict| {
            try testing.expectEqual(verdict, try got);
        } else |err| {
            try testing.expectError(err, got);
        }
        var buf: [request_bytes_max]u8 = undefined;
        try testing.expectEqualSlices(u8, try encodeBindRequest(&buf, 1, "uid=bob\\,x,ou=people,dc=example,dc=org", "hunter2"), io.sent[0..io.sent_len]);
    }
    inbox = .{};
}

test "search mode: service bind, search, then bind as the one entry found" {
    inbox = .{};
    last_message_id = 0;
    const dn = "uid=alice,ou=people,dc=example,dc=org";
    var io = ScriptIo{ .chunks = &.{ bindResponse(1, 0), comptime (searchEntry(2, dn) ++ searchDone(2, 0)), bindResponse(3, 0) } };
    try testing.expectEqual(Verdict.accepted, try exchange(&io, searchSettings(true), "alice", "pw"));
    var expected: [3 * request_bytes_max]u8 = undefined;
    var at: usize = 0;
    at += (try encodeBindRequest(expected[at..], 1, "cn=reader,dc=example,dc=org", "readerpw")).len;
    at += (try encodeSearchRequest(expected[at..], 2, "dc=example,dc=org", .sub, "uid", "alice", 1)).len;
    at += (try encodeBindRequest(expected[at..], 3, dn, "pw")).len;
    try testing.expectEqualSlices(u8, expected[0..at], io.sent[0..io.sent_len]);
}

test "search mode: anonymous rebind, and none, several or a failed search never bind the user" {
    const cases = [_]struct { chunks: []const []const u8, expected: ServerError!Verdict }{
        .{ .chunks = &.{ bindResponse(1, 0), searchDone(2, 0) }, .expected = .{ .refused = .unknown_user } },
        .{ .chunks = &.{ bindResponse(1, 0), comptime (searchEntry(2, "uid=a,dc=x") ++ searchEntry(2, "uid=a,ou=o,dc=x") ++ searchDone(2, 0)) }, .expected = .{ .refused = .ambiguous_user } },
        .{ .chunks = &.{ bindResponse(1, 0), comptime (searchEntry(2, "uid=a,dc=x") ++ searchDone(2, 4)) }, .expected = .{ .refused = .ambiguous_user } },
        .{ .chunks = &.{ bindResponse(1, 0), searchDone(2, 32) }, .expected = error.SearchFailed },
        .{ .chunks = &.{bindResponse(1, 49)}, .expected = error.ServiceBindRefused },
        .{ .chunks = &.{ bindResponse(1, 0), comptime (searchEntry(2, "") ++ searchDone(2, 0)) }, .expected = .{ .refused = .unknown_user } },
        // A Notice of Disconnection instead of the search result.
        .{ .chunks = &.{ bindResponse(1, 0), "\x30\x0c\x02\x01\x00\x78\x07\x0a\x01\x34\x04\x00\x04\x00" }, .expected = error.ServerDisconnected },
    };
    for (cases) |c| {
        inbox = .{};
        last_message_id = 0;
        var io = ScriptIo{ .chunks = c.chunks };
        const got = exchange(&io, searchSettings(false), "a", "pw");
        if (c.expected) |verdict| {
            try testing.expectEqual(verdict, try got);
        } else |err| {
            try testing.expectError(err, got);
        }
        // The first request is an anonymous bind; no third request (user bind) was sent.
        var buf: [request_bytes_max]u8 = undefined;
        const anonymous = try encodeBindRequest(&buf, 1, "", "");
        try testing.expectEqualSlices(u8, anonymous, io.sent[0..anonymous.len]);
        try testing.expect(std.mem.indexOf(u8, io.sent[0..io.sent_len], "pw") == null);
    }
    inbox = .{};
}

test "a server that never stops sending entries is cut off" {
    inbox = .{};
    last_message_id = 0;
    const entry = comptime searchEntry(2, "uid=a,dc=x");
    var io = ScriptIo{ .chunks = &.{ bindResponse(1, 0), comptime repeat(entry, search_messages_max + 1) } };
    try testing.expectError(error.Protocol, exchange(&io, searchSettings(false), "a", "pw"));
    inbox = .{};
}
