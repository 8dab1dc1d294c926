//! Confinement of a process-isolated plugin's child (Linux, x86_64):
//!  - Landlock (when the kernel has it), before the plugin is loaded: files
//!    may be read only under the system library folders (what the dynamic
//!    loader needs), nothing may be written, created or removed anywhere,
//!    TCP bind and connect are refused (ABI 4+), and signals and abstract
//!    unix sockets cannot reach outside the child (ABI 6+). The plugin's
//!    constructors run under it.
//!  - seccomp, after the plugin is loaded and before any of its functions is
//!    called: an allow list of the system calls running a plugin needs; every
//!    other call fails with EPERM. No open, openat, openat2 or creat (no file
//!    can be opened), no socket, connect, bind or accept (no socket can be
//!    made: granted connections arrive from the host already connected), no
//!    execve, fork or vfork (threads are allowed), no ptrace, no kill of any
//!    other process, no setrlimit (the host owns the limits).
const std = @import("std");
const builtin = @import("builtin");
const linux = std.os.linux;
const SYS = linux.SYS;

comptime {
    if (builtin.cpu.arch != .x86_64) @compileError("the seccomp filter lists x86_64 system calls");
}

// --- seccomp ------------------------------------------------------------

const Insn = extern struct { code: u16, jt: u8, jf: u8, k: u32 };
const Program = extern struct { len: u16, filter: [*]const Insn };

const BPF_LD_W_ABS: u16 = 0x00 | 0x00 | 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10 | 0x00;
const BPF_JGE_K: u16 = 0x05 | 0x30 | 0x00;
const BPF_JSET_K: u16 = 0x05 | 0x40 | 0x00;
const BPF_RET_K: u16 = 0x06 | 0x00;

const AUDIT_ARCH_X86_64: u32 = 0xc000003e;
const X32_SYSCALL_BIT: u32 = 0x40000000;
const RET_KILL_PROCESS: u32 = 0x80000000;
const RET_ERRNO: u32 = 0x00050000;
const RET_ALLOW: u32 = 0x7fff0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const CLONE_THREAD: u32 = 0x00010000;
const AT_EMPTY_PATH: u32 = 0x1000;
const SIGXCPU: u32 = 24;

/// seccomp_data: nr, arch, instruction pointer, then six u64 arguments.
fn argLow(index: u32) u32 {
    return 16 + 8 * index;
}
fn argHigh(index: u32) u32 {
    return 16 + 8 * index + 4;
}

/// Allowed whatever their arguments: memory, signals of this process,
/// futexes, time, I/O on descriptors the child already holds (its pipes to
/// the host, its channel socket, granted connections), polling, exit.
const allowed = [_]SYS{
    .read,             .write,        .readv,         .writev,          .pread64,         .pwrite64,
    .preadv,           .pwritev,      .close,         .lseek,           .fstat,           .mmap,
    .mprotect,         .munmap,       .brk,           .mremap,          .madvise,         .msync,
    .mincore,          .rt_sigprocmask, .rt_sigreturn, .sigaltstack,    .rt_sigpending,   .rt_sigtimedwait,
    .rt_sigsuspend,    .futex,        .set_robust_list, .rseq,          .set_tid_address, .nanosleep,
    .clock_nanosleep,  .clock_gettime, .clock_getres, .gettimeofday,    .time,            .getpid,
    .gettid,           .getppid,      .getuid,        .geteuid,         .getgid,          .getegid,
    .getresuid,        .getresgid,    .getgroups,     .exit,            .exit_group,      .sched_yield,
    .sched_getaffinity, .getcpu,      .poll,          .ppoll,           .select,          .pselect6,
    .epoll_create1,    .epoll_ctl,    .epoll_wait,    .epoll_pwait,     .epoll_pwait2,    .sendto,
    .recvfrom,         .sendmsg,      .recvmsg,       .sendmmsg,        .recvmmsg,        .shutdown,
    .getsockopt,       .setsockopt,   .getsockname,   .getpeername,     .fcntl,           .dup,
    .dup2,             .dup3,         .getrandom,     .uname,           .restart_syscall, .pipe,
    .pipe2,            .eventfd2,     .membarrier,    .getrusage,       .times,           .arch_prctl,
    .futex_waitv,      .sched_getparam, .sched_getscheduler,
};

/// A tiny assembler for the filter: forward jumps to labels, resolved at the end.
const Label = enum { deny, allow, enosys, clone, tgkill, fstatat, statx, prlimit, sigaction };
const labels_count = @typeInfo(Label).@"enum".fields.len;
const program_max = 192;

const Builder = struct {
    insns: [program_max]Insn = undefined,
    len: usize = 0,
    /// For each instruction, the labels its jt and jf jump to (null: the next one, or a literal).
    targets: [program_max][2]?Label = undefined,
    at: [labels_count]?usize = @splat(null),

    fn stmt(self: *Builder, code: u16, k: u32) void {
        self.insns[self.len] = .{ .code = code, .jt = 0, .jf = 0, .k = k };
        self.targets[self.len] = .{ null, null };
        self.len += 1;
    }
    fn jump(self: *Builder, code: u16, k: u32, jt: ?Label, jf: ?Label) void {
        self.insns[self.len] = .{ .code = code, .jt = 0, .jf = 0, .k = k };
        self.targets[self.len] = .{ jt, jf };
        self.len += 1;
    }
    fn mark(self: *Builder, label: Label) void {
        self.at[@intFromEnum(label)] = self.len;
    }
    fn resolve(self: *Builder) error{FilterTooLong}!void {
        for (0..self.len) |index| {
            for (self.targets[index], 0..) |target, which| {
                const label = target orelse continue;
                const to = self.at[@intFromEnum(label)].?;
                if (to <= index) return error.FilterTooLong;
                const distance = to - index - 1;
                if (distance > 255) return error.FilterTooLong;
                if (which == 0) self.insns[index].jt = @intCast(distance) else self.insns[index].jf = @intCast(distance);
            }
        }
    }
};

/// The filter for this process (tgkill is allowed on itself only).
fn buildFilter(b: *Builder, pid: u32) !void {
    b.stmt(BPF_LD_W_ABS, 4); // arch
    b.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, null, null);
    b.insns[b.len - 1].jt = 1;
    b.stmt(BPF_RET_K, RET_KILL_PROCESS);
    b.stmt(BPF_LD_W_ABS, 0); // nr
    b.jump(BPF_JGE_K, X32_SYSCALL_BIT, .deny, null);
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.clone), .clone, null);
    // glibc falls back to clone when clone3 is missing; clone's flags can be checked, clone3's cannot.
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.clone3), .enosys, null);
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.tgkill), .tgkill, null);
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.fstatat64), .fstatat, null);
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.statx), .statx, null);
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.prlimit64), .prlimit, null);
    b.jump(BPF_JEQ_K, @intFromEnum(SYS.rt_sigaction), .sigaction, null);
    for (allowed) |nr| b.jump(BPF_JEQ_K, @intCast(@intFromEnum(nr)), .allow, null);
    // Everything else.
    b.stmt(BPF_RET_K, RET_ERRNO | EPERM);
    // clone: threads only (CLONE_THREAD), never a new process.
    b.mark(.clone);
    b.stmt(BPF_LD_W_ABS, argLow(0));
    b.jump(BPF_JSET_K, CLONE_THREAD, .allow, .deny);
    // tgkill: this process only (abort() and pthread_kill use it).
    b.mark(.tgkill);
    b.stmt(BPF_LD_W_ABS, argLow(0));
    b.jump(BPF_JEQ_K, pid, .allow, .deny);
    // fstat(fd) as glibc makes it: fstatat(fd, "", AT_EMPTY_PATH).
    b.mark(.fstatat);
    b.stmt(BPF_LD_W_ABS, argLow(3));
    b.jump(BPF_JSET_K, AT_EMPTY_PATH, .allow, .deny);
    b.mark(.statx);
    b.stmt(BPF_LD_W_ABS, argLow(2));
    b.jump(BPF_JSET_K, AT_EMPTY_PATH, .allow, .deny);
    // getrlimit (no new limit) only.
    b.mark(.prlimit);
    b.stmt(BPF_LD_W_ABS, argLow(2));
    b.jump(BPF_JEQ_K, 0, null, .deny);
    b.stmt(BPF_LD_W_ABS, argHigh(2));
    b.jump(BPF_JEQ_K, 0, .allow, .deny);
    // Any handler but SIGXCPU's: the CPU limit's signal keeps its default action.
    b.mark(.sigaction);
    b.stmt(BPF_LD_W_ABS, argLow(0));
    b.jump(BPF_JEQ_K, SIGXCPU, .deny, .allow);
    // Classic BPF jumps only forward: the verdicts come last.
    b.mark(.deny);
    b.stmt(BPF_RET_K, RET_ERRNO | EPERM);
    b.mark(.allow);
    b.stmt(BPF_RET_K, RET_ALLOW);
    b.mark(.enosys);
    b.stmt(BPF_RET_K, RET_ERRNO | ENOSYS);
    try b.resolve();
}

pub const ConfineError = error{ NoNewPrivs, Seccomp, FilterTooLong };

/// Installs the seccomp filter on this process (all threads: TSYNC).
pub fn installSeccomp() ConfineError!void {
    try noNewPrivs();
    var b: Builder = .{};
    try buildFilter(&b, @intCast(linux.getpid()));
    const program: Program = .{ .len = @intCast(b.len), .filter = &b.insns };
    const rc = linux.seccomp(linux.SECCOMP.SET_MODE_FILTER, linux.SECCOMP.FILTER_FLAG.TSYNC, &program);
    if (linux.E.init(rc) != .SUCCESS) return error.Seccomp;
}

fn noNewPrivs() error{NoNewPrivs}!void {
    const rc = linux.prctl(@intFromEnum(linux.PR.SET_NO_NEW_PRIVS), 1, 0, 0, 0);
    if (linux.E.init(rc) != .SUCCESS) return error.NoNewPrivs;
}

// --- Landlock -------------------------------------------------------------

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1 << 0;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;
const ACCESS_FS_EXECUTE: u64 = 1 << 0;
const ACCESS_FS_READ_FILE: u64 = 1 << 2;
const ACCESS_FS_READ_DIR: u64 = 1 << 3;

const RulesetAttr = extern struct { handled_access_fs: u64, handled_access_net: u64, scoped: u64 };
const PathBeneathAttr = extern struct { allowed_access: u64 align(1), parent_fd: i32 align(1) };

/// Read-only (and mappable as code) for the dynamic loader: the system
/// library folders and the loader's cache. Missing ones are skipped.
const library_paths = [_][:0]const u8{ "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache" };

/// Confines this process with Landlock; returns the ABI version used, or 0
/// when the kernel has no Landlock (the seccomp filter still applies).
pub fn installLandlock() ConfineError!i32 {
    const version_rc = linux.syscall3(.landlock_create_ruleset, 0, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (linux.E.init(version_rc) != .SUCCESS) return 0;
    const abi: i32 = @intCast(version_rc);
    // Each ABI version handles more rights; a right not handled is not restricted.
    const fs_rights_count: u6 = if (abi >= 5) 16 else if (abi >= 3) 15 else if (abi >= 2) 14 else 13;
    const attr: RulesetAttr = .{
        .handled_access_fs = (@as(u64, 1) << fs_rights_count) - 1,
        .handled_access_net = if (abi >= 4) 0b11 else 0, // BIND_TCP, CONNECT_TCP
        .scoped = if (abi >= 6) 0b11 else 0, // ABSTRACT_UNIX_SOCKET, SIGNAL
    };
    const attr_size: usize = if (abi >= 6) 24 else if (abi >= 4) 16 else 8;
    const ruleset_rc = linux.syscall3(.landlock_create_ruleset, @intFromPtr(&attr), attr_size, 0);
    if (linux.E.init(ruleset_rc) != .SUCCESS) return 0;
    const ruleset: i32 = @intCast(ruleset_rc);
    defer _ = linux.close(ruleset);
    for (library_paths) |path| {
        const fd_rc = linux.open(path, .{ .PATH = true, .CLOEXEC = true }, 0);
        if (linux.E.init(fd_rc) != .SUCCESS) continue;
        const fd: i32 = @intCast(fd_rc);
        defer _ = linux.close(fd);
        var st: linux.Stat = undefined;
        const is_dir = linux.E.init(linux.fstat(fd, &st)) == .SUCCESS and linux.S.ISDIR(st.mode);
        const rule: PathBeneathAttr = .{
            .allowed_access = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | (if (is_dir) ACCESS_FS_READ_DIR else 0),
            .parent_fd = fd,
        };
        _ = linux.syscall4(.landlock_add_rule, @intCast(ruleset), LANDLOCK_RULE_PATH_BENEATH, @intFromPtr(&rule), 0);
    }
    try noNewPrivs();
    if (linux.E.init(linux.syscall2(.landlock_restrict_self, @intCast(ruleset), 0)) != .SUCCESS) return 0;
    return abi;
}

test "the seccomp filter fits classic BPF's jumps" {
    var b: Builder = .{};
    try buildFilter(&b, 1234);
    try std.testing.expect(b.len < program_max);
}

test "under the filter, open and socket fail with EPERM, fork fails, and threads and abort still work" {
    const pid = try std.posix.fork();
    if (pid == 0) {
        installSeccomp() catch std.posix.exit(10);
        if (linux.E.init(linux.open("/etc/passwd", .{}, 0)) != .PERM) std.posix.exit(11);
        if (linux.E.init(linux.openat(linux.AT.FDCWD, "/etc/passwd", .{}, 0)) != .PERM) std.posix.exit(12);
        if (linux.E.init(linux.socket(linux.AF.INET, linux.SOCK.STREAM, 0)) != .PERM) std.posix.exit(13);
        if (linux.E.init(linux.fork()) != .PERM) std.posix.exit(14);
        const limit: linux.rlimit = .{ .cur = 1, .max = 1 };
        if (linux.E.init(linux.prlimit(0, .CPU, &limit, null)) != .PERM) std.posix.exit(15);
        const thread = std.Thread.spawn(.{}, struct {
            fn run() void {}
        }.run, .{}) catch std.posix.exit(16);
        thread.join();
        // abort() signals this process (tgkill on itself): allowed.
        std.c.abort();
    }
    const result = std.posix.waitpid(pid, 0);
    try std.testing.expect(std.posix.W.IFSIGNALED(result.status));
    try std.testing.expectEqual(@as(u32, std.posix.SIG.ABRT), std.posix.W.TERMSIG(result.status));
}
