import cluster from 'node:cluster';
import { existsSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AdminServer } from '../admin/admin-server.js';
import { ConfigFanout } from '../cluster/config-fanout.js';
import { runPrimary } from '../cluster/primary.js';
import { WorkerRole } from '../cluster/worker.js';
import { configFromText, loadConfig, type AppConfig, type ConfigOverrides } from '../config/config.js';
import { hostError, isHostError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
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
 * With [server] workers > 1 this process becomes the primary of that many
 * worker processes (src/cluster/primary.ts), each of which runs this
 * command again as a worker (src/cluster/worker.ts).
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
  // Read before the load: an edit after this point differs from it, and is caught once the file is watched.
  const textAtLoad = configText(path);
  const loaded = loadConfig(path, overrides);
  const processLogger = createLogger();
  if (cluster.isPrimary && loaded.server.workers > 1) return runPrimary(loaded, processLogger);
  const role = WorkerRole.fromEnvironment(processLogger);
  try {
    return await serve(loaded, path, textAtLoad, overrides, role, role?.logger ?? processLogger);
  } finally {
    role?.detach();
  }
}

/** The config file's text, or null without a file (or when it cannot be read: loadConfig then reports why). */
function configText(path: string | null): string | null {
  if (path === null) return null;
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

/** One server in this process: the whole server (role null), or one worker of several. `textAtLoad`: the config file as it was read before the load. */
async function serve(loaded: AppConfig, path: string | null, textAtLoad: string | null, overrides: ConfigOverrides, role: WorkerRole | null, logger: Logger): Promise<number> {
  // A worker keeps its spool in a directory of its own, and reloads compare against the same.
  const configFor = (config: AppConfig): AppConfig => (role === null ? config : role.configFor(config));
  const config = configFor(loaded);
  await role?.claimSpool(loaded);
  // Only worker 0 serves the admin API, so only it counts metrics.
  const server = new MailServer(config, logger, role !== null && role.index !== 0 ? { withMetrics: false } : {});
  try {
    await server.start();
  } catch (error) {
    // Whatever start-up loaded is torn down; sandbox workers must be gone before the process exits.
    await backendsStopped();
    await role?.released();
    throw error;
  }

  let reloading: Promise<unknown> = Promise.resolve();
  /** Reloads one at a time; resolves with the plugins changed, or rejects with the coded error (the running config stays). */
  const reloadNow = (why: string): Promise<readonly string[]> => {
    const run = reloading.then(async () => {
      logger.info({ why }, 'reloading config');
      try {
        const changed = await server.reload(configFor(loadConfig(path, overrides)));
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
  // [cluster] redis: reloads are told to the other instances (worker 0 speaks for its instance; every worker listens).
  const fanout = config.cluster.redis === null ? null : new ConfigFanout({
    cluster: config.cluster,
    logger,
    onRemoteChange: (from) => void reloadNow(`config change on instance ${from}`).catch(() => undefined),
  });
  const announces = fanout !== null && (role === null || role.index === 0);
  /** A reload this instance chose: the other instances are told once it succeeded. */
  const reloadLocal = (why: string): Promise<readonly string[]> =>
    reloadNow(why).then((changed) => {
      if (announces) void fanout!.announce(changed);
      return changed;
    });
  const reload = (why: string): void => {
    reloadLocal(why).catch(() => undefined);
  };
  await fanout?.start();
  // With workers, only worker 0 listens for the admin API; its reload reaches every worker through the primary.
  const admin = config.admin.listen === null || (role !== null && role.index !== 0) ? null : new AdminServer({
    server,
    token: config.admin.token!,
    logger,
    reloadConfig: role === null ? () => reloadLocal('admin API') : () => role.reloadEverywhere('admin API'),
    validateConfig: (text) => (text === null ? loadConfig(path, overrides) : configFromText(text, path, overrides)),
    ...(role === null ? {} : { worker: { index: role.index, count: role.count } }),
  });
  try {
    await admin?.listen(config.admin.listen!.host, config.admin.listen!.port);
  } catch (error) {
    await fanout?.close();
    await server.stop();
    await backendsStopped();
    await role?.released();
    throw error;
  }
  role?.onReload(role.index === 0 ? reloadLocal : reloadNow);
  role?.started(loaded, server.port, (spool) => server.deliveryQueueFor(spool));
  let watcher: FSWatcher | undefined;
  if (path !== null) {
    let timer: NodeJS.Timeout | undefined;
    const changed = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => reload('config file changed'), CONFIG_SETTLE_MS);
    };
    watcher = watch(path, changed);
    // The server has been listening since start(): an edit made before the watch began would otherwise be missed until the next one.
    if (configText(path) !== textAtLoad) changed();
  }
  process.on('SIGHUP', () => reload('SIGHUP'));
  const signal = await new Promise<string>((done) => {
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
    // A worker whose primary is gone gets no more connections: it stops.
    if (role !== null) process.once('disconnect', () => done('primary gone'));
  });
  if (role !== null) {
    // The primary's SIGTERM may follow a terminal's SIGINT to the whole group: a second signal must not kill the worker mid-stop.
    process.on('SIGTERM', () => undefined);
    process.on('SIGINT', () => undefined);
  }
  logger.info({ signal }, 'stopping');
  watcher?.close();
  await admin?.close();
  await fanout?.close();
  // Bounded: a plugin stuck in a native hook must not keep the server from exiting.
  return stopWithin(server, async () => {
    await reloading;
    await role?.stopAdopting();
    await server.stop();
    await role?.released();
    // Sandbox workers must be gone before the process exits (a worker with
    // koffi loaded crashes an exit that races its teardown).
    await backendsStopped();
  }, logger);
}
