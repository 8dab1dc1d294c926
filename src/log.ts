import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

/**
 * The host's logger on stderr: JSON lines, or human-readable lines when a
 * person is watching a terminal (stderr is a TTY). SMTP_PLUGIN_DEBUG=1 lowers
 * the level to debug, as in the seed guide; LOG_LEVEL sets it outright.
 */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  const level = options.level ?? process.env.LOG_LEVEL ?? (process.env.SMTP_PLUGIN_DEBUG === '1' ? 'debug' : 'info');
  const destination = process.stderr.isTTY ? pretty({ destination: 2, sync: true, colorize: true }) : pino.destination(2);
  return pino({ name: options.name ?? 'smtp-plugin-host', level }, destination);
}

/** A logger that writes nothing, for library use without logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/**
 * Writes out what the logger still buffers, synchronously: for the last
 * lines before the process ends without Node's exit handlers (exitNow).
 */
export function flushLogSync(logger: Logger): void {
  const stream = (logger as unknown as Record<symbol, { flushSync?: () => void } | undefined>)[pino.symbols.streamSym];
  try {
    stream?.flushSync?.();
  } catch {
    // Not open yet, or closed: nothing of ours is buffered in it.
  }
}
