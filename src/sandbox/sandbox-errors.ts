import { hostError, isHostError, type HostError } from '../errors.js';
import { ProcExit } from './wasi.js';

/** Thrown by the deadline check inside a sandboxed call; unwinds the guest. */
export class DeadlineExceeded extends Error {}

/** Loop iterations between two clock reads of the deadline check. */
export const BUDGET_ITERATIONS = 10_000;

/**
 * Names what went wrong in a sandboxed call (core wasm or component): the
 * deadline, proc_exit, or a trap (anything else the guest threw).
 */
export function classifySandboxError(error: unknown, where: string, hookTimeoutMs: number): HostError {
  if (isHostError(error)) return error;
  if (error instanceof DeadlineExceeded) return hostError('SMTP_E_WASM_DEADLINE', `${where}: interrupted after its ${hookTimeoutMs} ms deadline`, error);
  if (error instanceof ProcExit) return hostError('SMTP_E_WASM_EXIT', `${where}: called proc_exit(${error.exitCode})`, error);
  return hostError('SMTP_E_WASM_TRAP', `${where}: trapped (${(error as Error).message})`, error);
}
