import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * The host's logger: JSON lines on stderr. SMTP_PLUGIN_DEBUG=1 lowers the
 * level to debug, as in the seed guide; LOG_LEVEL sets it outright.
 */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  const level = options.level ?? process.env.LOG_LEVEL ?? (process.env.SMTP_PLUGIN_DEBUG === '1' ? 'debug' : 'info');
  return pino({ name: options.name ?? 'smtp-plugin-host', level }, pino.destination(2));
}

/** A logger that writes nothing, for library use without logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
