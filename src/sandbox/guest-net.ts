import { NetStatus } from '../abi/hooks.js';
import type { Logger } from '../log.js';
import { deniedConnectLogger } from '../plugin/denied-log.js';

/** The import module through which a sandboxed plugin reaches the clock and the network (abi/zig/wasm_guest.zig). */
export const NET_IMPORT_MODULE = 'smtp_host';
export const NET_IMPORT_NAMES: readonly string[] = ['now_unix_ms', 'net_connect', 'net_send', 'net_recv', 'net_close'];

/** The most one net_recv copies into the guest, as in the header. */
export const RECV_BYTES_MAX = 1024 * 1024;
/** The longest address a plugin may ask for. */
const ADDRESS_BYTES_MAX = 256;

/**
 * What a sandboxed plugin's network calls reach. Timeouts arrive already
 * bounded by the hook's deadline. Results follow the header: a handle or a
 * count >= 0, or an smtp_net_status.
 */
export interface GuestNet {
  connect(address: string, timeoutMs: number): number;
  send(handle: number, data: Uint8Array, timeoutMs: number): number;
  /** Bytes read (empty: the peer closed), or an smtp_net_status. */
  recv(handle: number, cap: number, timeoutMs: number): Uint8Array | number;
  close(handle: number): number;
  /** Closes every connection (the instance is being dropped or unloaded). */
  closeAll(): void;
}

/**
 * The network of a plugin that runs in the event loop's thread: it has no
 * grants (a plugin with allow_connect runs in a worker), so every connect is
 * refused and logged.
 */
export function deniedNet(logger: Logger): GuestNet {
  const logDenied = deniedConnectLogger(logger, 'sandboxed plugin asked for a connection it was not granted (allow_connect)');
  return {
    connect(address) {
      logDenied(address);
      return NetStatus.DENIED;
    },
    send: () => NetStatus.CLOSED,
    recv: () => NetStatus.CLOSED,
    close: () => NetStatus.CLOSED,
    closeAll: () => undefined,
  };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The "smtp_host" import object over `net`: reads and writes guest memory
 * with bounds checks, and clamps every timeout to what is left of the
 * hook's deadline (`remainingMs`).
 */
export function netImports(memory: () => WebAssembly.Memory, net: GuestNet, remainingMs: () => number): WebAssembly.ModuleImports {
  const bytes = (ptr: number, len: number): Uint8Array | null => {
    const buffer = memory().buffer;
    const start = ptr >>> 0;
    const length = len >>> 0;
    if (start + length > buffer.byteLength) return null;
    return new Uint8Array(buffer, start, length);
  };
  const bounded = (timeoutMs: number): number => Math.max(0, Math.min(timeoutMs >>> 0, Math.floor(remainingMs())));
  return {
    now_unix_ms: (): bigint => BigInt(Date.now()),
    net_connect: (ptr: number, len: number, timeoutMs: number): number => {
      if (len >>> 0 > ADDRESS_BYTES_MAX) return NetStatus.ADDRESS;
      const view = bytes(ptr, len);
      if (view === null) return NetStatus.ADDRESS;
      let address: string;
      try {
        address = utf8.decode(view);
      } catch {
        return NetStatus.ADDRESS;
      }
      return net.connect(address, bounded(timeoutMs));
    },
    net_send: (handle: number, ptr: number, len: number, timeoutMs: number): number => {
      const view = bytes(ptr, len);
      if (view === null) return NetStatus.LIMIT;
      return net.send(handle, view, bounded(timeoutMs));
    },
    net_recv: (handle: number, ptr: number, cap: number, timeoutMs: number): number => {
      const want = Math.min(cap >>> 0, RECV_BYTES_MAX);
      if (want === 0 || bytes(ptr, want) === null) return NetStatus.LIMIT;
      const got = net.recv(handle, want, bounded(timeoutMs));
      if (typeof got === 'number') return got;
      // Guest memory may have grown (and moved) meanwhile: take a fresh view.
      bytes(ptr, got.length)!.set(got);
      return got.length;
    },
    net_close: (handle: number): number => net.close(handle),
  };
}
