import pino, { type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';
import { optionalPackage } from './optional-package.js';

export type { Logger };

/**
 * The host's logger on stderr: JSON lines, or human-readable lines when a
 * person is watching a terminal (stderr is a TTY). SMTP_PLUGIN_DEBUG=1 lowers
 * the level to debug, as in the seed guide; LOG_LEVEL sets it outright.
 */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  const level = options.level ?? process.env.LOG_LEVEL ?? (process.env.SMTP_PLUGIN_DEBUG === '1' ? 'debug' : 'info');
  // Synchronous writes: an asynchronous one runs on libuv's thread pool, which a
  // stuck native hook may be holding (src/native/pool-calls.ts), and the last
  // line before a forced exit (src/cli/shutdown.ts) must be written, not queued.
  // pino-pretty only for a person at a terminal: a server logging JSON never loads it.
  const pretty = (options: PinoPretty.PrettyOptions): PinoPretty.PrettyStream => optionalPackage<typeof PinoPretty>('pino-pretty')(options);
  const destination = process.stderr.isTTY ? pretty({ destination: 2, sync: true, colorize: true }) : pino.destination({ dest: 2, sync: true });
  return pino({ name: options.name ?? 'smtp-plugin-host', level }, destination);
}

/** A logger that writes nothing, for library use without logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

