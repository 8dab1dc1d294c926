import { spawn, type ChildProcess } from 'node:child_process';

/** A service process a test started; stopped by its PID. */
export interface Service {
  readonly pid: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts `command` in the foreground (the service must not daemonize), then
 * polls `ready` (bounded by `timeoutMs`) until it resolves true. A process
 * that exits first, or never gets ready, is killed and the error carries its
 * output.
 */
export async function startService(command: string, args: readonly string[], ready: () => Promise<boolean>, options: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Service> {
  const child: ChildProcess = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout!.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
  let exited = false;
  const exit = new Promise<void>((done) => child.once('exit', () => ((exited = true), done())));
  child.once('error', (error) => (text += `\n${error.message}`));
  const service: Service = {
    pid: child.pid ?? -1,
    output: () => text,
    async stop(graceMs = 3000) {
      if (exited || child.pid === undefined) return;
      process.kill(child.pid, 'SIGTERM');
      const timer = setTimeout(() => !exited && child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), graceMs);
      await exit;
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  while (Date.now() < deadline) {
    if (exited) throw new Error(`${command} exited before it was ready:\n${text}`);
    if (await ready().catch(() => false)) return service;
    await new Promise((r) => setTimeout(r, 100));
  }
  await service.stop();
  throw new Error(`${command} was not ready after ${options.timeoutMs ?? 20_000} ms:\n${text}`);
}
