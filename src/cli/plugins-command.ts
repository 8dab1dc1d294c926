import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/config.js';
import { hostError } from '../errors.js';
import { createLogger } from '../log.js';
import { formatOrder } from '../manager/dependencies.js';
import { PluginManager } from '../manager/plugin-manager.js';
import { PROJECT_ROOT } from '../paths.js';
import { ADMIN_OPTIONS, adminCall, adminTarget } from './admin-client.js';

export const PLUGINS_USAGE = `  smtp-server plugins order [--config FILE]
  smtp-server plugins list [--json] [--config FILE | --admin URL]
  smtp-server plugins enable|reload NAME [--config FILE | --admin URL]
  smtp-server plugins disable NAME [--cascade] [--config FILE | --admin URL]`;

interface ListedPlugin {
  name: string;
  version: string;
  mode: string;
  state: string;
  calls: number;
  errors: Record<string, number>;
  latency_us_mean: number | null;
  latency_us_last_minute: number | null;
  refusals: number;
}

/**
 * `smtp-server plugins order`: the order the configured plugins would be
 * initialised and enabled in, and why each stands where it does, or the
 * resolution error. Plugins are opened to read their metadata, not inited.
 */
async function order(rest: string[]): Promise<number> {
  const { values } = parseArgs({ args: rest, options: { config: { type: 'string' } } });
  const bundled = join(PROJECT_ROOT, 'config.toml');
  const config = loadConfig(values.config ?? (existsSync(bundled) ? bundled : null));
  const manager = new PluginManager({ directory: config.plugins.directory, wasmDirectory: config.plugins.wasmDirectory, logger: createLogger({ level: 'warn' }) });
  const entries = config.plugins.plugins.filter((entry) => entry.enabled);
  const { order: resolved, versions } = await manager.resolveOrder(entries.map((entry) => ({ path: entry.file, config: entry.config, options: entry.options })));
  for (const line of formatOrder(resolved, versions)) process.stdout.write(`${line}\n`);
  return 0;
}

/** `smtp-server plugins list|enable|disable|reload`: the running server's plugins, through its admin listener. */
async function live(sub: 'list' | 'enable' | 'disable' | 'reload', rest: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { ...ADMIN_OPTIONS, cascade: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } } });
  const target = adminTarget(values);
  if (sub === 'list') {
    const answer = await adminCall(target, 'GET', '/api/plugins');
    if (values.json) {
      process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
      return 0;
    }
    const plugins = answer.plugins as ListedPlugin[];
    process.stdout.write(`${'NAME'.padEnd(20)} ${'VERSION'.padEnd(9)} ${'MODE'.padEnd(10)} ${'STATE'.padEnd(12)} ${'CALLS'.padStart(9)} ${'ERRORS'.padStart(7)} ${'REFUSED'.padStart(8)} ${'MEAN µs'.padStart(9)} ${'LAST MIN µs'.padStart(11)}\n`);
    for (const plugin of plugins) {
      const errors = Object.values(plugin.errors).reduce((sum, count) => sum + count, 0);
      const us = (value: number | null): string => (value === null ? '-' : value.toFixed(1));
      process.stdout.write(`${plugin.name.padEnd(20)} ${plugin.version.padEnd(9)} ${plugin.mode.padEnd(10)} ${plugin.state.padEnd(12)} ${String(plugin.calls).padStart(9)} ${String(errors).padStart(7)} ${String(plugin.refusals).padStart(8)} ${us(plugin.latency_us_mean).padStart(9)} ${us(plugin.latency_us_last_minute).padStart(11)}\n`);
    }
    return 0;
  }
  if (positionals.length !== 1) throw hostError('SMTP_E_CLI_USAGE', `plugins ${sub} takes one plugin name; usage:\n${PLUGINS_USAGE}`);
  const name = positionals[0]!;
  const answer = await adminCall(target, 'POST', `/api/plugins/${encodeURIComponent(name)}/${sub}${sub === 'disable' && values.cascade ? '?cascade=true' : ''}`);
  if (sub === 'disable') process.stdout.write(`disabled: ${(answer.disabled as string[]).join(', ')}\n`);
  else if (sub === 'reload') process.stdout.write(`${name}: reloaded, version ${String(answer.version)}, ${String(answer.state)}\n`);
  else process.stdout.write(`${name}: ${String(answer.state)}\n`);
  return 0;
}

export async function pluginsCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'order':
      return order(rest);
    case 'list':
    case 'enable':
    case 'disable':
    case 'reload':
      return live(sub, rest);
    default:
      throw hostError('SMTP_E_CLI_USAGE', `usage:\n${PLUGINS_USAGE}`);
  }
}
