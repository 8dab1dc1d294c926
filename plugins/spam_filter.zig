//! spam-filter: the seed guide's keyword spam filter, done properly.
//!
//! Differences from the guide's listing (docs/plugins/spam_filter.md):
//! - the config is parsed (every key of the guide's plugins/spam_filter.json)
//!   instead of being ignored; a key naming a feature this filter does not
//!   have (`auto_learn`, `bayesian_filtering`) is refused when true;
//! - keywords match case-insensitively, so "Click here" counts;
//! - a whitelisted sender domain is never scored;
//! - spam is refused with a 554 the plugin chooses, or quarantined;
//! - the score is formatted into a stack buffer, so nothing leaks per message;
//! - the plugin declares that it handles message_filtered only.
const std = @import("std");
const plugin = @import("smtp-server").plugin;

const default_keywords = [_][]const u8{
    "viagra",       "casino",  "winner",  "free money", "click here",
    "limited time", "act now", "congratulations",
};

/// The guide's plugins/spam_filter.json. Keys not listed are ignored.
const Config = struct {
    /// The guide's file has it; turning the plugin off belongs to the host
    /// (`enabled` in its [[plugins.plugin]] entry), so only true is accepted.
    enabled: bool = true,
    spam_threshold: f64 = 5.0,
    blacklist_keywords: ?[]const []const u8 = null,
    /// Sender domains never scored: each matches itself and its subdomains.
    whitelist: []const []const u8 = &.{},
    /// false: spam is refused with 554; true: accepted and quarantined.
    quarantine: bool = false,
    /// A folder inside the host's [storage] quarantine_dir (relative to it).
    quarantine_path: ?[]const u8 = null,
    /// Features the guide names but this filter does not have.
    auto_learn: bool = false,
    bayesian_filtering: bool = false,
};

/// Keywords beyond this are refused at init: found keywords are a u64 bitmask.
const keywords_max = 64;
/// Whitelist entries beyond this are refused at init: each is tried per message.
const whitelist_max = 256;
/// The longest domain name DNS allows (RFC 1035, in text form).
const domain_bytes_max = 253;
/// quarantine_path longer than this is refused at init (PATH_MAX is 4096).
const quarantine_path_bytes_max = 1024;

const reply_code = "554";
const reply_text = "5.7.1 Message refused as spam";

var allocator: std.mem.Allocator = undefined;
var config_parsed: ?std.json.Parsed(Config) = null;
var spam_threshold: f64 = 5.0;
var keywords: []const []const u8 = &default_keywords;
var whitelist: []const []const u8 = &.{};
var quarantine: bool = false;
var quarantine_path: ?[]const u8 = null;
/// For each byte, the keywords whose first letter it is (ignoring case), so
/// one pass over the body tries only the keywords that can start there.
var first_letter: [256]u64 = firstLetters(&default_keywords);

fn firstLetters(list: []const []const u8) [256]u64 {
    var table: [256]u64 = @splat(0);
    for (list, 0..) |keyword, k| {
        if (keyword.len == 0) continue;
        const bit = @as(u64, 1) << @intCast(k);
        table[std.ascii.toLower(keyword[0])] |= bit;
        table[std.ascii.toUpper(keyword[0])] |= bit;
    }
    return table;
}

const metadata = plugin.PluginMetadata{
    .name = "spam-filter",
    .version = "1.2.0",
    .author = "SMTP Team",
    .description = "Basic spam filtering using keyword analysis",
    .license = "MIT",
    .dependencies = &.{},
    .min_server_version = "0.28.0",
    .max_server_version = null,
    .handled_hooks = plugin.hookMask(&.{.message_filtered}),
};

/// A whitelist entry is a domain name: letters, digits, '-' and '.', no
/// empty label, at most 253 bytes. Anything else ("*.example.com",
/// "user@example.com", "") is refused rather than silently never matching.
pub fn isDomain(name: []const u8) bool {
    if (name.len == 0 or name.len > domain_bytes_max) return false;
    if (name[0] == '.' or name[name.len - 1] == '.') return false;
    for (name, 0..) |byte, i| {
        const ok = std.ascii.isAlphanumeric(byte) or byte == '-' or (byte == '.' and name[i - 1] != '.');
        if (!ok) return false;
    }
    return true;
}

/// Why `config` cannot be used, or null when it can.
fn configProblem(config: Config) ?[]const u8 {
    if (!config.enabled) return "enabled must be true (to turn the filter off set enabled = false in its [[plugins.plugin]] entry)";
    if (!(config.spam_threshold > 0)) return "spam_threshold must be > 0";
    const list: []const []const u8 = config.blacklist_keywords orelse &default_keywords;
    if (list.len > keywords_max) return "at most 64 blacklist_keywords";
    if (config.whitelist.len > whitelist_max) return "at most 256 whitelist domains";
    for (config.whitelist) |domain| {
        if (!isDomain(domain)) return "whitelist entries must be domain names (letters, digits, '-' and '.', e.g. \"example.com\")";
    }
    if (config.quarantine_path) |path| {
        if (!config.quarantine) return "quarantine_path is set but quarantine is false (set quarantine to true, or remove quarantine_path)";
        if (path.len == 0 or path.len > quarantine_path_bytes_max or std.mem.indexOfScalar(u8, path, 0) != null) return "quarantine_path must be 1 to 1024 bytes without NUL";
    }
    if (config.auto_learn) return "auto_learn is not supported by this filter (set it to false or remove it)";
    if (config.bayesian_filtering) return "bayesian_filtering is not supported by this filter (set it to false or remove it)";
    return null;
}

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    allocator = host_allocator.allocator();
    const config_str = std.mem.span(config);
    const text = if (config_str.len == 0) "{}" else config_str;
    // alloc_always: the strings kept (keywords, whitelist, quarantine_path)
    // must be copies, because the config text belongs to the host and is
    // gone once init returns (in the sandbox its memory is reused at once).
    const parsed = std.json.parseFromSlice(Config, allocator, text, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| {
        std.debug.print("[spam-filter] Invalid config: {s}\n", .{@errorName(err)});
        return 1;
    };
    if (configProblem(parsed.value)) |problem| {
        std.debug.print("[spam-filter] Invalid config: {s}\n", .{problem});
        parsed.deinit();
        return 1;
    }
    if (config_parsed) |previous| previous.deinit();
    config_parsed = parsed;
    spam_threshold = parsed.value.spam_threshold;
    keywords = parsed.value.blacklist_keywords orelse &default_keywords;
    first_letter = firstLetters(keywords);
    whitelist = parsed.value.whitelist;
    quarantine = parsed.value.quarantine;
    quarantine_path = parsed.value.quarantine_path;
    std.debug.print("[spam-filter] Initialized with threshold: {d}, {d} whitelisted domains, spam is {s}\n", .{
        spam_threshold, whitelist.len, if (quarantine) "quarantined" else "refused",
    });
    return 0;
}

export fn smtp_plugin_deinit() callconv(.c) void {
    if (config_parsed) |parsed| parsed.deinit();
    config_parsed = null;
    keywords = &default_keywords;
    first_letter = firstLetters(&default_keywords);
    spam_threshold = 5.0;
    whitelist = &.{};
    quarantine = false;
    quarantine_path = null;
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

/// One point per keyword found in the body (ASCII case-insensitive), in a
/// single pass: at each byte only the keywords starting with that letter are
/// compared, and each keyword counts once.
pub fn score(body: []const u8) f64 {
    var found: u64 = 0;
    for (body, 0..) |byte, i| {
        var candidates = first_letter[byte] & ~found;
        while (candidates != 0) {
            const k = @ctz(candidates);
            candidates &= candidates - 1;
            const keyword = keywords[k];
            if (i + keyword.len <= body.len and std.ascii.eqlIgnoreCase(body[i .. i + keyword.len], keyword)) {
                found |= @as(u64, 1) << @intCast(k);
            }
        }
    }
    return @floatFromInt(@popCount(found));
}

/// Whether `domain` is `listed` or one of its subdomains (ASCII case-insensitive):
/// "example.com" covers "mail.example.com" but not "badexample.com".
pub fn domainCovers(listed: []const u8, domain: []const u8) bool {
    if (domain.len < listed.len) return false;
    const tail = domain[domain.len - listed.len ..];
    if (!std.ascii.eqlIgnoreCase(tail, listed)) return false;
    return domain.len == listed.len or domain[domain.len - listed.len - 1] == '.';
}

/// The envelope sender's domain: `sender_domain` (which the host sets at
/// every message stage), else what follows the last '@' of `sender`.
fn senderDomain(context: *const plugin.HookContext) ?[]const u8 {
    if (context.getMetadata("sender_domain")) |domain| return domain;
    const sender = context.getMetadata("sender") orelse return null;
    const at = std.mem.lastIndexOfScalar(u8, sender, '@') orelse return null;
    return sender[at + 1 ..];
}

pub fn isWhitelisted(domain: []const u8) bool {
    if (domain.len == 0) return false;
    for (whitelist) |listed| {
        if (domainCovers(listed, domain)) return true;
    }
    return false;
}

fn filterMessage(context: *plugin.HookContext) c_int {
    if (senderDomain(context)) |domain| {
        if (isWhitelisted(domain)) {
            context.setMetadata("spam_whitelisted", "true") catch {};
            return 0;
        }
    }
    const body = context.getMetadata("message_body") orelse return 0;
    const total = score(body);
    var buf: [32]u8 = undefined;
    const text = std.fmt.bufPrint(&buf, "{d}", .{total}) catch unreachable;
    context.setMetadata("spam_score", text) catch return 0;
    if (total < spam_threshold) return 0;
    // From here the verdict stands even if a key cannot be set: without the
    // reply keys the host still refuses (its default 554 for this stage).
    context.setMetadata("is_spam", "true") catch {};
    if (quarantine) {
        if (quarantine_path) |path| context.setMetadata("quarantine_path", path) catch {};
        context.setMetadata("quarantine", "true") catch {};
        std.debug.print("[spam-filter] Message quarantined as spam (score: {d})\n", .{total});
    } else {
        context.setMetadata("smtp_reply_code", reply_code) catch {};
        context.setMetadata("smtp_reply_text", reply_text) catch {};
        std.debug.print("[spam-filter] Message refused as spam (score: {d})\n", .{total});
    }
    return 1; // stop: no later plugin runs; the host refuses or quarantines
}

const testing = std.testing;

/// The plugin keeps the allocator init was given until deinit, so the host
/// allocator it points into must outlive the helper that calls init.
var test_host: plugin.Allocator = undefined;

fn testInit(config: [:0]const u8) !void {
    test_host = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&test_host, config));
}

fn expectRefused(config: [:0]const u8) !void {
    test_host = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 1), smtp_plugin_init(&test_host, config));
}

// The guide's unit test, made to agree with the code: its body holds three
// keywords (viagra, click here, free money), so it is spam at threshold 3.
test "spam detection" {
    try testInit("{\"spam_threshold\": 3.0}");
    defer smtp_plugin_deinit();

    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();

    const spam_body = "Buy viagra now! Click here for free money!";
    try context.setMetadata("message_body", spam_body);

    const result = smtp_plugin_execute_hook(&context);

    try testing.expectEqual(@as(c_int, 1), result); // Should block
    const is_spam = context.getMetadata("is_spam");
    try testing.expect(is_spam != null);
    try testing.expectEqualStrings("3", context.getMetadata("spam_score").?);
    try testing.expectEqualStrings("554", context.getMetadata("smtp_reply_code").?);
    try testing.expectEqualStrings("5.7.1 Message refused as spam", context.getMetadata("smtp_reply_text").?);
    try testing.expect(context.getMetadata("quarantine") == null);
}

test "the guide's body is not spam at the default threshold of 5" {
    try testInit("{}");
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "Buy viagra now! Click here for free money!");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expect(context.getMetadata("is_spam") == null);
    try testing.expect(context.getMetadata("smtp_reply_code") == null);
}

test "configured keywords replace the defaults and other hooks pass" {
    try testInit("{\"spam_threshold\": 1, \"blacklist_keywords\": [\"LOTTERY\"], \"unknown_key\": [1, 2]}");
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "you won the lottery");
    try testing.expectEqual(@as(c_int, 1), smtp_plugin_execute_hook(&context));
    var other = plugin.HookContext.init(testing.allocator, .message_received);
    defer other.deinit();
    try other.setMetadata("message_body", "you won the lottery");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&other));
}

test "a malformed config refuses init" {
    try expectRefused("{\"spam_threshold\": \"high\"}");
    try expectRefused("{\"spam_threshold\": 0}");
    try expectRefused("{\"whitelist\": \"example.com\"}");
    try expectRefused("{\"quarantine\": \"yes\"}");
}

test "a whitelisted sender domain and its subdomains are never scored" {
    try testInit("{\"spam_threshold\": 1, \"whitelist\": [\"Example.COM\", \"trusted.example\"]}");
    defer smtp_plugin_deinit();
    const spam = "viagra casino winner free money click here act now";
    for ([_][]const u8{ "example.com", "mail.EXAMPLE.com", "a.b.example.com", "trusted.example" }) |domain| {
        var context = plugin.HookContext.init(testing.allocator, .message_filtered);
        defer context.deinit();
        try context.setMetadata("message_body", spam);
        try context.setMetadata("sender_domain", domain);
        try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
        try testing.expectEqualStrings("true", context.getMetadata("spam_whitelisted").?);
        try testing.expect(context.getMetadata("spam_score") == null);
        try testing.expect(context.getMetadata("is_spam") == null);
    }
    // A lookalike is scored, and so is a domain the list only ends with.
    for ([_][]const u8{ "badexample.com", "example.com.evil.test", "com", "" }) |domain| {
        var context = plugin.HookContext.init(testing.allocator, .message_filtered);
        defer context.deinit();
        try context.setMetadata("message_body", spam);
        if (domain.len > 0) try context.setMetadata("sender_domain", domain);
        try testing.expectEqual(@as(c_int, 1), smtp_plugin_execute_hook(&context));
        try testing.expect(context.getMetadata("spam_whitelisted") == null);
    }
}

test "without sender_domain the domain comes from sender" {
    try testInit("{\"spam_threshold\": 1, \"whitelist\": [\"example.com\"]}");
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "casino");
    try context.setMetadata("sender", "odd@name@sub.example.com");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expectEqualStrings("true", context.getMetadata("spam_whitelisted").?);
}

test "whitelist entries must be domain names" {
    try testing.expect(isDomain("example.com"));
    try testing.expect(isDomain("xn--bcher-kva.example"));
    try testing.expect(isDomain("localhost"));
    for ([_][:0]const u8{
        "{\"whitelist\": [\"\"]}",
        "{\"whitelist\": [\"*.example.com\"]}",
        "{\"whitelist\": [\"user@example.com\"]}",
        "{\"whitelist\": [\".example.com\"]}",
        "{\"whitelist\": [\"example..com\"]}",
        "{\"whitelist\": [\"example.com.\"]}",
        "{\"whitelist\": [\"exa mple.com\"]}",
        "{\"whitelist\": [7]}",
    }) |config| try expectRefused(config);
    var long: [domain_bytes_max + 1]u8 = @splat('a');
    try testing.expect(isDomain(long[0..domain_bytes_max]));
    try testing.expect(!isDomain(&long));
}

test "quarantine: spam is kept, with the configured folder, instead of refused" {
    try testInit("{\"spam_threshold\": 2, \"quarantine\": true, \"quarantine_path\": \"spam-filter\"}");
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "casino winner");
    try testing.expectEqual(@as(c_int, 1), smtp_plugin_execute_hook(&context));
    try testing.expectEqualStrings("true", context.getMetadata("quarantine").?);
    try testing.expectEqualStrings("spam-filter", context.getMetadata("quarantine_path").?);
    try testing.expectEqualStrings("true", context.getMetadata("is_spam").?);
    try testing.expect(context.getMetadata("smtp_reply_code") == null);

    // A clean message is neither quarantined nor refused.
    var clean = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer clean.deinit();
    try clean.setMetadata("message_body", "lunch at noon?");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&clean));
    try testing.expect(clean.getMetadata("quarantine") == null);
}

test "quarantine without quarantine_path leaves the folder to the host" {
    try testInit("{\"spam_threshold\": 1, \"quarantine\": true}");
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "casino");
    try testing.expectEqual(@as(c_int, 1), smtp_plugin_execute_hook(&context));
    try testing.expectEqualStrings("true", context.getMetadata("quarantine").?);
    try testing.expect(context.getMetadata("quarantine_path") == null);
}

test "the plugin passes quarantine_path as given: the host decides where it may write" {
    // An absolute path may well lie inside the host's quarantine_dir, so the
    // plugin cannot judge it; the host refuses it when it does not.
    try testInit("{\"spam_threshold\": 1, \"quarantine\": true, \"quarantine_path\": \"/etc\"}");
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "casino");
    try testing.expectEqual(@as(c_int, 1), smtp_plugin_execute_hook(&context));
    try testing.expectEqualStrings("/etc", context.getMetadata("quarantine_path").?);
}

test "quarantine_path needs quarantine, and must be a sensible length" {
    try expectRefused("{\"quarantine_path\": \"spam\"}");
    try expectRefused("{\"quarantine\": false, \"quarantine_path\": \"spam\"}");
    try expectRefused("{\"quarantine\": true, \"quarantine_path\": \"\"}");
    try expectRefused("{\"quarantine\": true, \"quarantine_path\": \"a\\u0000b\"}");
    const prefix = "{\"quarantine\": true, \"quarantine_path\": \"";
    const suffix = "\"}";
    var config: [prefix.len + quarantine_path_bytes_max + 1 + suffix.len:0]u8 = undefined;
    @memcpy(config[0..prefix.len], prefix);
    @memset(config[prefix.len .. config.len - suffix.len], 'a');
    @memcpy(config[config.len - suffix.len ..], suffix);
    config[config.len] = 0;
    try expectRefused(&config);
    // One byte shorter is accepted.
    config[config.len - suffix.len - 1] = '"';
    config[config.len - suffix.len] = '}';
    config[config.len - 1] = ' ';
    try testInit(&config);
    smtp_plugin_deinit();
}

test "features the guide names but this filter lacks are refused when turned on" {
    try expectRefused("{\"auto_learn\": true}");
    try expectRefused("{\"bayesian_filtering\": true}");
    try expectRefused("{\"enabled\": false}");
    // Turned off (or on, for enabled) they are accepted: the guide's file loads.
    try testInit("{\"enabled\": true, \"auto_learn\": false, \"bayesian_filtering\": false}");
    smtp_plugin_deinit();
}

test "the repository's plugins/spam_filter.json is a valid config" {
    try testInit(@embedFile("spam_filter.json"));
    defer smtp_plugin_deinit();
    try testing.expect(spam_threshold == 5.0);
    try testing.expectEqual(@as(usize, default_keywords.len), keywords.len);
}

test "the config text may be overwritten once init returns" {
    var text = "{\"spam_threshold\": 1, \"whitelist\": [\"example.com\"], \"blacklist_keywords\": [\"lottery\"], \"quarantine\": true, \"quarantine_path\": \"spam\"}".*;
    try testInit(&text);
    defer smtp_plugin_deinit();
    @memset(text[0 .. text.len - 1], 'x');
    try testing.expectEqualStrings("example.com", whitelist[0]);
    try testing.expectEqualStrings("lottery", keywords[0]);
    try testing.expectEqualStrings("spam", quarantine_path.?);
}

test "a second init replaces the first config without leaking it" {
    try testInit("{\"spam_threshold\": 1, \"whitelist\": [\"example.com\"]}");
    try testInit("{\"spam_threshold\": 2}");
    defer smtp_plugin_deinit();
    try testing.expectEqual(@as(usize, 0), whitelist.len);
    try testing.expect(spam_threshold == 2);
}
