import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/config.js';
import { hostError } from '../errors.js';
import { createLogger } from '../log.js';
import { formatOrder } from '../manager/dependencies.js';
import { PluginManager } from '../manager/plugin-manager.js';
import { PROJECT_ROOT } from '../paths.js';

export const PLUGINS_USAGE = `  smtp-server plugins order [--config FILE]`;

/**
 * `smtp-server plugins order`: the order the configured plugins would be
 * initialised and enabled in, and why each stands where it does, or the
 * resolution error. Plugins are opened to read their metadata, not inited.
 */
export async function pluginsCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'order') throw hostError('SMTP_E_CLI_USAGE', `usage:\n${PLUGINS_USAGE}`);
  const { values } = parseArgs({ args: rest, options: { config: { type: 'string' } } });
  const bundled = join(PROJECT_ROOT, 'config.toml');
  const config = loadConfig(values.config ?? (existsSync(bundled) ? bundled : null));
  const manager = new PluginManager({ directory: config.plugins.directory, wasmDirectory: config.plugins.wasmDirectory, logger: createLogger({ level: 'warn' }) });
  const entries = config.plugins.plugins.filter((entry) => entry.enabled);
  const { order, versions } = await manager.resolveOrder(entries.map((entry) => ({ path: entry.file, config: entry.config, options: entry.options })));
  for (const line of formatOrder(order, versions)) process.stdout.write(`${line}\n`);
  return 0;
}
