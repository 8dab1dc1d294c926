/*
 * smtp_wasm.h - the sandbox ABI of smtp-plugin-host: what a WebAssembly
 * (wasm32) build of a plugin exports and imports, and how metadata crosses
 * between the host and the module.
 *
 * A plugin source does not include this header: it is written against
 * smtp_plugin.h alone and reaches the host through smtp_hook_context.host,
 * native or sandboxed. This header describes the layer under that, which
 * `smtp-server plugin build --target wasm` links into every module (the guest
 * half: abi/zig/wasm_guest.zig, for Zig and C plugins alike) and which the
 * host (src/wasm/wasm-plugin.ts) drives. Write against it to implement a
 * guest half of your own, or a host.
 *
 * test/abi/wasm-layout.test.ts compiles this header for wasm32 and checks
 * the declarations below against the Zig guest half (the WebAssembly
 * signature of every export and import) and the layout against the Zig
 * binding and src/abi/wasm-layout.ts, which the host reads the metadata with.
 * See docs/abi.md, "The sandbox ABI".
 *
 * The module:
 *  - is a core module (not a component) for wasm32, a "reactor": it has no
 *    _start, and the host calls its exports. The host does not call
 *    _initialize, so static constructors (C++ or
 *    __attribute__((constructor))) do not run.
 *  - exports its memory as "memory", or imports it as "env" "memory" (the
 *    host then creates it, with the plugin's memory limit as its maximum).
 *  - exports smtp_plugin_abi_version and the six smtp_plugin_* functions of
 *    smtp_plugin.h by those names (the sandbox does not use
 *    smtp_plugin_get_interface), and the seven smtp_wasm_* functions below
 *    (two more are optional).
 *  - imports nothing but the functions listed under "Imports".
 * Pointers and size_t are 4 bytes (the wasm32 layout below); every pointer
 * is an offset into the module's memory, and the host checks each one it
 * reads against the memory's size.
 */
#ifndef SMTP_WASM_H
#define SMTP_WASM_H

#include "smtp_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- wasm32 layout --------------------------------------------------------
 * The host reads a sandboxed plugin's smtp_plugin_metadata out of the
 * module's memory itself, at these offsets: eight 4-byte pointers, then
 * handled_hooks and (ABI 1.1) flags, both u64, little endian. A plugin that
 * exports ABI 1.0 is read without flags (40 bytes). The dependencies array is
 * read as 4-byte pointers up to the NULL one. The other structs never cross
 * the boundary (the guest half builds the context and the host api inside the
 * module), but the guest half and the plugin share them, so their wasm32
 * sizes are asserted too. */
#define SMTP_WASM32_POINTER_BYTES 4u
#define SMTP_WASM32_METADATA_HANDLED_HOOKS_OFFSET 32u
#define SMTP_WASM32_METADATA_FLAGS_OFFSET 40u
#define SMTP_WASM32_METADATA_SIZE_1_0 40u
#define SMTP_WASM32_METADATA_SIZE_1_1 48u

#if defined(__wasm32__)
#ifdef __cplusplus
#define SMTP_WASM_STATIC_ASSERT static_assert
#else
#define SMTP_WASM_STATIC_ASSERT _Static_assert
#endif
SMTP_WASM_STATIC_ASSERT(sizeof(void *) == SMTP_WASM32_POINTER_BYTES && sizeof(size_t) == 4, "wasm32 pointers are 4 bytes");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, name) == 0 * SMTP_WASM32_POINTER_BYTES, "metadata.name");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, version) == 1 * SMTP_WASM32_POINTER_BYTES, "metadata.version");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, author) == 2 * SMTP_WASM32_POINTER_BYTES, "metadata.author");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, description) == 3 * SMTP_WASM32_POINTER_BYTES, "metadata.description");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, license) == 4 * SMTP_WASM32_POINTER_BYTES, "metadata.license");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, dependencies) == 5 * SMTP_WASM32_POINTER_BYTES, "metadata.dependencies");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, min_server_version) == 6 * SMTP_WASM32_POINTER_BYTES, "metadata.min_server_version");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, max_server_version) == 7 * SMTP_WASM32_POINTER_BYTES, "metadata.max_server_version");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, handled_hooks) == SMTP_WASM32_METADATA_HANDLED_HOOKS_OFFSET, "metadata.handled_hooks");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, flags) == SMTP_WASM32_METADATA_FLAGS_OFFSET, "metadata.flags");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_plugin_metadata, flags) == SMTP_WASM32_METADATA_SIZE_1_0, "a 1.0 plugin's metadata ends where flags begins");
SMTP_WASM_STATIC_ASSERT(sizeof(smtp_plugin_metadata) == SMTP_WASM32_METADATA_SIZE_1_1, "sizeof(smtp_plugin_metadata)");
SMTP_WASM_STATIC_ASSERT(sizeof(smtp_allocator) == 20, "sizeof(smtp_allocator)");
SMTP_WASM_STATIC_ASSERT(sizeof(smtp_host_api) == 40, "sizeof(smtp_host_api)");
SMTP_WASM_STATIC_ASSERT(offsetof(smtp_hook_context, cancel) == 8 && offsetof(smtp_hook_context, host) == 16, "smtp_hook_context fields");
SMTP_WASM_STATIC_ASSERT(sizeof(smtp_hook_context) == 24, "sizeof(smtp_hook_context)");
SMTP_WASM_STATIC_ASSERT(sizeof(smtp_plugin_interface) == 24, "sizeof(smtp_plugin_interface)");
#undef SMTP_WASM_STATIC_ASSERT
#endif

/* --- The wire format ------------------------------------------------------
 * Metadata crosses the boundary as a byte string of entries, each
 *     [u32 key_len][key bytes][u32 value_len][value bytes]
 * lengths little endian, no padding, no terminator; keys and values are
 * byte strings (UTF-8 keys by convention; values may hold any byte). The host
 * writes a context's whole metadata in this form (smtp_wasm_context_load)
 * and reads back the keys the plugin set (smtp_wasm_take_changes), checking
 * every length against the bytes present and against its bounds
 * (src/plugin/metadata-wire.ts; the guest side is metadata_host.zig). */
#define SMTP_WASM_WIRE_LENGTH_BYTES 4u

/* --- Exports: the guest half ----------------------------------------------
 * Called by the host only, one call at a time, never from two threads. */

/* Returns `len` bytes (1 when `len` is 0) aligned to 16, from the module's
 * own memory, or NULL. The host copies the config text and metadata in, and
 * changes out, through such buffers (the proxy-wasm pattern). */
void *smtp_wasm_alloc(size_t len);

/* Frees a block from smtp_wasm_alloc; `len` is the length asked for. */
void smtp_wasm_free(void *ptr, size_t len);

/* The allocator the host passes to smtp_plugin_init: the module's own memory,
 * so what a plugin allocates counts against its memory limit. Valid for the
 * instance's life. */
const smtp_allocator *smtp_wasm_host_allocator(void);

/* Creates the one hook context the host reuses for every call: a metadata
 * store inside the module whose set_metadata refuses keys over
 * key_bytes_max, values over value_bytes_max and more than keys_max keys
 * (SMTP_STATUS_TOO_LARGE to the plugin). Its host api's clock and network
 * functions call the imports below. Returns NULL when memory runs out. */
smtp_hook_context *smtp_wasm_context_create(size_t key_bytes_max, size_t value_bytes_max, size_t keys_max);

/* Replaces the context's metadata with the `len` bytes at `buf` (the wire
 * format), sets hook_type and clears cancel. Returns an smtp_status:
 * SMTP_STATUS_INVALID for malformed bytes, SMTP_STATUS_TOO_LARGE over a
 * bound, SMTP_STATUS_NO_MEMORY. The host loads a context only when it changed
 * since the last call. */
int32_t smtp_wasm_context_load(smtp_hook_context *context, int32_t hook_type, const uint8_t *buf, size_t len);

/* smtp_wasm_context_load for bytes the host encoded itself and checked
 * against the context's bounds, holding `entries` entries (a repeated key
 * counted each time): the guest need not walk them at the load, and reads a
 * key from them, every length checked, when asked. Optional: the host calls
 * it when the module exports it (guest halves since 2026-12), else
 * smtp_wasm_context_load. */
int32_t smtp_wasm_context_load_checked(smtp_hook_context *context, int32_t hook_type, const uint8_t *buf, size_t len, size_t entries);

/* smtp_wasm_context_load_checked for a text without the bytes of its tail
 * (ABI 1.3): the value of the entry whose length ends at `tail_at` in `buf`
 * (and is `tail_len`) is not in the module's memory; the changes made since
 * the event may follow in `buf`. The host keeps that value (the message
 * body) during the execute_hook call that follows the load (a later call
 * gets a new load), and the first read of its key copies it in through the
 * import smtp_host_context_tail, into memory the guest allocates and frees
 * at the next load: a plugin that never reads the body never has it copied. SMTP_STATUS_INVALID when `tail_at` is past `len`.
 * Optional: the host calls it when the module exports it, for an event that
 * carries the body. */
int32_t smtp_wasm_context_load_lazy(smtp_hook_context *context, int32_t hook_type, const uint8_t *buf, size_t len, size_t entries, size_t tail_at, size_t tail_len);

/* After smtp_plugin_execute_hook: the SMTP_WASM_STATUS_* bits below. */
uint32_t smtp_wasm_context_status(const smtp_hook_context *context);
#define SMTP_WASM_STATUS_CANCEL (1u << 0)     /* the plugin set context->cancel */
#define SMTP_WASM_STATUS_NET_DENIED (1u << 1) /* a connect was refused for want of a grant since the last call (cleared by the call) */
#define SMTP_WASM_STATUS_CHANGED_SHIFT 2      /* status >> 2: keys the plugin set since the last take */

/* Writes the keys the plugin set since the last take, in the wire format, to
 * `out` and forgets them. Returns the bytes written, or minus the bytes needed
 * when `cap` is too small, 0 included (then nothing is forgotten, and the host
 * asks again with a larger buffer). `out` may lie inside the last load's
 * buffer, right after the loaded bytes (not the start of an smtp_wasm_alloc
 * block, and not aligned). */
int32_t smtp_wasm_take_changes(smtp_hook_context *context, uint8_t *out, size_t cap);

/* --- Imports --------------------------------------------------------------
 * Module "smtp_host": the clock and the network of smtp_host_api (ABI 1.1)
 * and its counters (ABI 1.2), without the context argument, and the lazy
 * load's tail (ABI 1.3). The guest half's
 * host api calls them; a plugin calls them through context->host like a
 * native plugin does. The host checks every address against the plugin's
 * allow_connect grants and every counter call against its allow_counters
 * grant, checks every pointer and length against the module's memory (a bad
 * one answers SMTP_NET_E_ADDRESS, SMTP_NET_E_LIMIT or SMTP_COUNTER_E_INVALID),
 * and cuts every timeout to what is left of the hook's deadline. Results are
 * those of smtp_host_api. The counters are the server's (namespaced by the
 * plugin's name), shared with its native plugins. */
#define SMTP_WASM_HOST_MODULE "smtp_host"
#if defined(__wasm__)
#define SMTP_WASM_HOST_IMPORT(name) __attribute__((import_module(SMTP_WASM_HOST_MODULE), import_name(name)))
int64_t smtp_host_now_unix_ms(void) SMTP_WASM_HOST_IMPORT("now_unix_ms");
int32_t smtp_host_net_connect(const uint8_t *address, size_t address_len, uint32_t timeout_ms) SMTP_WASM_HOST_IMPORT("net_connect");
int32_t smtp_host_net_send(int32_t handle, const uint8_t *data, size_t len, uint32_t timeout_ms) SMTP_WASM_HOST_IMPORT("net_send");
int32_t smtp_host_net_recv(int32_t handle, uint8_t *buf, size_t cap, uint32_t timeout_ms) SMTP_WASM_HOST_IMPORT("net_recv");
int32_t smtp_host_net_close(int32_t handle) SMTP_WASM_HOST_IMPORT("net_close");
int64_t smtp_host_counter_incr(const uint8_t *key, size_t key_len, int64_t by, uint32_t window_seconds) SMTP_WASM_HOST_IMPORT("counter_incr");
/* Copies the tail of the last smtp_wasm_context_load_lazy (the message
 * body), `len` bytes, to `dst`; returns 0. The host ends the call instead
 * (SMTP_E_WASM_MEMORY) when `dst` is NULL (the guest had no memory for it),
 * and (SMTP_E_WASM_BOUNDS) when `len` is not the tail's length, the
 * current call's load left no tail out (or it was copied already), or
 * `dst` + `len` is outside the memory. */
int32_t smtp_host_context_tail(uint8_t *dst, size_t len) SMTP_WASM_HOST_IMPORT("context_tail");
#undef SMTP_WASM_HOST_IMPORT
#endif

/* Module "wasi_snapshot_preview1": a module may import any WASI preview1
 * function (libc pulls many in), and nothing from another WASI version. The
 * host's own implementation grants:
 *   fd_write        fds 1 and 2, to the plugin's log (one record per line);
 *                   other fds answer EBADF
 *   clock_time_get, clock_res_get   real time and a monotonic clock
 *   random_get      the host's CSPRNG
 *   sched_yield     returns
 *   proc_exit       ends the call with SMTP_E_WASM_EXIT; the instance is
 *                   replaced
 * and answers every other function (files, directories, sockets, poll,
 * environment, arguments) with SMTP_WASM_WASI_ENOTCAPABLE. Declarations:
 * wasi-libc's <wasi/api.h>. */
#define SMTP_WASM_WASI_MODULE "wasi_snapshot_preview1"
#define SMTP_WASM_WASI_ENOTCAPABLE 76

/* The deadline check. Not imported by a module: the host adds it. Before
 * compiling, the host rewrites the module so that every loop header
 * decrements an exported mutable i32 global "__smtp_budget" and, when it
 * reaches zero, calls the import "smtp_sandbox" "budget_exhausted" (type
 * () -> ()), which refills the budget (SMTP_WASM_BUDGET_ITERATIONS) or, past
 * the deadline, unwinds the call (SMTP_E_WASM_DEADLINE). A module that
 * already imports the one or exports the other is refused
 * (SMTP_E_WASM_UNSUPPORTED). */
#define SMTP_WASM_SANDBOX_MODULE "smtp_sandbox"
#define SMTP_WASM_BUDGET_CHECK_IMPORT "budget_exhausted"
#define SMTP_WASM_BUDGET_GLOBAL_EXPORT "__smtp_budget"
#define SMTP_WASM_BUDGET_ITERATIONS 10000

#ifdef __cplusplus
}
#endif

#endif /* SMTP_WASM_H */
