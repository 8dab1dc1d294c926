import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../helpers/server.js';
import { startService, type Service } from './process.js';

/**
 * A real rsyslogd collecting syslog over TCP on 127.0.0.1, in a temporary
 * folder: only imtcp is loaded (no imuxsock, no imklog: the test's rsyslog
 * must not read the machine's logs), and every message received is written
 * as its raw text, one per line, to `receivedPath`. It can be stopped and
 * started again on the same port, to play a collector that goes down.
 */
export interface Rsyslog {
  readonly port: number;
  /** "tcp:127.0.0.1:PORT": the plugin's collector and its allow_connect grant. */
  readonly address: string;
  readonly dir: string;
  readonly receivedPath: string;
  readonly running: boolean;
  /** Every message received so far, in order, across restarts. */
  received(): string[];
  /** Waits (bounded) until at least `count` messages were received; returns them all. */
  waitForReceived(count: number, timeoutMs?: number): Promise<string[]>;
  /** Starts rsyslogd again on the same port (after stop). */
  start(): Promise<void>;
  /** SIGTERM by PID; resolves when the process has exited. */
  stop(): Promise<void>;
}

/** Messages longer than this are cut by rsyslog; the plugin's records stay far below. */
const MESSAGE_BYTES_MAX = '64k';

function configText(dir: string, port: number, receivedPath: string): string {
  return [
    `global(workDirectory="${join(dir, 'work')}" maxMessageSize="${MESSAGE_BYTES_MAX}")`,
    'module(load="imtcp")',
    // %rawmsg%: the message exactly as sent (octet-count frame removed), so
    // the test checks what the plugin wrote, not rsyslog's re-rendering.
    'template(name="raw" type="string" string="%rawmsg%\\n")',
    'ruleset(name="collect") {',
    `  action(type="omfile" file="${receivedPath}" template="raw" flushOnTXEnd="on" asyncWriting="off")`,
    '}',
    `input(type="imtcp" address="127.0.0.1" port="${port}" ruleset="collect")`,
    '',
  ].join('\n');
}

function accepts(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      done(true);
    });
    socket.on('error', () => done(false));
  });
}

export async function startRsyslog(options: { port?: number } = {}): Promise<Rsyslog> {
  const dir = mkdtempSync(join(tmpdir(), 'rsyslog-'));
  mkdirSync(join(dir, 'work'));
  const port = options.port ?? (await freePort());
  const receivedPath = join(dir, 'received.log');
  const configPath = join(dir, 'rsyslog.conf');
  const pidPath = join(dir, 'rsyslogd.pid');
  writeFileSync(configPath, configText(dir, port, receivedPath));

  let service: Service | undefined;
  const launch = async (): Promise<void> => {
    // A pid file left by a killed rsyslogd would make the next one refuse to start.
    rmSync(pidPath, { force: true });
    service = await startService('rsyslogd', ['-n', '-f', configPath, '-i', pidPath], () => accepts(port), { cwd: dir });
  };
  const received = (): string[] => (existsSync(receivedPath) ? readFileSync(receivedPath, 'utf8').split('\n').filter((line) => line.length > 0) : []);

  await launch();
  return {
    port,
    address: `tcp:127.0.0.1:${port}`,
    dir,
    receivedPath,
    get running() {
      return service !== undefined;
    },
    received,
    async waitForReceived(count, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const lines = received();
        if (lines.length >= count) return lines;
        if (Date.now() > deadline) throw new Error(`rsyslog received ${lines.length} of ${count} messages after ${timeoutMs} ms:\n${lines.join('\n')}\n${service?.output() ?? ''}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async start() {
      if (service !== undefined) throw new Error('rsyslogd is already running');
      await launch();
    },
    async stop() {
      const running = service;
      service = undefined;
      await running?.stop();
    },
  };
}
