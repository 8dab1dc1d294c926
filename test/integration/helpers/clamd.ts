import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { hasCommand } from '../../helpers/server.js';
import { startService, type Service } from './process.js';

/**
 * The EICAR test file: harmless, and detected by every scanner once a
 * signature for it is loaded. Written with its `$`, `\` and `!` as they are.
 */
export const EICAR = 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*';

/**
 * The file the signature is made from: sigtool names the signature after it,
 * and clamd adds `.UNOFFICIAL` to any signature not from ClamAV's own
 * databases, so a detection reads `stream: Eicar-Test-Signature.UNOFFICIAL FOUND`.
 */
const SIGNATURE_FILE = 'Eicar-Test-Signature';
export const EICAR_VIRUS_NAME = `${SIGNATURE_FILE}.UNOFFICIAL`;

/** The Debian package ships clamd and sigtool but no database offline. */
export function clamdAvailable(): boolean {
  return hasCommand('clamd') && hasCommand('sigtool');
}

export interface Clamd {
  readonly dir: string;
  /** The unix socket clamd listens on. */
  readonly socket: string;
  /** The socket as a plugin address and `allow_connect` grant: `unix:<socket>`. */
  readonly address: string;
  readonly service: Service;
  /** SIGTERM by PID; clamd removes its socket file as it exits. */
  stop(): Promise<void>;
}

/**
 * Sends one NUL-terminated ("z") clamd command and collects the reply until
 * clamd closes the connection, bounded by `timeoutMs`.
 */
export function clamdCommand(socket: string, command: string, timeoutMs = 2_000): Promise<string> {
  return new Promise((done, fail) => {
    const client = connect(socket);
    let reply = '';
    const timer = setTimeout(() => {
      client.destroy();
      fail(new Error(`clamd at ${socket} did not answer ${command} within ${timeoutMs} ms`));
    }, timeoutMs);
    client.on('connect', () => client.write(`z${command}\0`));
    client.on('data', (chunk) => (reply += chunk.toString('utf8')));
    client.on('end', () => {
      clearTimeout(timer);
      done(reply.replace(/\0$/, ''));
    });
    client.on('error', (error) => {
      clearTimeout(timer);
      fail(error);
    });
  });
}

/**
 * Starts a real clamd in `dir` (a folder the test made with mkdtempSync), on
 * the unix socket `dir/clamd.sock`, with a database of one signature, for
 * EICAR, built here by sigtool: nothing is downloaded. Ready once it answers
 * PING with PONG (about 2 s).
 *
 * No `User` line: clamd then runs as whoever starts it. `User root` changes
 * nothing for root and makes clamd fail for anyone else, who cannot switch.
 */
export async function startClamd(dir: string): Promise<Clamd> {
  if (!clamdAvailable()) throw new Error('clamd and sigtool not found: apt-get install clamav-daemon (clamd is in /usr/sbin)');
  const db = join(dir, 'db');
  mkdirSync(db, { recursive: true });
  const sample = join(dir, SIGNATURE_FILE);
  writeFileSync(sample, EICAR);
  const sig = spawnSync('sigtool', ['--md5', SIGNATURE_FILE], { cwd: dir, encoding: 'utf8' });
  if (sig.status !== 0) throw new Error(`sigtool --md5 failed: ${sig.stderr}`);
  writeFileSync(join(db, 'test.hdb'), sig.stdout);

  const socket = join(dir, 'clamd.sock');
  const config = join(dir, 'clamd.conf');
  writeFileSync(
    config,
    [
      `LocalSocket ${socket}`,
      'LocalSocketMode 600',
      `DatabaseDirectory ${db}`,
      'Foreground yes',
      // clamd's own limit on one INSTREAM; past it, "INSTREAM size limit exceeded. ERROR".
      'StreamMaxLength 25M',
      // Nothing to reload in a test database; no background thread waking up.
      'SelfCheck 0',
      '',
    ].join('\n'),
  );
  const service = await startService('clamd', ['-c', config], async () => (await clamdCommand(socket, 'PING', 1_000)) === 'PONG', { cwd: dir, timeoutMs: 30_000 });
  return { dir, socket, address: `unix:${socket}`, service, stop: () => service.stop() };
}
