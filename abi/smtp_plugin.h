/*
 * smtp_plugin.h - the plugin ABI of smtp-plugin-host.
 *
 * This header is the contract. The Zig binding (abi/zig/) and the TypeScript
 * layouts (src/abi/) are checked against it by test/abi/layout.test.ts, so a
 * change here that is not mirrored there fails the tests.
 *
 * Rules that hold for every declaration below:
 *  - Structs only grow at the end. A struct that the host hands to a plugin
 *    starts with `struct_size`, so a plugin built against an older header can
 *    tell which fields exist; the plugin's own structs are versioned by the
 *    ABI version the plugin exports.
 *  - The host never calls into one plugin from two threads at once.
 *  - Strings are UTF-8. Metadata values are byte strings with a length and
 *    may hold any byte, NUL included.
 *  - A plugin links no host symbol: everything the host offers arrives
 *    through the pointers passed to init and to execute_hook.
 *
 * See docs/abi.md for the reference, including what stop and cancel mean for
 * each hook.
 */
#ifndef SMTP_PLUGIN_H
#define SMTP_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version: major in the high 16 bits, minor in the low 16 bits. The host
 * loads a plugin whose major equals its own and whose minor is not newer than
 * its own. */
#define SMTP_PLUGIN_ABI_VERSION_MAJOR 1u
#define SMTP_PLUGIN_ABI_VERSION_MINOR 3u
#define SMTP_PLUGIN_ABI_VERSION ((SMTP_PLUGIN_ABI_VERSION_MAJOR << 16) | SMTP_PLUGIN_ABI_VERSION_MINOR)

/* The 19 hooks, in the order and with the names of the seed guide. */
typedef enum smtp_hook_type {
    SMTP_HOOK_MESSAGE_RECEIVED = 0,
    SMTP_HOOK_MESSAGE_VALIDATED = 1,
    SMTP_HOOK_MESSAGE_FILTERED = 2,
    SMTP_HOOK_MESSAGE_STORED = 3,
    SMTP_HOOK_MESSAGE_DELIVERED = 4,
    SMTP_HOOK_AUTH_STARTED = 5,
    SMTP_HOOK_AUTH_COMPLETED = 6,
    SMTP_HOOK_AUTH_FAILED = 7,
    SMTP_HOOK_CONNECTION_OPENED = 8,
    SMTP_HOOK_CONNECTION_CLOSED = 9,
    SMTP_HOOK_CONNECTION_UPGRADED = 10,
    SMTP_HOOK_COMMAND_RECEIVED = 11,
    SMTP_HOOK_COMMAND_VALIDATED = 12,
    SMTP_HOOK_CONFIG_LOADED = 13,
    SMTP_HOOK_CONFIG_CHANGED = 14,
    SMTP_HOOK_SERVER_STARTING = 15,
    SMTP_HOOK_SERVER_STARTED = 16,
    SMTP_HOOK_SERVER_STOPPING = 17,
    SMTP_HOOK_SERVER_STOPPED = 18
} smtp_hook_type;

#define SMTP_HOOK_COUNT 19

/* Bit for one hook in smtp_plugin_metadata.handled_hooks. */
#define SMTP_HOOK_BIT(hook) (UINT64_C(1) << (hook))

/* What execute_hook returns. Any other value is a plugin error, handled by
 * the plugin's failure policy. A context whose `cancel` flag is set after the
 * call counts as SMTP_HOOK_CANCEL whatever the code. */
typedef enum smtp_hook_result {
    SMTP_HOOK_CONTINUE = 0, /* run the next plugin */
    SMTP_HOOK_STOP = 1,     /* run no further plugin for this event */
    SMTP_HOOK_CANCEL = 2    /* run no further plugin and refuse the operation */
} smtp_hook_result;

/* Status codes returned by the host functions in smtp_host_api. */
typedef enum smtp_status {
    SMTP_STATUS_OK = 0,
    SMTP_STATUS_NO_MEMORY = 1,   /* the host could not allocate */
    SMTP_STATUS_TOO_LARGE = 2,   /* a key, a value or the key count is over its bound */
    SMTP_STATUS_INVALID = 3      /* a NULL pointer with a non-zero length, or an empty key */
} smtp_status;

/* What the network functions of smtp_host_api return on failure (ABI 1.1).
 * Every failure is a negative value; a handle or a byte count is >= 0. */
typedef enum smtp_net_status {
    SMTP_NET_E_DENIED = -1,   /* the address is not in the plugin's allow_connect grants */
    SMTP_NET_E_ADDRESS = -2,  /* not "tcp:IPV4:PORT", "tcp:localhost:PORT" or "unix:/PATH" */
    SMTP_NET_E_CONNECT = -3,  /* refused, unreachable, or no such socket file */
    SMTP_NET_E_TIMEOUT = -4,  /* nothing happened within timeout_ms (or the hook's deadline) */
    SMTP_NET_E_CLOSED = -5,   /* the handle is not open (never was, or closed after an error) */
    SMTP_NET_E_IO = -6,       /* the connection failed mid-way (reset, broken pipe) */
    SMTP_NET_E_LIMIT = -7     /* too many handles open, or a length over its bound */
} smtp_net_status;

/* What counter_incr returns on failure (ABI 1.2). Every failure is a
 * negative value; a count is >= 0. */
typedef enum smtp_counter_status {
    SMTP_COUNTER_E_DENIED = -1,      /* the plugin has no allow_counters grant (the host logs it) */
    SMTP_COUNTER_E_UNAVAILABLE = -2, /* Redis is down and the server's on_redis_down is "tempfail" */
    SMTP_COUNTER_E_INVALID = -3,     /* a bad key, window_seconds or `by` (the bounds below) */
    SMTP_COUNTER_E_LIMIT = -4        /* the host's memory table holds SMTP_COUNTER_KEYS_MAX keys */
} smtp_counter_status;

/* Bounds on counter_incr's arguments (ABI 1.2), enforced by the host. A key
 * is 1 to SMTP_COUNTER_KEY_BYTES_MAX bytes of UTF-8 without control
 * characters, spaces or DEL (a domain, an address, "ip:192.0.2.7"). */
#define SMTP_COUNTER_KEY_BYTES_MAX 256
#define SMTP_COUNTER_WINDOW_SECONDS_MAX 2678400          /* 31 days */
#define SMTP_COUNTER_BY_MAX INT64_C(2147483647)          /* one call adds at most this (a message's bytes fit) */
/* The most keys (of all plugins and windows together) the host's memory
 * table holds; the keys of windows that ended are dropped to make room. */
#define SMTP_COUNTER_KEYS_MAX 100000

/* Plugin flags, in smtp_plugin_metadata.flags (ABI 1.1). */
/* The plugin's hooks may block (network I/O, long computation): the host runs
 * them off the event loop, one call at a time (native: a thread of koffi's
 * pool; sandboxed: the plugin's own worker thread). A native in-process call
 * still running at hook_timeout_ms fails the session's hook, but its thread
 * runs on until the plugin returns (docs/sandbox.md). Without the flag a
 * native in-process hook runs on the server's only thread: nothing can
 * preempt it. */
#define SMTP_PLUGIN_FLAG_BLOCKING (UINT64_C(1) << 0)

/* The host allocator handed to init. The guide's `std.mem.Allocator` is not a
 * C type, so the host passes this table; the Zig binding wraps it back into a
 * std.mem.Allocator (plugin.Allocator.allocator()).
 * Ownership: the struct and `ctx` belong to the host and stay valid from init
 * until deinit returns. Memory from `alloc` belongs to the plugin until it
 * passes it to `free` with the same `len` and `alignment`. */
typedef struct smtp_allocator {
    uint32_t struct_size;   /* sizeof(smtp_allocator) as the host built it */
    uint32_t reserved;
    void *ctx;
    /* Returns `len` bytes aligned to `alignment` (a power of two), or NULL. */
    void *(*alloc)(void *ctx, size_t len, size_t alignment);
    /* Releases memory from `alloc`. `ptr` may be NULL when `len` is 0. */
    void (*free)(void *ctx, void *ptr, size_t len, size_t alignment);
} smtp_allocator;

struct smtp_hook_context;

/* Host functions reached through smtp_hook_context.host.
 * Ownership: the table belongs to the host and stays valid for the call. */
typedef struct smtp_host_api {
    uint32_t struct_size;   /* sizeof(smtp_host_api) as the host built it */
    uint32_t reserved;
    /* Looks up `key`. Returns 1 and sets *value and *value_len when the key
     * is present, 0 when it is absent. *value belongs to the host and stays
     * valid until this key is set again or execute_hook returns. */
    int (*get_metadata)(const struct smtp_hook_context *ctx,
                        const uint8_t *key, size_t key_len,
                        const uint8_t **value, size_t *value_len);
    /* Copies `key` and `value` into the context, replacing an earlier value.
     * Returns an smtp_status; the pointers are only read during the call. */
    int (*set_metadata)(struct smtp_hook_context *ctx,
                        const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len);

    /* --- ABI 1.1: present when struct_size covers them. ---------------- */

    /* Wall-clock time, milliseconds since the Unix epoch. (Zig 0.15 and later
     * moved std.time's clock behind std.Io; this is the portable clock.) */
    int64_t (*now_unix_ms)(const struct smtp_hook_context *ctx);
    /* Opens a stream connection to `address`: "tcp:127.0.0.1:6379",
     * "tcp:localhost:389" or "unix:/run/clamav/clamd.sock". The host refuses
     * (SMTP_NET_E_DENIED, and logs it) any address not listed verbatim in
     * the plugin's `allow_connect`. Returns a handle >= 0, or an
     * smtp_net_status. Handles belong to the plugin, stay open across hook
     * calls until net_close, and are closed by the host at unload. */
    int32_t (*net_connect)(struct smtp_hook_context *ctx,
                           const uint8_t *address, size_t address_len,
                           uint32_t timeout_ms);
    /* Sends all `len` bytes. Returns 0, or an smtp_net_status. */
    int32_t (*net_send)(struct smtp_hook_context *ctx, int32_t handle,
                        const uint8_t *data, size_t len, uint32_t timeout_ms);
    /* Waits up to timeout_ms for data and copies up to `cap` bytes (at most
     * 1 MiB per call) into `buf`. Returns the byte count (> 0), 0 when the
     * peer closed the connection, or an smtp_net_status. */
    int32_t (*net_recv)(struct smtp_hook_context *ctx, int32_t handle,
                        uint8_t *buf, size_t cap, uint32_t timeout_ms);
    /* Closes a handle. Returns 0, or SMTP_NET_E_CLOSED for an unknown one. */
    int32_t (*net_close)(struct smtp_hook_context *ctx, int32_t handle);

    /* --- ABI 1.2: present when struct_size covers it. ------------------ */

    /* Adds `by` (0 to SMTP_COUNTER_BY_MAX; 0 reads) to the counter `key` of
     * the fixed window the host's clock is in (window index =
     * floor(now_unix_s / window_seconds), 1 to SMTP_COUNTER_WINDOW_SECONDS_MAX)
     * and returns the count in that window after the addition, or an
     * smtp_counter_status. A count starts at 0 in each window. The host keeps
     * the counters, not the plugin: in the server's memory, or in Redis when
     * the server is configured with one (shared by every server using it),
     * and namespaced by the plugin's name (a plugin never sees another's).
     * Only a plugin granted allow_counters may call it (else
     * SMTP_COUNTER_E_DENIED). `key` is only read during the call. May wait
     * for Redis, bounded by the server's redis_timeout_ms and the hook's
     * deadline: a plugin that counts with Redis should be blocking. */
    int64_t (*counter_incr)(struct smtp_hook_context *ctx,
                            const uint8_t *key, size_t key_len,
                            int64_t by, uint32_t window_seconds);
} smtp_host_api;

/* The context of one hook call.
 * Ownership: the host owns it; it is valid only until execute_hook returns.
 * The plugin may write `cancel` and nothing else. */
typedef struct smtp_hook_context {
    uint32_t struct_size;          /* sizeof(smtp_hook_context) as the host built it */
    smtp_hook_type hook_type;      /* which hook is running (an int) */
    bool cancel;                   /* set it to cancel the operation */
    uint8_t reserved[7];
    const smtp_host_api *host;     /* host functions, never NULL */
    void *host_data;               /* the host's own state; opaque to plugins */
} smtp_hook_context;

/* Plugin metadata.
 * Ownership: the plugin's; the struct and every string it points to must stay
 * valid until the library is unloaded (static data, in practice). The host
 * copies and validates it at load: strings must be UTF-8, at most
 * 256 bytes (description: 4096), at most 64 dependencies. */
typedef struct smtp_plugin_metadata {
    const char *name;               /* required, non-empty: [A-Za-z0-9._-]+ */
    const char *version;            /* required, semantic version, e.g. "1.0.0" */
    const char *author;             /* required, may be "" */
    const char *description;        /* required, may be "" */
    const char *license;            /* required, may be "" */
    /* NULL-terminated array of plugin names, each optionally followed by
     * "@" and a semver range ("spam-filter@^1.0"). NULL means none. */
    const char *const *dependencies;
    const char *min_server_version; /* nullable: no lower bound */
    const char *max_server_version; /* nullable: no upper bound */
    /* Which hooks the plugin handles, as SMTP_HOOK_BIT(hook) bits; 0 means
     * every hook. The host skips the plugin for hooks not listed. */
    uint64_t handled_hooks;
    /* ABI 1.1 (read only from plugins exporting 1.1 or later):
     * SMTP_PLUGIN_FLAG_* bits. */
    uint64_t flags;
} smtp_plugin_metadata;

/* The six plugin functions, in the seed guide's order.
 * Ownership: the plugin's; must stay valid until the library is unloaded. */
typedef struct smtp_plugin_interface {
    /* Called once after load. `config_json` is a NUL-terminated JSON text
     * ("{}" when the plugin has no config), valid only during the call.
     * Returns 0 on success; anything else refuses the plugin. */
    int (*init)(const smtp_allocator *host_allocator, const char *config_json);
    /* Called once before unload, after disable. Frees what init took. Also
     * called after an init that returned non-zero (or failed), so that a
     * plugin can free what its init half-built: it must cope with a deinit
     * after a partial init. */
    void (*deinit)(void);
    /* Returns the plugin's metadata; NULL refuses the plugin. */
    const smtp_plugin_metadata *(*get_metadata)(void);
    /* Runs one hook. Returns an smtp_hook_result. */
    int (*execute_hook)(smtp_hook_context *context);
    /* Returns 0 on success. */
    int (*enable)(void);
    /* Returns 0 on success. */
    int (*disable)(void);
} smtp_plugin_interface;

/* --- Exports of a plugin library --------------------------------------- */

/* Required marker, checked before anything else is called: returns the
 * SMTP_PLUGIN_ABI_VERSION the plugin was built against. The Zig binding
 * exports it for you; C plugins use SMTP_PLUGIN_DECLARE_ABI_VERSION(). */
uint32_t smtp_plugin_abi_version(void);

/* Required entry point: the six functions. When absent, the host falls back
 * to the six individual exports below, all of which are then required. */
const smtp_plugin_interface *smtp_plugin_get_interface(void);

int smtp_plugin_init(const smtp_allocator *host_allocator, const char *config_json);
void smtp_plugin_deinit(void);
const smtp_plugin_metadata *smtp_plugin_get_metadata(void);
int smtp_plugin_execute_hook(smtp_hook_context *context);
int smtp_plugin_enable(void);
int smtp_plugin_disable(void);

#if defined(_WIN32)
#define SMTP_PLUGIN_EXPORT __declspec(dllexport)
#else
#define SMTP_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

#define SMTP_PLUGIN_DECLARE_ABI_VERSION() \
    SMTP_PLUGIN_EXPORT uint32_t smtp_plugin_abi_version(void) { return SMTP_PLUGIN_ABI_VERSION; }

#ifdef __cplusplus
}
#endif

#endif /* SMTP_PLUGIN_H */
