//! The native half of the Node host: the metadata store behind every hook
//! context handed to a native plugin, and a trampoline that calls the
//! plugin's execute_hook. Keeping the store native means a plugin's
//! getMetadata/setMetadata never cross back into JavaScript; the host pays
//! one koffi call per hook call, plus one more only when the plugin changed
//! something. Built by `npm install` (src/toolchain/build.ts) into build/native/.
const std = @import("std");
const host = @import("smtp-host");
const plugin = host.plugin;

const c_allocator = std.heap.c_allocator;

const host_allocator = plugin.Allocator.wrap(&c_allocator);

/// The allocator passed to every native plugin's init (libc malloc).
export fn smtp_host_allocator() *const plugin.Allocator {
    return &host_allocator;
}

const net = @import("net.zig");
const counters = @import("counters.zig");

/// The clock and network of src/runtime/net.zig, and the counters of
/// src/runtime/counters.zig under the context's namespace (its plugin's
/// name, set only when allow_counters grants them).
const NativeIo = struct {
    pub const nowUnixMs = net.Io.nowUnixMs;
    pub const netConnect = net.Io.netConnect;
    pub const netSend = net.Io.netSend;
    pub const netRecv = net.Io.netRecv;
    pub const netClose = net.Io.netClose;

    pub fn counterIncr(ctx: *plugin.HookContext, key: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32) callconv(.c) i64 {
        const store = host.storeOf(ctx);
        if (store.counter_namespace.len == 0) {
            store.counters_denied = true;
            return @intFromEnum(plugin.CounterStatus.denied);
        }
        return counters.incr(store.counter_namespace, key, key_len, by, window_seconds, .{ .deadline_ms = store.call_deadline_ms }) catch unreachable;
    }
};

/// Every native context's table: the metadata store plus the real clock,
/// the granted network and the counters.
const native_api = host.hostApi(NativeIo);

export fn smtp_host_context_create(key_bytes_max: usize, value_bytes_max: usize, keys_max: usize) ?*plugin.HookContext {
    return host.createContext(c_allocator, .{ .key_bytes_max = key_bytes_max, .value_bytes_max = value_bytes_max, .keys_max = keys_max }, &native_api);
}

/// Destroys a context and closes every connection opened through it.
export fn smtp_host_context_destroy(ctx: *plugin.HookContext) void {
    net.closeOwnedBy(ctx);
    host.destroyContext(ctx);
}

/// Sets the context's allow_connect grants: addresses separated by "\n".
export fn smtp_host_context_set_grants(ctx: *plugin.HookContext, buf: [*]const u8, len: usize) c_int {
    const store = host.storeOf(ctx);
    const copy = c_allocator.dupe(u8, buf[0..len]) catch return @intFromEnum(plugin.Status.no_memory);
    c_allocator.free(store.grants);
    store.grants = copy;
    return @intFromEnum(plugin.Status.ok);
}

/// Grants the context's plugin the counters, under its name (empty: refused).
export fn smtp_host_context_set_counters(ctx: *plugin.HookContext, name: [*]const u8, len: usize) c_int {
    if (len > counters.namespace_bytes_max) return @intFromEnum(plugin.Status.too_large);
    const store = host.storeOf(ctx);
    const copy = c_allocator.dupe(u8, name[0..len]) catch return @intFromEnum(plugin.Status.no_memory);
    c_allocator.free(store.counter_namespace);
    store.counter_namespace = copy;
    return @intFromEnum(plugin.Status.ok);
}

/// Copies the last address refused for want of a grant into `out`; returns its length.
export fn smtp_host_context_denied(ctx: *plugin.HookContext, out: [*]u8, cap: usize) usize {
    const store = host.storeOf(ctx);
    const n = @min(cap, store.denied_len);
    @memcpy(out[0..n], store.denied_address[0..n]);
    return n;
}

// The network functions again, as exports: the sandbox's worker thread calls
// them (through koffi) on behalf of a WebAssembly plugin, with its own context
// holding that plugin's grants and handles.
export fn smtp_host_net_connect(ctx: *plugin.HookContext, address: [*]const u8, address_len: usize, timeout_ms: u32) i32 {
    return net.Io.netConnect(ctx, address, address_len, timeout_ms);
}
export fn smtp_host_net_send(ctx: *plugin.HookContext, handle: i32, data: [*]const u8, len: usize, timeout_ms: u32) i32 {
    return net.Io.netSend(ctx, handle, data, len, timeout_ms);
}
export fn smtp_host_net_recv(ctx: *plugin.HookContext, handle: i32, buf: [*]u8, cap: usize, timeout_ms: u32) i32 {
    return net.Io.netRecv(ctx, handle, buf, cap, timeout_ms);
}
export fn smtp_host_net_close(ctx: *plugin.HookContext, handle: i32) i32 {
    return net.Io.netClose(ctx, handle);
}
/// Closes every connection opened through `ctx`, keeping the context.
export fn smtp_host_net_close_all(ctx: *plugin.HookContext) void {
    net.closeOwnedBy(ctx);
}

// The counters (src/runtime/counters.zig), as exports: the sandbox calls
// counter_incr for a WebAssembly plugin with that plugin's name (after
// checking its grant); the host configures the backend.

/// counter_incr for the plugin named `namespace`; `deadline_ms` (0: none) cuts Redis waits.
export fn smtp_host_counters_incr(namespace: [*]const u8, namespace_len: usize, key: ?[*]const u8, key_len: usize, by: i64, window_seconds: u32, deadline_ms: i64) i64 {
    if (namespace_len == 0 or namespace_len > counters.namespace_bytes_max) return @intFromEnum(plugin.CounterStatus.denied);
    return counters.incr(namespace[0..namespace_len], key, key_len, by, window_seconds, .{ .deadline_ms = deadline_ms }) catch unreachable;
}

/// Sets the backend (see counters.configure): host empty for memory only;
/// `unusable` non-zero: a Redis is configured that cannot be used. Returns
/// 0, or -1 when a value is over its bound or the host is not an IP address.
export fn smtp_host_counters_configure(redis_host: [*]const u8, redis_host_len: usize, port: u16, db: u32, user: [*]const u8, user_len: usize, password: [*]const u8, password_len: usize, timeout_ms: u32, policy: u32, prefix: [*]const u8, prefix_len: usize, unusable: c_int) c_int {
    const which = std.meta.intToEnum(counters.Policy, policy) catch return -1;
    return if (counters.configure(redis_host[0..redis_host_len], port, db, user[0..user_len], password[0..password_len], timeout_ms, which, prefix[0..prefix_len], unusable != 0)) 0 else -1;
}

/// The backend's state: numbers = [keys in memory, Redis configured, Redis
/// down, Redis failures so far]; the last failure's name goes to `error_text`
/// (returns its length).
export fn smtp_host_counters_state(numbers: *[4]i64, error_text: [*]u8, cap: usize) usize {
    const now = counters.state();
    numbers.* = .{ @intCast(now.keys), @intFromBool(now.redis_configured), @intFromBool(now.redis_down), @intCast(now.failures) };
    const text = now.last_error.slice();
    const n = @min(cap, text.len);
    @memcpy(error_text[0..n], text[0..n]);
    return n;
}

/// Loads a hook context without copying: its keys are read from `head` (and
/// the last value from `tail`, the message body) when asked, which the Node
/// host keeps alive and unchanged until the next load of this context.
export fn smtp_host_context_load(ctx: *plugin.HookContext, hook_type: c_int, head: ?[*]const u8, head_len: usize, tail: ?[*]const u8, tail_len: usize) c_int {
    const head_bytes: []const u8 = if (head) |p| p[0..head_len] else &.{};
    const tail_bytes: []const u8 = if (tail) |p| p[0..tail_len] else &.{};
    return @intFromEnum(host.loadEncoded(ctx, hook_type, head_bytes, tail_bytes));
}

/// Sets encoded entries on top of the loaded context (copied): what plugins
/// of another backend changed since the load.
export fn smtp_host_context_apply(ctx: *plugin.HookContext, buf: [*]const u8, len: usize) c_int {
    return @intFromEnum(host.applyEncoded(ctx, buf[0..len]));
}

/// Calls `execute_hook(ctx)` and packs what the host needs into one value
/// (below 2^53, so that JavaScript reads it exactly as a number): bits 0-31
/// the returned code (as u32), then host.contextStatus(): bit 32 the cancel
/// flag, bit 33 a connection refused for want of a grant, bits 34 to 51 the
/// number of keys the plugin set (at most the host's metadata_keys_max,
/// 100000); bit 52 a counter call refused for want of allow_counters.
export fn smtp_host_call_hook(execute_hook: *const fn (*plugin.HookContext) callconv(.c) c_int, ctx: *plugin.HookContext) i64 {
    const code: u32 = @bitCast(execute_hook(ctx));
    const store = host.storeOf(ctx);
    const counters_denied = store.counters_denied;
    store.counters_denied = false;
    const context_status = host.contextStatus(ctx);
    std.debug.assert(context_status >> 2 < 1 << changed_bits);
    return @as(i64, code) | (@as(i64, context_status) << 32) | (@as(i64, @intFromBool(counters_denied)) << 52);
}

/// smtp_host_context_load, then smtp_host_call_hook, in one call from the
/// host: a native plugin's event usually needs both, and each crossing from
/// JavaScript through koffi costs more than the load itself. Returns the
/// packed result as smtp_host_call_hook does (never negative), or, when the
/// load is refused, the load's status negated (the hook is not called).
export fn smtp_host_load_and_call(ctx: *plugin.HookContext, hook_type: c_int, head: ?[*]const u8, head_len: usize, tail: ?[*]const u8, tail_len: usize, execute_hook: *const fn (*plugin.HookContext) callconv(.c) c_int) i64 {
    const status = smtp_host_context_load(ctx, hook_type, head, head_len, tail, tail_len);
    if (status != 0) return -@as(i64, status);
    return smtp_host_call_hook(execute_hook, ctx);
}

/// Bits of the changed-keys count in smtp_host_call_hook's packing.
const changed_bits = 18;

/// What ends a run of smtp_host_call_chain after a call, in its packing: a
/// code other than continue (0), cancel, a connect or a counter refused (the
/// host reports a refusal as that plugin's, from the context's last one).
fn endsChain(result: i64) bool {
    const code: u32 = @truncate(@as(u64, @bitCast(result)));
    const cancel_or_net_denied = (result >> 32) & 0b11;
    const counters_denied = (result >> 52) & 1;
    return code != 0 or cancel_or_net_denied != 0 or counters_denied != 0;
}

/// Calls `execute_hooks[0..n]` on `ctx`, one after another, as consecutive
/// smtp_host_call_hook calls would, in one crossing from the host: a chain of
/// native plugins on one shared context pays the crossing once. Stops after
/// the first call that endsChain; `results[i]` gets call i's packed result.
/// Returns how many calls were made (at least 1 when n > 0).
export fn smtp_host_call_chain(execute_hooks: [*]const *const fn (*plugin.HookContext) callconv(.c) c_int, n: usize, ctx: *plugin.HookContext, results: [*]i64) usize {
    for (0..n) |i| {
        const result = smtp_host_call_hook(execute_hooks[i], ctx);
        results[i] = result;
        if (endsChain(result)) return i + 1;
    }
    return n;
}

/// smtp_host_context_load, then smtp_host_call_chain: the usual first run of
/// an event. Returns the calls made, or, when the load is refused, the load's
/// status negated (no hook is called).
export fn smtp_host_load_and_call_chain(ctx: *plugin.HookContext, hook_type: c_int, head: ?[*]const u8, head_len: usize, tail: ?[*]const u8, tail_len: usize, execute_hooks: [*]const *const fn (*plugin.HookContext) callconv(.c) c_int, n: usize, results: [*]i64) i64 {
    const status = smtp_host_context_load(ctx, hook_type, head, head_len, tail, tail_len);
    if (status != 0) return -@as(i64, status);
    return @intCast(smtp_host_call_chain(execute_hooks, n, ctx, results));
}

/// Makes `ctx` reach the connections of `first` (the same plugin's first
/// context), so a handle a blocking plugin opened in one call of a batch is
/// valid in the next, whichever context that call runs in.
export fn smtp_host_context_share_net(ctx: *plugin.HookContext, first: *plugin.HookContext) void {
    host.storeOf(ctx).net_owner = @intFromPtr(first);
}

/// The states of one call in a batch (smtp_host_call_batch), a u32 that the
/// event loop's thread and the pool thread running the batch both change,
/// each only by compare-and-swap.
const batch_queued: u32 = 0;
const batch_started: u32 = 1;
/// Set by the host before the call started: its session stopped waiting.
const batch_skipped: u32 = 2;
const batch_done: u32 = 3;
/// The most calls one batch runs (the host's BATCH_CALLS_MAX is smaller).
const batch_calls_max = 1024;

/// Runs `execute_hook` on each of `n` loaded contexts, in order, on the
/// calling thread (a pool thread): one thread hand-off for every call of a
/// blocking plugin that queued while its previous batch ran. A call whose
/// state the host set to skipped before it started is not made; each made
/// call's result is packed into `results[i]` as smtp_host_call_hook packs it.
export fn smtp_host_call_batch(execute_hook: *const fn (*plugin.HookContext) callconv(.c) c_int, contexts: [*]const *plugin.HookContext, states: [*]u32, results: [*]i64, n: usize) void {
    std.debug.assert(n <= batch_calls_max);
    for (0..n) |i| {
        if (@cmpxchgStrong(u32, &states[i], batch_queued, batch_started, .acq_rel, .acquire) != null) continue;
        results[i] = smtp_host_call_hook(execute_hook, contexts[i]);
        @atomicStore(u32, &states[i], batch_done, .release);
    }
}

export fn smtp_host_take_changes(ctx: *plugin.HookContext, out: [*]u8, cap: usize) i64 {
    return host.takeChanges(ctx, out[0..cap]);
}

/// Sets when the next hook call's session stops waiting (a milliTimestamp, 0:
/// none): the call's network waits are cut to it (src/runtime/net.zig).
export fn smtp_host_context_set_deadline(ctx: *plugin.HookContext, deadline_ms: i64) void {
    host.storeOf(ctx).call_deadline_ms = deadline_ms;
}

/// Ends the process now, without exit handlers: Node's own exit joins the
/// thread pool, and a native hook stuck on a pool thread would hold it forever.
export fn smtp_host_exit_now(code: c_int) noreturn {
    std.c._exit(code);
}

/// strnlen: the length of a C string, or -1 when no NUL comes within `max`.
export fn smtp_host_strnlen(s: [*]const u8, max: usize) isize {
    var i: usize = 0;
    while (i <= max) : (i += 1) {
        if (s[i] == 0) return @intCast(i);
    }
    return -1;
}

// The host half of process-isolated native plugins (src/isolation/).
comptime {
    _ = @import("isolation_host.zig");
}

test {
    _ = counters;
}
