import { randomFillSync } from 'node:crypto';
import type { Logger } from '../log.js';

/**
 * The host's own WASI preview1 import object, deny by default: fd_write on
 * stdout and stderr goes to the plugin's logger, clocks and random work,
 * proc_exit ends the call with an error, and everything else (files,
 * sockets, environment, arguments) answers ENOTCAPABLE and is logged once.
 */
export const WASI_MODULE = 'wasi_snapshot_preview1';

/** Every preview1 function; a module may import any of these, and nothing else from WASI. */
export const WASI_PREVIEW1_FUNCTIONS: readonly string[] = [
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'clock_res_get', 'clock_time_get',
  'fd_advise', 'fd_allocate', 'fd_close', 'fd_datasync', 'fd_fdstat_get', 'fd_fdstat_set_flags',
  'fd_fdstat_set_rights', 'fd_filestat_get', 'fd_filestat_set_size', 'fd_filestat_set_times', 'fd_pread',
  'fd_prestat_get', 'fd_prestat_dir_name', 'fd_pwrite', 'fd_read', 'fd_readdir', 'fd_renumber', 'fd_seek',
  'fd_sync', 'fd_tell', 'fd_write', 'path_create_directory', 'path_filestat_get', 'path_filestat_set_times',
  'path_link', 'path_open', 'path_readlink', 'path_remove_directory', 'path_rename', 'path_symlink',
  'path_unlink_file', 'poll_oneoff', 'proc_exit', 'proc_raise', 'sched_yield', 'random_get', 'sock_accept',
  'sock_recv', 'sock_send', 'sock_shutdown',
];

const ERRNO_SUCCESS = 0;
const ERRNO_BADF = 8;
const ERRNO_INVAL = 28;
const ERRNO_NOTCAPABLE = 76;
/** Characters of plugin output buffered per stream before a line is forced out. */
const LINE_CHARS_MAX = 8192;

/** Thrown by proc_exit; unwinds the module's call. */
export class ProcExit extends Error {
  constructor(readonly exitCode: number) {
    super(`proc_exit(${exitCode})`);
  }
}

type ImportFunction = (...args: never[]) => unknown;

export interface WasiHost {
  readonly imports: Record<string, ImportFunction>;
  /** Writes partial output lines to the log. */
  flush(): void;
}

/** `memory()` returns the instance's current memory (it changes when the instance is replaced). */
export function createWasi(memory: () => WebAssembly.Memory, logger: Logger): WasiHost {
  const pending: Record<1 | 2, string> = { 1: '', 2: '' };
  const refused = new Set<string>();
  const decoder = new TextDecoder();

  const emit = (fd: 1 | 2, text: string): void => {
    if (fd === 1) logger.info({ stream: 'stdout' }, text);
    else logger.warn({ stream: 'stderr' }, text);
  };
  const write = (fd: 1 | 2, chunk: string): void => {
    let text = pending[fd] + chunk;
    let newline = text.indexOf('\n');
    while (newline >= 0) {
      emit(fd, text.slice(0, newline));
      text = text.slice(newline + 1);
      newline = text.indexOf('\n');
    }
    if (text.length > LINE_CHARS_MAX) {
      emit(fd, text);
      text = '';
    }
    pending[fd] = text;
  };

  const view = (): DataView => new DataView(memory().buffer);
  const inBounds = (ptr: number, len: number): boolean => ptr >= 0 && len >= 0 && ptr + len <= memory().buffer.byteLength;

  const allowed: Record<string, ImportFunction> = {
    fd_write: (fd: number, iovs: number, iovsLen: number, nwritten: number): number => {
      if (fd !== 1 && fd !== 2) return ERRNO_BADF;
      if (!inBounds(iovs, iovsLen * 8) || !inBounds(nwritten, 4)) return ERRNO_INVAL;
      const dv = view();
      let total = 0;
      for (let i = 0; i < iovsLen; i++) {
        const ptr = dv.getUint32(iovs + i * 8, true);
        const len = dv.getUint32(iovs + i * 8 + 4, true);
        if (!inBounds(ptr, len)) return ERRNO_INVAL;
        write(fd, decoder.decode(new Uint8Array(memory().buffer, ptr, len)));
        total += len;
      }
      dv.setUint32(nwritten, total, true);
      return ERRNO_SUCCESS;
    },
    clock_time_get: (id: number, _precision: bigint, out: number): number => {
      if (!inBounds(out, 8)) return ERRNO_INVAL;
      const ns = id === 0 ? BigInt(Date.now()) * 1_000_000n : process.hrtime.bigint();
      view().setBigUint64(out, ns, true);
      return ERRNO_SUCCESS;
    },
    clock_res_get: (_id: number, out: number): number => {
      if (!inBounds(out, 8)) return ERRNO_INVAL;
      view().setBigUint64(out, 1000n, true);
      return ERRNO_SUCCESS;
    },
    random_get: (ptr: number, len: number): number => {
      if (!inBounds(ptr, len)) return ERRNO_INVAL;
      randomFillSync(new Uint8Array(memory().buffer, ptr, len));
      return ERRNO_SUCCESS;
    },
    sched_yield: (): number => ERRNO_SUCCESS,
    // No preopened directories: wasi-libc's start-up scan stops at the first EBADF, so fopen() then fails with an errno instead of the scan ending the module (exit 71).
    fd_prestat_get: (): number => ERRNO_BADF,
    proc_exit: (code: number): never => {
      throw new ProcExit(code);
    },
  };

  const imports: Record<string, ImportFunction> = {};
  for (const name of WASI_PREVIEW1_FUNCTIONS) {
    imports[name] = allowed[name] ?? ((): number => {
      if (!refused.has(name)) {
        refused.add(name);
        logger.warn({ wasi: name }, `sandbox refused ${name}: files, sockets, environment and arguments are not available`);
      }
      return ERRNO_NOTCAPABLE;
    });
  }
  return {
    imports,
    flush(): void {
      for (const fd of [1, 2] as const) {
        if (pending[fd] !== '') emit(fd, pending[fd]);
        pending[fd] = '';
      }
    },
  };
}
