//! The module plugins import as `@import("smtp-server")`.
//! `plugin` is the guide's API; importing this module also exports the ABI
//! version marker `smtp_plugin_abi_version`, so a plugin source need not.
const builtin = @import("builtin");

pub const plugin = @import("plugin.zig");

/// The in-process metadata host: the store behind `plugin.HookContext.init`
/// in unit tests and behind the Node host's native runtime.
pub const metadata_host = @import("metadata_host.zig");

export fn smtp_plugin_abi_version() u32 {
    return plugin.abi_version;
}

comptime {
    // A WebAssembly build also exports the guest half of the sandbox.
    if (builtin.target.cpu.arch.isWasm()) _ = @import("wasm_guest.zig");
}

test {
    _ = plugin;
    _ = metadata_host;
}
