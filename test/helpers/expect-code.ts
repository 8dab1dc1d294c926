import { expect } from 'vitest';
import { isHostError, type ErrorCode } from '../../src/errors.js';

/** Runs `run` and requires a HostError with `code` whose message contains `mentions`. */
export function expectCode(run: () => unknown, code: ErrorCode, mentions?: string): void {
  try {
    run();
  } catch (error) {
    expect(isHostError(error, code), String(error)).toBe(true);
    if (mentions !== undefined) expect((error as Error).message).toContain(mentions);
    return;
  }
  throw new Error(`expected ${code}`);
}
