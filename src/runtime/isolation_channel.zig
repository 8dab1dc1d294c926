//! The channel between the Node host and a process-isolated native plugin
//! (src/runtime/plugin_child.zig): one shared memory file (a memfd), mapped
//! by both processes. Its first page is a `Header`: the limits the host
//! fixed before the child started, then one cache line the host writes
//! (a request), one the child writes (a reply), and the two "asleep" flags.
//! Behind the header lie the request area (the hook context, in the wire
//! format of abi/zig/metadata_host.zig, which the child loads in place) and
//! the reply area (the keys the plugin changed, in the same format).
//!
//! Signalling: each side bumps a sequence word (`request_seq`, `reply_seq`)
//! after writing its fields, and the other side spins on it for a short
//! while before sleeping on it with a (shared, not private) futex. A side
//! about to sleep raises its flag first and checks the word again; the
//! writer calls FUTEX_WAKE only when it sees the flag, so a call between two
//! busy processes makes no system call at all.
//!
//! The host trusts nothing in this memory: every length the child writes is
//! checked against the area it claims to lie in.
const std = @import("std");
const linux = std.os.linux;

pub const magic: u32 = 0x534d_5450; // "PTMS": smtp, little endian
pub const layout_version: u32 = 1;
pub const header_bytes: usize = 4096;

/// What the host asks of the child (Header.op).
pub const Op = enum(u32) {
    none = 0,
    /// dlopen the plugin, check its ABI marker, read its metadata, confine.
    load = 1,
    /// init(allocator, config): the config text, NUL-terminated, is in the request area.
    init = 2,
    enable = 3,
    disable = 4,
    deinit = 5,
    /// execute_hook: the context's wire bytes are in the request area.
    hook = 6,
    /// The answer to the child's net_connect request (Header.net_status;
    /// a connected socket follows on the socketpair when it is >= 0).
    net_reply = 7,
    /// The answer to the child's counter_incr request (Header.counter_result).
    counter_reply = 8,
    _,
};

/// What the child published (Header.kind).
pub const Kind = enum(u32) {
    none = 0,
    /// The op is finished: code, status, reply_len and fault hold the answer.
    done = 1,
    /// The plugin called net_connect: the address is in net_address.
    net_connect = 2,
    /// The plugin called counter_incr: the key is in net_address (its
    /// length in net_address_len), with counter_by and counter_window_seconds.
    counter = 3,
    _,
};

/// Why an op failed inside the child, outside the plugin's own return code.
/// The reply area holds a text for the host's message where noted.
pub const Fault = enum(u32) {
    none = 0,
    /// dlopen refused the library (text: dlerror).
    load_dlopen = 1,
    /// No smtp_plugin_abi_version export.
    load_no_marker = 2,
    /// The marker names an ABI this host does not run (abi_version holds it).
    load_abi = 3,
    /// Required exports are missing (text: their names).
    load_missing_export = 4,
    /// get_metadata returned NULL.
    load_null_metadata = 5,
    /// The context in the request area was refused by the store (code: the smtp_status).
    context_refused = 6,
    /// The plugin's changes do not fit the reply area (reply_len: minus the bytes needed).
    changes_too_large = 7,
    /// The child could not set up its confinement (text: what failed).
    confine = 8,
    /// An op the child does not know, or one out of order.
    bad_request = 9,
    /// The plugin file could not be read (text: why).
    load_read = 10,
    _,
};

/// Header.status bits after a hook.
pub const status_cancel: u32 = 1 << 0;

/// The first page of the channel. Offsets are part of the protocol with
/// src/isolation/channel.ts (test/isolation/channel.test.ts compares them).
pub const Header = extern struct {
    magic: u32,
    layout_version: u32,
    header_bytes: u32,
    reserved0: u32 = 0,
    /// Where the areas lie, from the start of the mapping, and their sizes.
    request_offset: u64,
    request_bytes_max: u64,
    reply_offset: u64,
    reply_bytes_max: u64,
    /// The plugin's metadata limits (its store refuses what exceeds them).
    key_bytes_max: u64,
    value_bytes_max: u64,
    keys_max: u64,
    /// Address space the plugin may take beyond the child's own (RLIMIT_AS).
    memory_bytes_max: u64,
    /// How long the child spins for the next request before sleeping.
    child_spin_ns: u64,
    reserved1: [5]u64 = @splat(0),

    // --- offset 128: written by the host ---------------------------------
    /// Bumped by the host after writing op and its arguments (futex word).
    request_seq: u32 = 0,
    op: Op = .none,
    hook_type: i32 = 0,
    /// The answer to a net_connect: a handle follows (>= 0), or an smtp_net_status.
    net_status: i32 = 0,
    /// Bytes of the request area in use.
    request_len: u64 = 0,
    /// The answer to a counter_incr: a count, or an smtp_counter_status.
    counter_result: i64 = 0,
    reserved2: [4]u64 = @splat(0),

    // --- offset 192: the flags of a side about to sleep ------------------
    child_sleeping: u32 = 0,
    host_sleeping: u32 = 0,
    reserved3: [7]u64 = @splat(0),

    // --- offset 256: written by the child --------------------------------
    /// Bumped by the child after writing its answer (futex word).
    reply_seq: u32 = 0,
    kind: Kind = .none,
    /// The plugin's return code (lifecycle calls and hooks).
    code: i32 = 0,
    status: u32 = 0,
    /// Bytes of the reply area in use; negative with changes_too_large.
    reply_len: i64 = 0,
    fault: Fault = .none,
    /// The plugin's smtp_plugin_abi_version (after load).
    abi_version: u32 = 0,
    /// net_connect's timeout and the length of net_address.
    net_timeout_ms: u32 = 0,
    net_address_len: u32 = 0,
    /// The Landlock ABI the child confined itself with (0: none available).
    landlock_abi: i32 = 0,
    /// counter_incr's window and increment (its key is in net_address).
    counter_window_seconds: u32 = 0,
    reserved4: [2]u32 = @splat(0),
    counter_by: i64 = 0,
    // --- offset 320 ------------------------------------------------------
    /// The address net_connect asked for, or the key of counter_incr.
    net_address: [net_address_bytes_max]u8 = @splat(0),
    reserved6: [header_bytes - 576]u8 = @splat(0),
};

/// The longest address net_connect forwards (net.zig's form: "unix:" + a 107-byte path fits).
pub const net_address_bytes_max = 256;

comptime {
    std.debug.assert(@sizeOf(Header) == header_bytes);
    std.debug.assert(@offsetOf(Header, "request_seq") == 128);
    std.debug.assert(@offsetOf(Header, "child_sleeping") == 192);
    std.debug.assert(@offsetOf(Header, "reply_seq") == 256);
    std.debug.assert(@offsetOf(Header, "net_address") == 320);
    // A counter key travels in net_address.
    std.debug.assert(net_address_bytes_max >= @import("smtp-host").plugin.counter_key_bytes_max);
}

/// The offsets src/isolation/channel.ts reads, in the order of `offsets_names`.
pub const offsets = [_]u32{
    @offsetOf(Header, "request_offset"), @offsetOf(Header, "request_bytes_max"),
    @offsetOf(Header, "reply_offset"),   @offsetOf(Header, "reply_bytes_max"),
    @offsetOf(Header, "request_seq"),    @offsetOf(Header, "op"),
    @offsetOf(Header, "hook_type"),      @offsetOf(Header, "request_len"),
    @offsetOf(Header, "reply_seq"),      @offsetOf(Header, "kind"),
    @offsetOf(Header, "code"),           @offsetOf(Header, "status"),
    @offsetOf(Header, "reply_len"),      @offsetOf(Header, "fault"),
    @offsetOf(Header, "abi_version"),    @offsetOf(Header, "landlock_abi"),
};

/// Rounds up to the page size.
pub fn pageAlign(bytes: u64) u64 {
    return std.mem.alignForward(u64, bytes, std.heap.page_size_min);
}

/// Monotonic nanoseconds. Through libc, whose clock_gettime is the vDSO's
/// (no system call): std.os.linux.clock_gettime finds the vDSO only when
/// Zig's own start code ran, which it does neither in the runtime library
/// (loaded by Node) nor in the child (started by libc), and then makes the
/// system call every time.
pub fn nowNs() u64 {
    const ts = std.posix.clock_gettime(.MONOTONIC) catch return 0;
    return @as(u64, @intCast(ts.sec)) * std.time.ns_per_s + @as(u64, @intCast(ts.nsec));
}

/// FUTEX_WAIT on a word of shared memory (not FUTEX_PRIVATE: the other side
/// is another process). Returns when woken, when the word is not `expected`,
/// on a signal, or after `timeout_ns` (null: no timeout).
pub fn futexWait(word: *const u32, expected: u32, timeout_ns: ?u64) void {
    var ts: linux.timespec = undefined;
    if (timeout_ns) |ns| {
        ts = .{ .sec = @intCast(ns / std.time.ns_per_s), .nsec = @intCast(ns % std.time.ns_per_s) };
    }
    _ = linux.futex_wait(@ptrCast(word), linux.FUTEX.WAIT, @bitCast(expected), if (timeout_ns != null) &ts else null);
}

pub fn futexWake(word: *const u32) void {
    _ = linux.futex_wake(@ptrCast(word), linux.FUTEX.WAKE, 1);
}

/// Publishes a side's message: bumps `seq` after the fields were written,
/// then wakes the other side only if it said it sleeps. The seq_cst store
/// and load pair with `sleepOn`'s, so either the sleeper sees the new value
/// or the writer sees the flag (never neither).
pub fn publish(seq: *u32, other_sleeping: *const u32) void {
    const next = @atomicLoad(u32, seq, .monotonic) +% 1;
    @atomicStore(u32, seq, next, .seq_cst);
    if (@atomicLoad(u32, other_sleeping, .seq_cst) != 0) futexWake(seq);
}

/// Sleeps on `seq` while it is still `seen` (raising `sleeping` meanwhile),
/// for at most `timeout_ns` (null: until woken).
pub fn sleepOn(seq: *const u32, seen: u32, sleeping: *u32, timeout_ns: ?u64) void {
    @atomicStore(u32, sleeping, 1, .seq_cst);
    if (@atomicLoad(u32, seq, .seq_cst) == seen) futexWait(seq, seen, timeout_ns);
    @atomicStore(u32, sleeping, 0, .monotonic);
}

/// One round of a spin: a pause hint; every 16th round reads the clock (a
/// vDSO call) and yields the core. Yielding matters when both processes
/// share one core (the scheduler often puts a woken child beside its
/// waker, and a busy machine may leave them one): the other side can then
/// only answer once this one steps aside. Measured on the 2-core machine:
/// a hand-off of about 2 us with the yield, 6 us when it waits 1 us before
/// yielding, 13 us when it waits 5 us. Returns false once `until_ns` has passed.
pub fn spinRound(round: u32, until_ns: u64) bool {
    if (round % 16 != 15) {
        std.atomic.spinLoopHint();
        return true;
    }
    if (nowNs() >= until_ns) return false;
    _ = linux.sched_yield();
    return true;
}
