/**
 * Every error the host raises is a HostError with a stable code. Codes are
 * never reused; docs/errors.md lists each one and test/errors.test.ts keeps
 * the two in sync in both directions.
 */

/** The SMTP reply an error maps to, where one applies. */
export interface SmtpReply {
  readonly code: number;
  readonly enhanced: string;
}

export class HostError extends Error {
  readonly code: string;
  readonly reply: SmtpReply | undefined;

  constructor(code: string, message: string, options?: { cause?: unknown; reply?: SmtpReply }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HostError';
    this.code = code;
    this.reply = options?.reply;
  }
}

const TEMPFAIL: SmtpReply = { code: 451, enhanced: '4.3.0' };

/** code -> [what it means, the SMTP reply it maps to]. */
export const ERROR_CODES = {
  SMTP_E_PLUGIN_NOT_FOUND: ['The plugin file does not exist or cannot be read.', undefined],
  SMTP_E_PLUGIN_NOT_LIBRARY: ['The file is not a loadable shared library (or the loader refused it).', undefined],
  SMTP_E_PLUGIN_UNSUPPORTED_FILE: ['The file name has no extension the host knows (.so, .dylib, .dll, .wasm).', undefined],
  SMTP_E_PLUGIN_MISSING_EXPORT: ['A required export is absent.', undefined],
  SMTP_E_PLUGIN_ABI_VERSION: ["The plugin's ABI version is not one this host runs.", undefined],
  SMTP_E_PLUGIN_METADATA: ['The metadata is NULL, not UTF-8, over a bound, or malformed.', undefined],
  SMTP_E_PLUGIN_INIT: ['init returned non-zero.', undefined],
  SMTP_E_PLUGIN_ENABLE: ['enable returned non-zero.', undefined],
  SMTP_E_PLUGIN_DISABLE: ['disable returned non-zero.', undefined],
  SMTP_E_PLUGIN_HOOK_CODE: ['execute_hook returned a value other than 0, 1 or 2.', TEMPFAIL],
  SMTP_E_PLUGIN_STATE: ['An illegal lifecycle transition (for example enable before init).', undefined],
  SMTP_E_PLUGIN_DUPLICATE: ['A plugin with the same name is already loaded.', undefined],
  SMTP_E_PLUGIN_UNKNOWN: ['No loaded plugin has that name.', undefined],
  SMTP_E_PLUGIN_DEPENDENCY: ['A dependency is missing, disabled, outside its semver range or malformed, or a plugin others depend on was to be disabled without cascade.', undefined],
  SMTP_E_PLUGIN_CYCLE: ['Plugin dependencies form a cycle (a plugin depending on itself included).', undefined],
  SMTP_E_PLUGIN_SERVER_VERSION: ["The server's version is outside a plugin's min_server_version / max_server_version.", undefined],
  SMTP_E_PLUGIN_CONFIG: ["The plugin's configuration is not a JSON text.", undefined],
  SMTP_E_HOOK_UNKNOWN: ['The hook name is not one of the 19 hooks.', undefined],
  SMTP_E_METADATA_LIMIT: ['A metadata key or value is empty, over its bound, or too many keys are set.', TEMPFAIL],
  SMTP_E_RUNTIME_MISSING: ['The native host runtime library has not been built.', undefined],
  SMTP_E_ZIG_NOT_FOUND: ['The pinned Zig is neither installed in .toolchain/ nor on PATH, and could not be installed.', undefined],
  SMTP_E_ZIG_VERSION: ['The requested Zig version is not one the project supports.', undefined],
  SMTP_E_BUILD_FAILED: ['Zig or the C compiler reported an error building a plugin.', undefined],
  SMTP_E_BUILD_TARGET: ['The build target is unknown or not supported yet.', undefined],
  SMTP_E_CLI_USAGE: ['The command line is malformed.', undefined],
  SMTP_E_SPOOL_WRITE: ['A message could not be written and flushed to the spool; the client gets a 4xx and keeps the message.', TEMPFAIL],
  SMTP_E_SPOOL_READ: ['A spool entry could not be read back (for delivery or recovery).', undefined],
  SMTP_E_DELIVERY_MAILDIR: ['Maildir delivery failed, or the recipient is not a safe mailbox name.', undefined],
  SMTP_E_DELIVERY_RELAY: ['The smarthost refused the message (permanent) or could not be reached (temporary, retried).', undefined],
  SMTP_E_CONFIG: ['The config file cannot be read, is not valid TOML, has an unknown key or a value of the wrong type or out of range, names a plugin file outside its directory, or asks for something unsafe where it is (auth_insecure off loopback).', undefined],
  SMTP_E_PLUGIN_OPTIONS: ['A plugin limit or failure-policy option is out of range or of the wrong type.', undefined],
  SMTP_E_WASM_INVALID: ['The file is not a WebAssembly module, is truncated, or does not compile.', undefined],
  SMTP_E_WASM_UNSUPPORTED: ['The module uses a WebAssembly feature the sandbox does not run (SIMD, threads, shared or 64-bit memory, exceptions).', undefined],
  SMTP_E_WASM_IMPORT: ['The module imports something outside the allowed set (the WASI preview1 functions, env.memory and the smtp_host clock, network and counter functions).', undefined],
  SMTP_E_WASM_MEMORY: ["The module's initial memory is larger than its memory limit.", undefined],
  SMTP_E_WASM_TRAP: ['The module trapped (unreachable, out-of-bounds access, stack overflow) in start, init or a hook.', TEMPFAIL],
  SMTP_E_WASM_DEADLINE: ['A hook ran past its deadline and was interrupted.', TEMPFAIL],
  SMTP_E_WASM_EXIT: ['The module called proc_exit.', TEMPFAIL],
  SMTP_E_COMPONENT_INVALID: ['The file is not a WebAssembly component, or jco cannot transpile it.', undefined],
  SMTP_E_COMPONENT_WORLD: ['The component does not implement the smtp:plugin/smtp-plugin world (abi/smtp-plugin.wit).', undefined],
  SMTP_E_COMPONENT_IMPORT: ['The component imports an interface the host does not grant (only smtp:plugin/types and smtp:plugin/host).', undefined],
  SMTP_E_QUARANTINE_PATH: ['A plugin asked for a quarantine_path outside [storage] quarantine_dir (or one that cannot be created); the message was kept in quarantine_dir itself.', undefined],
  SMTP_E_NET_DENIED: ['A plugin asked to connect to an address its allow_connect grants do not list; the host refused the connection (the plugin sees SMTP_NET_E_DENIED) and logged it.', undefined],
  SMTP_E_COUNTER_DENIED: ['A plugin called counter_incr without allow_counters = true in its entry; the host refused the call (the plugin sees SMTP_COUNTER_E_DENIED) and logged it.', undefined],
  SMTP_E_COUNTER_UNAVAILABLE: ['The Redis behind the host counters ([cluster] redis) does not answer, or the host counters cannot use it (rediss:// TLS, a name that does not resolve); counter calls meanwhile answer per on_redis_down.', undefined],
  SMTP_E_WASM_BOUNDS: ['The module handed back a pointer or length outside its memory or over a metadata bound.', TEMPFAIL],
  SMTP_E_LISTEN: ['The server could not listen on its address: the port is in use, needs privileges, or the host is not an address of this machine or does not resolve.', undefined],
  SMTP_E_PLUGIN_CRASHED: ["A process-isolated plugin's process died (a signal such as SIGSEGV, or exit()); the message names the signal or the exit status. The plugin is restarted on its next call.", TEMPFAIL],
  SMTP_E_PLUGIN_DEADLINE: ['A native plugin ran past its deadline (hook_timeout_ms); a process-isolated one is killed (SIGKILL) and restarted on its next call. An in-process blocking one cannot be stopped: its thread runs on, and its calls fail at once until it returns.', TEMPFAIL],
  SMTP_E_MILTER_UNAVAILABLE: ['A milter could not be reached (refused, no such socket) or closed the connection during a session.', TEMPFAIL],
  SMTP_E_MILTER_TIMEOUT: ['A milter did not accept the connection within connect_timeout_ms, or did not answer an event within command_timeout_ms; the connection is closed.', TEMPFAIL],
  SMTP_E_MILTER_PROTOCOL: ['A milter peer sent a frame over the negotiated bound, a short, unterminated or over-long payload, or an unknown command, reply or address family (or the host was asked to encode one).', TEMPFAIL],
  SMTP_E_ADMIN_AUTH: ['An admin API call that changes state (or reads the config) came without the bearer token of [admin], or with another one: HTTP 401.', undefined],
  SMTP_E_ADMIN_REQUEST: ['An admin API or CLI request is malformed: unknown path or method, a body that is not JSON or over its bound, an empty queue selector, or a server that answers something else than the admin API (HTTP 400, 404, 405 or 413).', undefined],
  SMTP_E_ADMIN_UNREACHABLE: ['The CLI could not reach the running server\'s admin listener (not configured, not running, or refused).', undefined],
} as const satisfies Record<string, readonly [string, SmtpReply | undefined]>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** True when `code` is one of ERROR_CODES (a code that crossed a thread or process boundary as text). */
export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CODES, code);
}

export function hostError(code: ErrorCode, message: string, cause?: unknown): HostError {
  const reply = ERROR_CODES[code][1];
  return new HostError(code, message, reply === undefined ? { cause } : { cause, reply });
}

export function isHostError(error: unknown, code?: ErrorCode): error is HostError {
  return error instanceof HostError && (code === undefined || error.code === code);
}
