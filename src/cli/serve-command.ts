import { existsSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AdminServer } from '../admin/admin-server.js';
import { configFromText, loadConfig, type ConfigOverrides } from '../config/config.js';
import { hostError, isHostError } from '../errors.js';
import { createLogger } from '../log.js';
import { PROJECT_ROOT } from '../paths.js';
import { MailServer } from '../server/mail-server.js';
import { backendsStopped } from '../plugin/backends.js';
import { stopWithin } from './shutdown.js';

export const SERVE_USAGE = `  smtp-server [--config FILE] [--plugin-dir DIR] [--port N] [--test-mode]`;

/** Debounce for config file changes: editors write a file in several steps. */
const CONFIG_SETTLE_MS = 200;

/**
 * Runs the mail server until SIGTERM or SIGINT. SIGHUP, or a change to the
 * config file, reloads the config. With no --config, the repository's
 * config.toml is used when present (npm start), else the embedded default.
 */
export async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      'plugin-dir': { type: 'string' },
      port: { type: 'string' },
      'test-mode': { type: 'boolean', default: false },
    },
  });
  if (values.port !== undefined && !/^\d+$/.test(values.port)) throw hostError('SMTP_E_CLI_USAGE', `--port expects a number, got "${values.port}"`);
  const bundled = join(PROJECT_ROOT, 'config.toml');
  const path = values.config ?? (existsSync(bundled) ? bundled : null);
  const overrides: ConfigOverrides = {
    testMode: values['test-mode'],
    ...(values.port === undefined ? {} : { port: Number(values.port) }),
    ...(values['plugin-dir'] === undefined ? {} : { pluginDir: values['plugin-dir'] }),
  };
  const config = loadConfig(path, overrides);
  const logger = createLogger();
  const server = new MailServer(config, logger);
  try {
    await server.start();
  } catch (error) {
    // Whatever start-up loaded is torn down; sandbox workers must be gone before the process exits.
    await backendsStopped();
    throw error;
  }

  let reloading: Promise<unknown> = Promise.resolve();
  /** Reloads one at a time; resolves with the plugins changed, or rejects with the coded error (the running config stays). */
  const reloadNow = (why: string): Promise<readonly string[]> => {
    const run = reloading.then(async () => {
      logger.info({ why }, 'reloading config');
      try {
        const changed = await server.reload(loadConfig(path, overrides));
        server.metrics?.configReloads.inc({ result: 'ok' });
        return changed;
      } catch (error) {
        server.metrics?.configReloads.inc({ result: 'failed' });
        // A bad config never replaces a good one: the server keeps running as it was.
        logger.error({ code: isHostError(error) ? error.code : undefined, err: (error as Error).message }, 'config reload refused; keeping the running config');
        throw error;
      }
    });
    reloading = run.catch(() => undefined);
    return run;
  };
  const reload = (why: string): void => {
    reloadNow(why).catch(() => undefined);
  };
  const admin = config.admin.listen === null ? null : new AdminServer({
    server,
    token: config.admin.token!,
    logger,
    reloadConfig: () => reloadNow('admin API'),
    validateConfig: (text) => (text === null ? loadConfig(path, overrides) : configFromText(text, path, overrides)),
  });
  try {
    await admin?.listen(config.admin.listen!.host, config.admin.listen!.port);
  } catch (error) {
    await server.stop();
    await backendsStopped();
    throw error;
  }
  let watcher: FSWatcher | undefined;
  if (path !== null) {
    let timer: NodeJS.Timeout | undefined;
    watcher = watch(path, () => {
      clearTimeout(timer);
      timer = setTimeout(() => reload('config file changed'), CONFIG_SETTLE_MS);
    });
  }
  process.on('SIGHUP', () => reload('SIGHUP'));
  const signal = await new Promise<string>((done) => {
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
  });
  logger.info({ signal }, 'stopping');
  watcher?.close();
  await admin?.close();
  // Bounded: a plugin stuck in a native hook must not keep the server from exiting.
  return stopWithin(server, async () => {
    await reloading;
    await server.stop();
    // Sandbox workers must be gone before the process exits (a worker with
    // koffi loaded crashes an exit that races its teardown).
    await backendsStopped();
  }, logger);
}
