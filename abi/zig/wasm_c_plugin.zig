//! The Zig root of a C plugin's WebAssembly build (`smtp-server plugin build
//! plugin.c --target wasm`): it is compiled together with the C file and links
//! the guest half of the sandbox, the smtp_wasm_* exports the host calls
//! (abi/smtp_wasm.h). The C file provides smtp_plugin_abi_version and the six
//! functions, or smtp_plugin_get_interface, which abi/smtp_wasm_interface.c
//! turns into the six. Unlike smtp-server.zig, this root exports no ABI
//! version marker: the C plugin declares its own.
comptime {
    _ = @import("wasm_guest.zig");
}
