// Types for bench/_postfix.mjs, which test/integration/milter_postfix.test.ts imports too.
export interface PrivatePostfix {
  readonly dir: string;
  readonly port: number;
  readonly pid: number;
  readonly description: string;
  cpuTicks(): number;
  drained(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Why a private Postfix cannot run here, or null. */
export function postfixMissing(): string | null;

/** Starts a private instance; `mainExtra`: more main.cf lines. */
export function startPostfix(options?: { mainExtra?: string }): Promise<PrivatePostfix>;
