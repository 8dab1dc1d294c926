import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/config.js';
import { hostError } from '../errors.js';
import { createLogger } from '../log.js';
import { PluginManager } from '../manager/plugin-manager.js';
import { parseMilterAddress } from '../milter/address.js';
import { MilterServer } from '../milter/milter-server.js';
import { PROJECT_ROOT } from '../paths.js';
import { backendsStopped } from '../plugin/backends.js';
import { HookRunner } from '../server/hook-runner.js';
import { requiredPluginsFailed } from '../server/mail-server.js';
import { stopWithin } from './shutdown.js';

export const MILTER_USAGE = `  smtp-server milter --listen inet:HOST:PORT|unix:/path [--config FILE]`;

/**
 * Serves the configured plugin chain as a milter (docs/milter.md) until
 * SIGTERM or SIGINT: Postfix's `smtpd_milters` then runs these plugins.
 * Only [plugins] and [server] max_message_bytes of the config apply: the
 * MTA does the SMTP, the queue and the delivery.
 */
export async function milterCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { listen: { type: 'string' }, config: { type: 'string' } } });
  if (values.listen === undefined) throw hostError('SMTP_E_CLI_USAGE', `milter needs --listen (inet:127.0.0.1:8891 or unix:/path)\n${MILTER_USAGE}`);
  const listen = parseMilterAddress(values.listen);
  const bundled = join(PROJECT_ROOT, 'config.toml');
  const config = loadConfig(values.config ?? (existsSync(bundled) ? bundled : null));
  const logger = createLogger();
  const manager = new PluginManager({ directory: config.plugins.directory, wasmDirectory: config.plugins.wasmDirectory, logger, traceHooks: config.server.logHookCalls });
  const { loaded, failed } = await manager.loadFromConfig(config.plugins);
  const required = failed.filter((failure) => !failure.optional);
  if (required.length > 0) {
    // Fail closed, as the SMTP server does: Postfix's milter_default_action then decides.
    await manager.deinit();
    await backendsStopped();
    throw requiredPluginsFailed(required);
  }
  const server = new MilterServer({ listen, hooks: new HookRunner(manager, logger, config.server.logHookCalls), logger, maxMessageBytes: config.server.maxMessageBytes });
  let address: string;
  try {
    address = await server.start();
  } catch (cause) {
    await manager.deinit();
    await backendsStopped();
    throw hostError('SMTP_E_LISTEN', `cannot listen on ${values.listen}: ${(cause as Error).message}`, cause);
  }
  logger.info({ address, plugins: loaded.map((instance) => `${instance.name} (${instance.plugin.kind})`) }, 'serving the plugin chain as a milter');
  const signal = await new Promise<string>((done) => {
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
  });
  logger.info({ signal }, 'stopping');
  return stopWithin({ stopStage: null }, async () => {
    await server.stop();
    await manager.deinit();
    await backendsStopped();
  }, logger);
}
