import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { HOOK_NAMES, formatAbiVersion, isHookName } from '../abi/hooks.js';
import { hostError } from '../errors.js';
import { HookContext } from '../plugin/hook-context.js';
import { PluginInstance } from '../plugin/lifecycle.js';
import { backendsStopped, openPlugin } from '../plugin/backends.js';
import { resolvePluginOptions } from '../plugin/options.js';
import { createLogger } from '../log.js';
import { metadataToJson } from '../plugin/metadata.js';
import { BUILD_TARGETS, OPTIMIZE_MODES, buildPlugin, sourceLanguage, testPlugin, type BuildTarget, type OptimizeMode } from '../toolchain/build.js';

export const PLUGIN_USAGE = `usage:
  smtp-server plugin build FILE.zig [--target native|wasm] [-o OUT] [--zig VERSION] [--optimize MODE]
  smtp-server plugin build FILE.c [--target native|wasm] [-o OUT] [--zig VERSION] [--optimize MODE]
  smtp-server plugin build FILE.js --target component [-o OUT]
  smtp-server plugin test FILE.zig [--zig VERSION]
  smtp-server plugin info FILE
  smtp-server plugin call FILE --hook NAME [--config JSON | --config-file PATH]
                          [--meta KEY=VALUE]... [--meta-file KEY=PATH]...
                          [--memory-mb N] [--deadline-ms N]     (limits of a .wasm plugin)
                          [--allow-connect ADDRESS]...         (grants: "tcp:127.0.0.1:389", "unix:/path")
                          [--allow-counters]                   (grant: the host counters, in memory)
FILE is a native library (.so/.dylib/.dll), a sandboxed module or a component (.wasm).`;

function usage(message: string): never {
  throw hostError('SMTP_E_CLI_USAGE', `${message}\n${PLUGIN_USAGE}`);
}

function onePositional(positionals: string[], what: string): string {
  if (positionals.length !== 1) usage(`plugin ${what} takes exactly one FILE`);
  return positionals[0]!;
}

function splitPair(pair: string, flag: string): [string, string] {
  const at = pair.indexOf('=');
  if (at <= 0) usage(`${flag} expects KEY=VALUE, got "${pair}"`);
  return [pair.slice(0, at), pair.slice(at + 1)];
}

async function build(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { target: { type: 'string', default: 'native' }, output: { type: 'string', short: 'o' }, zig: { type: 'string' }, optimize: { type: 'string', default: 'ReleaseFast' } },
  });
  const source = onePositional(positionals, 'build');
  if (!BUILD_TARGETS.includes(values.target as BuildTarget)) usage(`--target must be ${BUILD_TARGETS.join(' or ')}`);
  if (!OPTIMIZE_MODES.includes(values.optimize as OptimizeMode)) usage(`--optimize must be one of ${OPTIMIZE_MODES.join(', ')}`);
  const output = await buildPlugin({
    source,
    target: values.target as BuildTarget,
    optimize: values.optimize as OptimizeMode,
    ...(values.output === undefined ? {} : { output: values.output }),
    ...(values.zig === undefined ? {} : { zigVersion: values.zig }),
  });
  process.stdout.write(`${output}\n`);
  return 0;
}

function test(args: string[]): number {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { zig: { type: 'string' } } });
  const source = onePositional(positionals, 'test');
  if (sourceLanguage(source) !== 'zig') usage(`plugin test runs the Zig unit tests of a .zig source; ${source} is not one`);
  return testPlugin(source, values.zig);
}

async function info(args: string[]): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  const plugin = await openPlugin(onePositional(positionals, 'info'), { logger: createLogger() });
  try {
    const out = { file: plugin.path, kind: plugin.kind, abi_version: formatAbiVersion(plugin.abiVersion), ...metadataToJson(plugin.metadata, HOOK_NAMES) };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  } finally {
    await plugin.unload();
    await backendsStopped();
  }
  return 0;
}

async function call(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      hook: { type: 'string' },
      config: { type: 'string' },
      'config-file': { type: 'string' },
      meta: { type: 'string', multiple: true, default: [] },
      'meta-file': { type: 'string', multiple: true, default: [] },
      'memory-mb': { type: 'string' },
      'deadline-ms': { type: 'string' },
      'allow-connect': { type: 'string', multiple: true, default: [] },
      'allow-counters': { type: 'boolean', default: false },
    },
  });
  const limits: Record<string, number> = {};
  for (const [flag, key] of [['memory-mb', 'memoryMb'], ['deadline-ms', 'hookTimeoutMs']] as const) {
    const text = values[flag];
    if (text === undefined) continue;
    if (!/^\d+$/.test(text)) usage(`--${flag} expects a positive integer, got "${text}"`);
    limits[key] = Number(text);
  }
  const options = resolvePluginOptions({ limits, allowConnect: values['allow-connect'], allowCounters: values['allow-counters'] }, 'plugin call');
  const file = onePositional(positionals, 'call');
  const hook = values.hook ?? usage('plugin call needs --hook NAME');
  if (!isHookName(hook)) usage(`unknown hook "${hook}"; hooks: ${HOOK_NAMES.join(', ')}`);
  if (values.config !== undefined && values['config-file'] !== undefined) usage('give --config or --config-file, not both');
  const configJson = values['config-file'] !== undefined ? readFileSync(values['config-file'], 'utf8') : (values.config ?? '{}');
  try {
    JSON.parse(configJson);
  } catch (cause) {
    throw hostError('SMTP_E_PLUGIN_CONFIG', `--config is not JSON: ${(cause as Error).message}`, cause);
  }
  const context = new HookContext(hook);
  for (const pair of values.meta) context.setMetadata(...splitPair(pair, '--meta'));
  for (const pair of values['meta-file']) {
    const [key, path] = splitPair(pair, '--meta-file');
    context.setMetadata(key, readFileSync(path));
  }
  const instance = new PluginInstance(await openPlugin(file, { options, logger: createLogger() }));
  try {
    await instance.init(configJson);
    await instance.enable();
    const { code } = await instance.executeHookAsync(context);
    process.stdout.write(`${JSON.stringify({ code, cancel: context.cancel, metadata: context.toJSON() })}\n`);
  } finally {
    await instance.shutdown();
    await backendsStopped();
  }
  return 0;
}

export async function pluginCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'build':
      return build(rest);
    case 'test':
      return test(rest);
    case 'info':
      return info(rest);
    case 'call':
      return call(rest);
    default:
      return usage(sub === undefined ? 'plugin needs a subcommand' : `unknown plugin subcommand "${sub}"`);
  }
}
