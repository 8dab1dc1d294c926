//! The host half of a process-isolated native plugin (docs/sandbox.md):
//! the shared channel (src/runtime/isolation_channel.zig), posting a request
//! and waiting for its answer, the plugin's network grants, and death and
//! deadline handling. src/isolation/channel.ts calls these through koffi:
//! `smtp_isolation_call` on the event loop's thread (it spins for a few
//! microseconds at most), `smtp_isolation_wait` on a thread of koffi's pool
//! (it may wait up to the hook's deadline).
const std = @import("std");
const linux = std.os.linux;
const posix = std.posix;
const host = @import("smtp-host");
const net = @import("net.zig");
const counters = @import("counters.zig");
const channel = @import("isolation_channel.zig");
const Header = channel.Header;

const c_allocator = std.heap.c_allocator;

/// How long the waiting thread sleeps on the futex between two looks at the
/// child's pidfd: the longest a death goes unnoticed.
const death_check_ns: u64 = 2 * std.time.ns_per_ms;
/// How long the waiting thread spins before its first sleep.
const wait_spin_ns: u64 = 20 * std.time.ns_per_us;
/// The longest a request area or a reply area may be.
const area_bytes_max: u64 = 1 << 30;

/// What smtp_isolation_call and smtp_isolation_wait return.
const Outcome = enum(i32) {
    /// The child is still at it: finish with smtp_isolation_wait.
    pending = 0,
    /// The child answered (Header.kind == done).
    done = 1,
    /// The child's process ended before answering.
    died = -1,
    /// The deadline passed: the child was sent SIGKILL.
    deadline = -2,
};

const Channel = struct {
    map: []align(std.heap.page_size_min) u8,
    header: *Header,
    /// The memfd and the child's end of the socketpair, until the child has them.
    memfd: posix.fd_t,
    child_socket: posix.fd_t,
    /// The host's end of the socketpair: granted sockets go through it.
    socket: posix.fd_t,
    pidfd: posix.fd_t = -1,
    /// The last reply_seq the host consumed.
    seen_reply_seq: u32 = 0,
    /// When the current call was posted (monotonic ns): deadlines count from it.
    call_started_ns: u64 = 0,
    /// The plugin's allow_connect grants, checked as net.zig checks them.
    grants: host.Store,
    /// A connect refused for want of a grant since the host last asked.
    denied: bool = false,
    denied_address: [channel.net_address_bytes_max]u8 = undefined,
    denied_len: usize = 0,
    /// The plugin's name when allow_counters grants it the counters (empty: refused).
    counter_namespace: [counters.namespace_bytes_max]u8 = undefined,
    counter_namespace_len: usize = 0,
    /// Set to 1 when a counter call was refused for want of the grant; the
    /// host reads and clears it through a view of this word (in the host's
    /// own memory, out of the child's reach).
    counters_denied: u32 = 0,
};

fn check(rc: usize) !usize {
    return switch (linux.E.init(rc)) {
        .SUCCESS => rc,
        else => error.SystemCall,
    };
}

/// Creates the channel: a memfd of header + request area + reply area
/// (sparse: pages cost memory only once touched), mapped here, with the
/// header filled in, and a socketpair. Returns null when the system refuses.
export fn smtp_isolation_create(request_bytes_max: u64, reply_bytes_max: u64, key_bytes_max: u64, value_bytes_max: u64, keys_max: u64, memory_bytes_max: u64, child_spin_ns: u64) ?*Channel {
    return create(request_bytes_max, reply_bytes_max, key_bytes_max, value_bytes_max, keys_max, memory_bytes_max, child_spin_ns) catch null;
}

fn create(request_bytes_max: u64, reply_bytes_max: u64, key_bytes_max: u64, value_bytes_max: u64, keys_max: u64, memory_bytes_max: u64, child_spin_ns: u64) !*Channel {
    if (request_bytes_max == 0 or request_bytes_max > area_bytes_max or reply_bytes_max == 0 or reply_bytes_max > area_bytes_max) return error.Invalid;
    const request_bytes = channel.pageAlign(request_bytes_max);
    const reply_bytes = channel.pageAlign(reply_bytes_max);
    const total = channel.header_bytes + request_bytes + reply_bytes;
    const memfd: posix.fd_t = @intCast(try check(linux.memfd_create("smtp-plugin-channel", linux.MFD.CLOEXEC)));
    errdefer posix.close(memfd);
    try posix.ftruncate(memfd, total);
    const map = try posix.mmap(null, total, posix.PROT.READ | posix.PROT.WRITE, .{ .TYPE = .SHARED, .NORESERVE = true }, memfd, 0);
    errdefer posix.munmap(map);
    var pair: [2]i32 = undefined;
    _ = try check(linux.socketpair(linux.AF.UNIX, linux.SOCK.STREAM | linux.SOCK.CLOEXEC, 0, &pair));
    errdefer {
        posix.close(pair[0]);
        posix.close(pair[1]);
    }
    const self = try c_allocator.create(Channel);
    const header: *Header = @ptrCast(map.ptr);
    header.* = .{
        .magic = channel.magic,
        .layout_version = channel.layout_version,
        .header_bytes = channel.header_bytes,
        .request_offset = channel.header_bytes,
        .request_bytes_max = request_bytes,
        .reply_offset = channel.header_bytes + request_bytes,
        .reply_bytes_max = reply_bytes,
        .key_bytes_max = key_bytes_max,
        .value_bytes_max = value_bytes_max,
        .keys_max = keys_max,
        .memory_bytes_max = memory_bytes_max,
        .child_spin_ns = child_spin_ns,
    };
    self.* = .{
        .map = map,
        .header = header,
        .memfd = memfd,
        .child_socket = pair[1],
        .socket = pair[0],
        .grants = .{ .allocator = c_allocator, .limits = .{} },
    };
    return self;
}

/// The start of the mapping (the header), for the host's view of it.
export fn smtp_isolation_base(self: *Channel) [*]u8 {
    return self.map.ptr;
}

export fn smtp_isolation_size(self: *Channel) u64 {
    return self.map.len;
}

/// The two descriptors the child is started with (fd 3: the memfd, fd 4: its socket).
export fn smtp_isolation_child_fds(self: *Channel, out: *[2]i32) void {
    out.* = .{ self.memfd, self.child_socket };
}

/// The child runs as `pid`: watch it through a pidfd, and close the
/// descriptors only the child needs. Returns 0, or -1 when the process is
/// already gone.
export fn smtp_isolation_attach(self: *Channel, pid: i32) i32 {
    closeChildEnds(self);
    const rc = linux.pidfd_open(pid, 0);
    if (linux.E.init(rc) != .SUCCESS) return -1;
    self.pidfd = @intCast(rc);
    return 0;
}

fn closeChildEnds(self: *Channel) void {
    if (self.memfd >= 0) posix.close(self.memfd);
    if (self.child_socket >= 0) posix.close(self.child_socket);
    self.memfd = -1;
    self.child_socket = -1;
}

/// Sets the allow_connect grants: addresses separated by "\n".
export fn smtp_isolation_set_grants(self: *Channel, buf: [*]const u8, len: usize) i32 {
    const copy = c_allocator.dupe(u8, buf[0..len]) catch return -1;
    c_allocator.free(self.grants.grants);
    self.grants.grants = copy;
    return 0;
}

/// Grants the plugin the counters under `name` (its name; empty: refused).
export fn smtp_isolation_set_counters(self: *Channel, name: [*]const u8, len: usize) i32 {
    if (len > self.counter_namespace.len) return -1;
    @memcpy(self.counter_namespace[0..len], name[0..len]);
    self.counter_namespace_len = len;
    return 0;
}

/// The word set when a counter call was refused for want of allow_counters.
export fn smtp_isolation_counters_denied_word(self: *Channel) *u32 {
    return &self.counters_denied;
}

/// Copies the last address refused for want of a grant into `out` and
/// clears the mark; returns its length, or -1 when none was refused.
export fn smtp_isolation_denied(self: *Channel, out: [*]u8, cap: usize) isize {
    if (!self.denied) return -1;
    self.denied = false;
    const n = @min(cap, self.denied_len);
    @memcpy(out[0..n], self.denied_address[0..n]);
    return @intCast(n);
}

/// Posts `op` (its arguments are in the header and the request area) and
/// spins up to `spin_ns` for the answer. Returns done (1) or pending (0).
/// It never sleeps: a child that needs longer, or asks for a connection
/// (which may block), is left to smtp_isolation_wait.
export fn smtp_isolation_call(self: *Channel, op: u32, hook_type: i32, request_len: u64, spin_ns: u64) i32 {
    const header = self.header;
    header.op = @enumFromInt(op);
    header.hook_type = hook_type;
    header.request_len = request_len;
    self.call_started_ns = channel.nowNs();
    channel.publish(&header.request_seq, &header.child_sleeping);
    return @intFromEnum(spin(self, self.call_started_ns + spin_ns));
}

/// Spins until the child publishes or `until_ns`; done, or pending for a
/// net request, a counter call that needs Redis, or no answer yet. A
/// counter call the memory table answers is served here, in this thread.
fn spin(self: *Channel, until_ns: u64) Outcome {
    var round: u32 = 0;
    while (true) : (round +%= 1) {
        const seq = @atomicLoad(u32, &self.header.reply_seq, .acquire);
        if (seq != self.seen_reply_seq) {
            if (self.header.kind == .counter and serveCounter(self, false, 0)) {
                self.seen_reply_seq = seq;
                continue;
            }
            if (self.header.kind != .done) return .pending;
            self.seen_reply_seq = seq;
            return .done;
        }
        if (!channel.spinRound(round, until_ns)) return .pending;
    }
}

/// Waits for the answer to the posted op until `timeout_ms` after it was
/// posted, serving the child's net_connect requests meanwhile. Sleeps on the
/// futex in slices, looking at the child's pidfd between them. Returns done,
/// died, or deadline (after sending SIGKILL).
export fn smtp_isolation_wait(self: *Channel, timeout_ms: u32) i32 {
    const header = self.header;
    const deadline_ns = self.call_started_ns + @as(u64, timeout_ms) * std.time.ns_per_ms;
    var spun = false;
    while (true) {
        const seq = @atomicLoad(u32, &header.reply_seq, .acquire);
        if (seq != self.seen_reply_seq) {
            self.seen_reply_seq = seq;
            if (header.kind == .net_connect) {
                serveConnect(self, deadline_ns);
                continue;
            }
            if (header.kind == .counter) {
                _ = serveCounter(self, true, deadline_ns);
                continue;
            }
            return @intFromEnum(Outcome.done);
        }
        const now = channel.nowNs();
        if (now >= deadline_ns) {
            kill(self);
            return @intFromEnum(Outcome.deadline);
        }
        if (!spun) {
            spun = true;
            if (spin(self, @min(deadline_ns, now + wait_spin_ns)) == .done) return @intFromEnum(Outcome.done);
            continue;
        }
        if (dead(self)) {
            // It may have answered just before it ended.
            if (@atomicLoad(u32, &header.reply_seq, .acquire) != self.seen_reply_seq) continue;
            return @intFromEnum(Outcome.died);
        }
        channel.sleepOn(&header.reply_seq, seq, &header.host_sleeping, @min(death_check_ns, deadline_ns - now));
    }
}

/// True when the child's process has ended (its pidfd is readable).
fn dead(self: *Channel) bool {
    if (self.pidfd < 0) return true;
    var fds = [_]posix.pollfd{.{ .fd = self.pidfd, .events = posix.POLL.IN, .revents = 0 }};
    const ready = posix.poll(&fds, 0) catch return false;
    return ready > 0;
}

/// Sends SIGKILL to the child (through its pidfd: never a recycled pid).
export fn smtp_isolation_kill(self: *Channel) void {
    kill(self);
}

fn kill(self: *Channel) void {
    if (self.pidfd < 0) return;
    _ = linux.pidfd_send_signal(self.pidfd, linux.SIG.KILL, null, 0);
}

/// The child's CPU time so far, in microseconds (its process CPU clock), or -1.
export fn smtp_isolation_cpu_us(self: *Channel, pid: i32) i64 {
    _ = self;
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED): ((~pid) << 3) | 2.
    const clock: u32 = @bitCast((~pid << 3) | 2);
    var ts: linux.timespec = undefined;
    const rc = linux.syscall2(.clock_gettime, clock, @intFromPtr(&ts));
    if (linux.E.init(rc) != .SUCCESS) return -1;
    return @as(i64, @intCast(ts.sec)) * std.time.us_per_s + @divTrunc(@as(i64, @intCast(ts.nsec)), std.time.ns_per_us);
}

/// Sets the child's RLIMIT_CPU soft limit to what it used so far plus
/// `budget_s` seconds (the hard limit stays: only the host moves the soft
/// one, the child's filter refuses setrlimit). Past it the kernel sends
/// SIGXCPU, whose default action ends the child. Returns 0, or -1.
export fn smtp_isolation_cpu_limit(self: *Channel, pid: i32, budget_s: u64) i32 {
    const used_us = smtp_isolation_cpu_us(self, pid);
    if (used_us < 0) return -1;
    var old: linux.rlimit = undefined;
    if (linux.E.init(linux.prlimit(pid, .CPU, null, &old)) != .SUCCESS) return -1;
    const soft = @as(u64, @intCast(@divTrunc(used_us, std.time.us_per_s))) + budget_s;
    // A hard limit just past the soft one ends a child that blocks SIGXCPU
    // (SIGKILL). Raising it again at the next re-arm needs CAP_SYS_RESOURCE
    // (root), so a host without it leaves the hard limit alone and relies on
    // SIGXCPU, whose handler the child's filter keeps at its default.
    const limit: linux.rlimit = if (linux.geteuid() == 0)
        .{ .cur = soft, .max = soft + cpu_hard_grace_s }
    else
        .{ .cur = @min(soft, old.max), .max = old.max };
    if (linux.E.init(linux.prlimit(pid, .CPU, &limit, null)) != .SUCCESS) return -1;
    return 0;
}

/// CPU seconds between the SIGXCPU of RLIMIT_CPU's soft limit and the SIGKILL of its hard limit.
const cpu_hard_grace_s: u64 = 5;

/// Gives the pages behind [offset, offset + len) of the mapping back to the
/// system (they read as zeros afterwards): after a large transfer.
export fn smtp_isolation_release(self: *Channel, offset: u64, len: u64) void {
    const start = channel.pageAlign(offset);
    if (start >= self.map.len) return;
    const end = @min(self.map.len, offset + len);
    if (end <= start) return;
    _ = linux.madvise(self.map.ptr + start, end - start, linux.MADV.REMOVE);
}

/// Kills the child if it still runs, and frees the channel.
export fn smtp_isolation_destroy(self: *Channel) void {
    kill(self);
    closeChildEnds(self);
    if (self.pidfd >= 0) posix.close(self.pidfd);
    posix.close(self.socket);
    posix.munmap(self.map);
    self.grants.deinit();
    c_allocator.destroy(self);
}

/// The child's plugin called net_connect: check the grant exactly as an
/// in-process plugin's would be (net.zig), connect here within the
/// plugin's timeout and the call's deadline, pass the socket over the
/// socketpair, and answer.
fn serveConnect(self: *Channel, deadline_ns: u64) void {
    const header = self.header;
    const len = @min(header.net_address_len, channel.net_address_bytes_max);
    var address_buf: [channel.net_address_bytes_max]u8 = undefined;
    @memcpy(address_buf[0..len], header.net_address[0..len]);
    const address = address_buf[0..len];
    var result: i32 = undefined;
    if (!self.grants.granted(address)) {
        self.denied = true;
        self.denied_len = len;
        @memcpy(self.denied_address[0..len], address);
        result = @intFromEnum(host.plugin.NetStatus.denied);
    } else {
        const left_ms = (deadline_ns -| channel.nowNs()) / std.time.ns_per_ms;
        const timeout_ms: u32 = @intCast(@min(header.net_timeout_ms, left_ms));
        const fd = net.connectAddress(address, timeout_ms);
        result = if (fd < 0) fd else passSocket(self, fd);
    }
    header.net_status = result;
    header.op = .net_reply;
    channel.publish(&header.request_seq, &header.child_sleeping);
}

/// The child's plugin called counter_incr: answer it from the counters
/// under the plugin's name (src/runtime/counters.zig), as for an in-process
/// plugin. False, leaving it unanswered, when `network` is false and the
/// call needs Redis (the waiting thread serves it then).
fn serveCounter(self: *Channel, network: bool, deadline_ns: u64) bool {
    const header = self.header;
    // Copied first: the child could change the shared bytes meanwhile.
    const len: usize = header.net_address_len;
    const by = header.counter_by;
    const window_seconds = header.counter_window_seconds;
    var key: [channel.net_address_bytes_max]u8 = undefined;
    var result: i64 = @intFromEnum(host.plugin.CounterStatus.invalid);
    if (self.counter_namespace_len == 0) {
        @atomicStore(u32, &self.counters_denied, 1, .release);
        result = @intFromEnum(host.plugin.CounterStatus.denied);
    } else if (len <= key.len) {
        @memcpy(key[0..len], header.net_address[0..len]);
        const deadline_ms: i64 = if (deadline_ns == 0) 0 else std.time.milliTimestamp() + @as(i64, @intCast((deadline_ns -| channel.nowNs()) / std.time.ns_per_ms));
        result = counters.incr(self.counter_namespace[0..self.counter_namespace_len], &key, len, by, window_seconds, .{ .deadline_ms = deadline_ms, .network = network }) catch return false;
    }
    header.counter_result = result;
    header.op = .counter_reply;
    channel.publish(&header.request_seq, &header.child_sleeping);
    return true;
}

/// Sends `fd` to the child (SCM_RIGHTS) and closes it here; 0, or SMTP_NET_E_IO.
fn passSocket(self: *Channel, fd: posix.fd_t) i32 {
    defer posix.close(fd);
    const Control = extern struct {
        len: usize,
        level: i32,
        type: i32,
        fd: i32,
        pad: i32 = 0,
    };
    var control: Control = .{ .len = @sizeOf(usize) + 2 * @sizeOf(i32) + @sizeOf(i32), .level = linux.SOL.SOCKET, .type = 1, .fd = fd }; // SCM_RIGHTS = 1
    const byte = [_]u8{0};
    var iov = [_]posix.iovec_const{.{ .base = &byte, .len = 1 }};
    const msg: linux.msghdr_const = .{ .name = null, .namelen = 0, .iov = &iov, .iovlen = 1, .control = &control, .controllen = @sizeOf(Control), .flags = 0 };
    const rc = linux.sendmsg(self.socket, &msg, linux.MSG.NOSIGNAL);
    if (linux.E.init(rc) != .SUCCESS) return @intFromEnum(host.plugin.NetStatus.io);
    return 0;
}

/// The header offsets the TypeScript side reads (isolation_channel.offsets).
export fn smtp_isolation_offsets(out: [*]u32, cap: usize) usize {
    const n = @min(cap, channel.offsets.len);
    @memcpy(out[0..n], channel.offsets[0..n]);
    return channel.offsets.len;
}
