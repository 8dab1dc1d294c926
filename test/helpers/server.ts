import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../../src/paths.js';
import { fixture } from './fixtures.js';

type Section = string | ((dir: string) => string);

/**
 * A temporary server root: config.toml, plugins/ and var/ folders. Each
 * option is TOML appended to its section, or a function of the root folder
 * returning it; `plugins` replaces the [plugins] section; `policy` and
 * `admin`, when given, are those sections.
 */
export function serverRoot(options: { server?: Section; storage?: Section; delivery?: Section; policy?: Section; plugins?: Section; admin?: Section } = {}): { dir: string; config: string; maildir: string; spool: string; quarantine: string } {
  const dir = mkdtempSync(join(tmpdir(), 'smtp-root-'));
  for (const sub of ['var/spool', 'var/maildir', 'var/quarantine', 'plugins']) mkdirSync(join(dir, sub), { recursive: true });
  const text = (section: Section | undefined): string => (typeof section === 'function' ? section(dir) : (section ?? ''));
  const config = join(dir, 'config.toml');
  writeFileSync(
    config,
    [
      `[server]\nhost = "127.0.0.1"\nport = 0\nhostname = "mx.test"\n${text(options.server)}`,
      `[storage]\nspool_dir = "var/spool"\nquarantine_dir = "var/quarantine"\n${text(options.storage)}`,
      `[delivery]\nmaildir_root = "var/maildir"\n${text(options.delivery)}`,
      options.policy === undefined ? '' : `[policy]\n${text(options.policy)}`,
      options.plugins === undefined ? '[plugins]\nenabled = true\ndirectory = "./plugins"\n' : text(options.plugins),
      options.admin === undefined ? '' : `[admin]\n${text(options.admin)}`,
    ].join('\n'),
  );
  return { dir, config, maildir: join(dir, 'var/maildir'), spool: join(dir, 'var/spool'), quarantine: join(dir, 'var/quarantine') };
}

/** Every message in the Maildirs under `root` (any mailbox, new/), as text. */
export function maildirTexts(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((box) => {
    const dir = join(root, box, 'new');
    return existsSync(dir) ? readdirSync(dir).map((f) => readFileSync(join(dir, f), 'latin1')) : [];
  });
}

/** Polls `check` until it holds; throws naming `what` after `timeoutMs`. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits (bounded) until something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((done) => {
      const socket = createConnection({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        done(true);
      });
      socket.on('error', () => done(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
}

/** A free loopback port (bound then released). */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((done) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

/** The real `smtp-server` command as a child process; stdout/stderr collected. */
export interface ServerProcess {
  readonly child: ChildProcess;
  readonly port: number;
  logs(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function startServerProcess(args: string[], port: number, env: NodeJS.ProcessEnv = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), ...args, '--port', String(port)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
  try {
    await Promise.race([waitForPort(port), exited.then((code) => Promise.reject(new Error(`server exited ${code}: ${output}`)))]);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  return {
    child,
    port,
    logs: () => output,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

export interface ClientRun {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a client program to completion without blocking the event loop (a
 * server under test may be running in this very process), killed after
 * `timeoutMs`.
 */
export function runClient(command: string, args: string[], timeoutMs = 60_000): Promise<ClientRun> {
  return new Promise((done) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (status) => {
      clearTimeout(timer);
      done({ status, stdout, stderr });
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      done({ status: null, stdout, stderr: stderr + error.message });
    });
  });
}

/** Python's smtplib as a real client. */
export function python(script: string, timeoutMs = 60_000): Promise<ClientRun> {
  return runClient('python3', ['-c', script], timeoutMs);
}

export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

/**
 * A server root whose only plugin is the in-process blocking probe
 * (c_isolation_probe.c built with SMTP_PLUGIN_FLAG_BLOCKING), with its hook
 * deadline: its sender-driven behaviours (nap@, doze@, hang@) exercise
 * deadlines and the hooks the server does not wait for.
 */
export function blockingProbeRoot(hookTimeoutMs: number): ReturnType<typeof serverRoot> {
  const root = serverRoot({
    plugins:
      '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n' +
      '[[plugins.plugin]]\nname = "isolation-probe"\nlibrary = "libprobe.so"\n\n' +
      `[plugins.plugin.limits]\nhook_timeout_ms = ${hookTimeoutMs}\n`,
  });
  copyFileSync(fixture('c_blocking_probe'), join(root.dir, 'plugins', 'libprobe.so'));
  return root;
}
