import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../../src/paths.js';

export interface CliRun {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the real `smtp-server` command (bin/smtp-server.js over dist/). */
export function runCli(args: string[], options: { cwd?: string } = {}): CliRun {
  const result = spawnSync(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), ...args], {
    encoding: 'utf8',
    cwd: options.cwd ?? PROJECT_ROOT,
    timeout: 120_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The one JSON line `plugin call` prints. */
export function callJson(run: CliRun): { code: number; cancel: boolean; metadata: Record<string, string> } {
  if (run.status !== 0) throw new Error(`plugin call failed (${run.status}): ${run.stderr}`);
  const lines = run.stdout.trim().split('\n');
  if (lines.length !== 1) throw new Error(`expected one line, got: ${run.stdout}`);
  return JSON.parse(lines[0]!) as { code: number; cancel: boolean; metadata: Record<string, string> };
}
