//! spam-filter: the seed guide's keyword spam filter, done properly.
//!
//! Differences from the guide's listing (docs/plugins/spam_filter.md):
//! - the config is parsed (`spam_threshold`, `blacklist_keywords`) instead of
//!   being ignored;
//! - keywords match case-insensitively, so "Click here" counts;
//! - the score is formatted into a stack buffer, so nothing leaks per message;
//! - the plugin declares that it handles message_filtered only.
const std = @import("std");
const plugin = @import("smtp-server").plugin;

const default_keywords = [_][]const u8{
    "viagra",       "casino",  "winner",  "free money", "click here",
    "limited time", "act now", "congratulations",
};

/// Config keys; keys the filter does not use (quarantine, whitelist, ...)
/// are ignored here and read by the host or by later versions.
const Config = struct {
    spam_threshold: f64 = 5.0,
    blacklist_keywords: ?[]const []const u8 = null,
};

/// Keywords beyond this are refused at init: found keywords are a u64 bitmask.
const keywords_max = 64;

var allocator: std.mem.Allocator = undefined;
var config_parsed: ?std.json.Parsed(Config) = null;
var spam_threshold: f64 = 5.0;
var keywords: []const []const u8 = &default_keywords;
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
    .version = "1.1.0",
    .author = "SMTP Team",
    .description = "Basic spam filtering using keyword analysis",
    .license = "MIT",
    .dependencies = &.{},
    .min_server_version = "0.28.0",
    .max_server_version = null,
    .handled_hooks = plugin.hookMask(&.{.message_filtered}),
};

export fn smtp_plugin_init(host_allocator: *const plugin.Allocator, config: [*:0]const u8) callconv(.c) c_int {
    allocator = host_allocator.allocator();
    const config_str = std.mem.span(config);
    const text = if (config_str.len == 0) "{}" else config_str;
    const parsed = std.json.parseFromSlice(Config, allocator, text, .{ .ignore_unknown_fields = true }) catch |err| {
        std.debug.print("[spam-filter] Invalid config: {s}\n", .{@errorName(err)});
        return 1;
    };
    if (!(parsed.value.spam_threshold > 0)) {
        std.debug.print("[spam-filter] Invalid config: spam_threshold must be > 0\n", .{});
        parsed.deinit();
        return 1;
    }
    const list = parsed.value.blacklist_keywords orelse &default_keywords;
    if (list.len > keywords_max) {
        std.debug.print("[spam-filter] Invalid config: at most {d} blacklist_keywords\n", .{keywords_max});
        parsed.deinit();
        return 1;
    }
    config_parsed = parsed;
    spam_threshold = parsed.value.spam_threshold;
    keywords = list;
    first_letter = firstLetters(list);
    std.debug.print("[spam-filter] Initialized with threshold: {d}\n", .{spam_threshold});
    return 0;
}

export fn smtp_plugin_deinit() callconv(.c) void {
    if (config_parsed) |parsed| parsed.deinit();
    config_parsed = null;
    keywords = &default_keywords;
    first_letter = firstLetters(&default_keywords);
    spam_threshold = 5.0;
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

fn filterMessage(context: *plugin.HookContext) c_int {
    const body = context.getMetadata("message_body") orelse return 0;
    const total = score(body);
    var buf: [32]u8 = undefined;
    const text = std.fmt.bufPrint(&buf, "{d}", .{total}) catch unreachable;
    context.setMetadata("spam_score", text) catch return 0;
    if (total < spam_threshold) return 0;
    context.setMetadata("is_spam", "true") catch return 0;
    std.debug.print("[spam-filter] Message flagged as spam (score: {d})\n", .{total});
    return 1; // stop: no later plugin runs, the message is refused
}

// The guide's unit test, made to agree with the code: its body holds three
// keywords (viagra, click here, free money), so it is spam at threshold 3.
test "spam detection" {
    const testing = std.testing;
    const host = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host, "{\"spam_threshold\": 3.0}"));
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
}

test "the guide's body is not spam at the default threshold of 5" {
    const testing = std.testing;
    const host = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host, "{}"));
    defer smtp_plugin_deinit();
    var context = plugin.HookContext.init(testing.allocator, .message_filtered);
    defer context.deinit();
    try context.setMetadata("message_body", "Buy viagra now! Click here for free money!");
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_execute_hook(&context));
    try testing.expect(context.getMetadata("is_spam") == null);
}

test "configured keywords replace the defaults and other hooks pass" {
    const testing = std.testing;
    const host = plugin.Allocator.wrap(&testing.allocator);
    try testing.expectEqual(@as(c_int, 0), smtp_plugin_init(&host, "{\"spam_threshold\": 1, \"blacklist_keywords\": [\"LOTTERY\"], \"quarantine\": true}"));
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
    const host = plugin.Allocator.wrap(&std.testing.allocator);
    try std.testing.expectEqual(@as(c_int, 1), smtp_plugin_init(&host, "{\"spam_threshold\": \"high\"}"));
    try std.testing.expectEqual(@as(c_int, 1), smtp_plugin_init(&host, "{\"spam_threshold\": 0}"));
}
