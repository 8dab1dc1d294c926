import { expect } from 'vitest';
import { isHostError, type ErrorCode } from '../../src/errors.js';

/** Runs `run` (awaiting it when it answers with a promise) and requires a HostError with `code` whose message contains `mentions`. */
export async function expectCode(run: () => unknown, code: ErrorCode, mentions?: string): Promise<void> {
  try {
    await run();
  } catch (error) {
    expect(isHostError(error, code), String(error)).toBe(true);
    if (mentions !== undefined) expect((error as Error).message).toContain(mentions);
    return;
  }
  throw new Error(`expected ${code}`);
}
