import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { hostError, isHostError } from '../errors.js';
import { resolvePluginOptions, type PluginOptions, type SandboxLimits } from '../plugin/options.js';
import { parseMilterAddress } from '../milter/address.js';
import { milterSource } from '../milter/milter-plugin.js';

/** One [[plugins.plugin]] entry, validated, with its file chosen. */
export interface PluginEntryConfig {
  readonly name: string;
  readonly enabled: boolean;
  /** The file to load: the native library or the .wasm module, per `sandbox`; for a milter, `milter:<address>#<name>`. */
  readonly file: string;
  /** Every build the entry names (auto_load never loads these on its own). */
  readonly builds: readonly string[];
  readonly sandboxed: boolean;
  /** The JSON text passed to init. */
  readonly config: string;
  readonly options: PluginOptions;
  /**
   * False (the default): an enabled entry that cannot be loaded, initialised
   * or enabled stops start-up. True: it is logged and the server runs without it.
   */
  readonly optional: boolean;
  /**
   * Only an authenticator may approve a login at auth_started, and only
   * authenticators are given the password (docs/configuration.md).
   */
  readonly authenticator: boolean;
}

/** The [plugins] section. */
export interface PluginsConfig {
  readonly enabled: boolean;
  readonly directory: string;
  readonly wasmDirectory: string;
  readonly autoLoad: boolean;
  /** Reload a plugin when its file changes (the guide's development mode). */
  readonly hotReload: boolean;
  /** Absolute folders outside directory / wasm_directory that entries may also name files in. */
  readonly trustedDirectories: readonly string[];
  readonly plugins: readonly PluginEntryConfig[];
}

const SECTION_KEYS = ['enabled', 'directory', 'wasm_directory', 'auto_load', 'hot_reload', 'trusted_directories', 'plugin'] as const;
const ENTRY_KEYS = ['name', 'enabled', 'optional', 'authenticator', 'library', 'wasm', 'component', 'milter', 'sandbox', 'config', 'on_error', 'max_consecutive_failures', 'limits', 'allow_connect', 'allow_counters', 'blocking', 'isolation'] as const;
/** A bound on plugins.trusted_directories, like every list in the config. */
const TRUSTED_DIRECTORIES_MAX = 64;
const LIMIT_KEYS: Record<string, keyof SandboxLimits> = {
  memory_mb: 'memoryMb',
  hook_timeout_ms: 'hookTimeoutMs',
  metadata_key_bytes_max: 'metadataKeyBytesMax',
  metadata_value_bytes_max: 'metadataValueBytesMax',
  metadata_keys_max: 'metadataKeysMax',
};

type Table = Record<string, unknown>;

/** The path through its symlinks when it exists, else as written. */
function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** True when `path` lies below `dir` (both absolute). `..` segments never escape unnoticed: both are normalised first. */
export function isInside(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

/**
 * Why `file` is not contained in one of `allowed`, or null when it is: it
 * must lie below one of them as written (lexically, after `..` is resolved)
 * and, when it exists, through its symlinks too (so a link inside the folder
 * pointing elsewhere is refused like the path it points to).
 */
export function containment(file: string, allowed: readonly string[]): string | null {
  const lexical = resolve(file);
  if (!allowed.some((dir) => isInside(resolve(dir), lexical))) return `resolves to ${lexical}`;
  if (!existsSync(lexical)) return null;
  const real = realOrSelf(lexical);
  if (!allowed.some((dir) => isInside(realOrSelf(resolve(dir)), real))) return `is a link to ${real}`;
  return null;
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Finds the line of `key =` inside the `index`-th `[[plugins.plugin]]` (or [plugins]) block, for messages. */
function lineOf(source: string, key: string, entryIndex: number | null): number | undefined {
  const lines = source.split('\n');
  let block = -1;
  let inBlock = entryIndex === null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.startsWith('[')) {
      if (line === '[[plugins.plugin]]') block++;
      inBlock = entryIndex === null ? line === '[plugins]' : block === entryIndex && (line === '[[plugins.plugin]]' || line === '[plugins.plugin.limits]');
      continue;
    }
    if (inBlock && new RegExp(`^${escapeRegExp(key)}\\s*=`).test(line)) return i + 1;
  }
  return undefined;
}

/**
 * The guide's per-plugin config file, used when an entry has no inline
 * `config`: <directory>/<name>.json or .toml, the name also tried with "-"
 * as "_" ("spam-filter" -> spam_filter.json). Returns the JSON text.
 */
export function pluginConfigFile(directory: string, name: string): string | undefined {
  for (const base of new Set([name, name.replace(/-/g, '_')])) {
    for (const extension of ['json', 'toml'] as const) {
      const path = join(directory, `${base}.${extension}`);
      if (!existsSync(path)) continue;
      const text = readFileSync(path, 'utf8');
      try {
        return extension === 'json' ? JSON.stringify(JSON.parse(text)) : JSON.stringify(parse(text));
      } catch (cause) {
        const line = cause instanceof TomlError ? `:${cause.line}` : '';
        throw hostError('SMTP_E_CONFIG', `${path}${line}: not valid ${extension.toUpperCase()} (${(cause as Error).message.split('\n')[0]})`, cause);
      }
    }
  }
  return undefined;
}

/** Reads and validates the [plugins] section of a config.toml; every error names the file, line and key. */
export function loadPluginsConfig(path: string): PluginsConfig {
  let source: string;
  try {
    source = readFileSync(path, 'utf8');
  } catch (cause) {
    throw hostError('SMTP_E_CONFIG', `${path}: cannot read the config file (${(cause as Error).message})`, cause);
  }
  let document: Table;
  try {
    document = parse(source) as Table;
  } catch (cause) {
    const where = cause instanceof TomlError ? `:${cause.line}` : '';
    throw hostError('SMTP_E_CONFIG', `${path}${where}: not valid TOML (${(cause as Error).message.split('\n')[0]})`, cause);
  }
  return parsePluginsSection(document.plugins ?? {}, path, source);
}

export function parsePluginsSection(section: unknown, path: string, source = ''): PluginsConfig {
  const fail = (key: string, expected: string, entry: number | null = null): never => {
    const line = lineOf(source, key.split('.').pop()!, entry);
    throw hostError('SMTP_E_CONFIG', `${path}${line === undefined ? '' : `:${line}`}: ${key}: ${expected}`);
  };
  if (typeof section !== 'object' || section === null || Array.isArray(section)) fail('plugins', 'expected a table');
  const table = section as Table;
  for (const key of Object.keys(table)) {
    if (!(SECTION_KEYS as readonly string[]).includes(key)) fail(`plugins.${key}`, `unknown key (known: ${SECTION_KEYS.join(', ')})`);
  }
  const base = dirname(path);
  const at = (dir: string): string => (isAbsolute(dir) ? dir : join(base, dir));
  const bool = (value: unknown, key: string, fallback: boolean, entry: number | null = null): boolean => {
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') fail(key, `expected true or false, got ${JSON.stringify(value)}`, entry);
    return value as boolean;
  };
  const text = (value: unknown, key: string, entry: number | null = null): string | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || value === '') fail(key, `expected a non-empty string, got ${JSON.stringify(value)}`, entry);
    return value as string;
  };
  const directory = at(text(table.directory, 'plugins.directory') ?? './plugins');
  const wasmDirectory = at(text(table.wasm_directory, 'plugins.wasm_directory') ?? './wasm-plugins');
  const trustedRaw = table.trusted_directories ?? [];
  if (!Array.isArray(trustedRaw) || trustedRaw.some((dir) => typeof dir !== 'string' || dir === '')) fail('plugins.trusted_directories', `expected an array of absolute folder paths, got ${JSON.stringify(trustedRaw)}`);
  if ((trustedRaw as string[]).length > TRUSTED_DIRECTORIES_MAX) fail('plugins.trusted_directories', `expected at most ${TRUSTED_DIRECTORIES_MAX} folders, got ${(trustedRaw as string[]).length}`);
  for (const dir of trustedRaw as string[]) {
    // Relative to what? The point of the key is to name a folder outright.
    if (!isAbsolute(dir)) fail('plugins.trusted_directories', `expected absolute paths, got "${dir}"`);
  }
  const trustedDirectories = Object.freeze((trustedRaw as string[]).map((dir) => normalize(dir)));
  const rawEntries = table.plugin ?? [];
  if (!Array.isArray(rawEntries)) fail('plugins.plugin', 'expected [[plugins.plugin]] entries');
  const names = new Set<string>();
  const plugins = (rawEntries as unknown[]).map((raw, index): PluginEntryConfig => {
    const key = (name: string): string => `plugins.plugin[${index}].${name}`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(key('*'), 'expected a table', index);
    const entry = raw as Table;
    for (const name of Object.keys(entry)) {
      if (!(ENTRY_KEYS as readonly string[]).includes(name)) fail(key(name), `unknown key (known: ${ENTRY_KEYS.join(', ')})`, index);
    }
    const name = text(entry.name, key('name'), index) ?? fail(key('name'), 'is required', index);
    if (names.has(name)) fail(key('name'), `"${name}" is configured twice`, index);
    names.add(name);
    const library = text(entry.library, key('library'), index);
    const wasm = text(entry.wasm, key('wasm'), index);
    const component = text(entry.component, key('component'), index);
    const milter = text(entry.milter, key('milter'), index);
    if (milter !== undefined) {
      // A milter is a service reached over a socket: there is no build to load, sandbox or isolate.
      for (const other of ['library', 'wasm', 'component', 'sandbox', 'isolation', 'blocking', 'allow_connect', 'allow_counters', 'authenticator'] as const) {
        if (entry[other] !== undefined) fail(key(other), `does not apply to a milter entry (milter = "${milter}")`, index);
      }
      try {
        parseMilterAddress(milter);
      } catch (error) {
        fail(key('milter'), (error as Error).message, index);
      }
    } else if (component !== undefined) {
      // A component is its own build: the sandbox always runs it.
      if (library !== undefined || wasm !== undefined || entry.sandbox !== undefined) fail(key('component'), 'stands alone: no library, wasm or sandbox beside it', index);
      if (!component.endsWith('.wasm')) fail(key('component'), `expected a .wasm file, got "${component}"`, index);
    } else if (library === undefined && wasm === undefined) {
      fail(key('library'), 'give library (native), wasm (sandboxed), both, or component', index);
    }
    if (wasm !== undefined && !wasm.endsWith('.wasm')) fail(key('wasm'), `expected a .wasm file, got "${wasm}"`, index);
    // A lone wasm means sandboxed; with both, sandbox chooses (default: sandboxed).
    const sandboxed = milter !== undefined ? false : library === undefined ? true : wasm === undefined ? false : bool(entry.sandbox, key('sandbox'), true, index);
    if (library === undefined && entry.sandbox === false) fail(key('sandbox'), 'is false but there is no library to run natively', index);
    if (wasm === undefined && entry.sandbox === true) fail(key('sandbox'), 'is true but there is no wasm build to sandbox', index);
    const libraryPath = library === undefined ? undefined : isAbsolute(library) ? library : join(directory, library);
    const sandboxedBuild = component ?? wasm;
    const wasmPath = sandboxedBuild === undefined ? undefined : isAbsolute(sandboxedBuild) ? sandboxedBuild : join(wasmDirectory, sandboxedBuild);
    // A config line must not be able to load code from anywhere on the machine.
    const contained = (configKey: 'library' | 'wasm' | 'component', written: string, path: string, home: string, homeKey: string): void => {
      const outside = containment(path, [home, ...trustedDirectories]);
      if (outside !== null) {
        fail(key(configKey), `"${written}" ${outside}, outside plugins.${homeKey} (${home})${trustedDirectories.length > 0 ? ` and plugins.trusted_directories` : ''}: move it there, or list its folder in plugins.trusted_directories`, index);
      }
    };
    if (library !== undefined) contained('library', library, libraryPath!, directory, 'directory');
    if (sandboxedBuild !== undefined) contained(component === undefined ? 'wasm' : 'component', sandboxedBuild, wasmPath!, wasmDirectory, 'wasm_directory');
    const file = milter !== undefined ? milterSource(milter, name) : sandboxed ? wasmPath! : libraryPath!;
    const builds = [libraryPath, wasmPath].filter((path): path is string => path !== undefined);
    const config = text(entry.config, key('config'), index) ?? pluginConfigFile(directory, name) ?? '{}';
    try {
      JSON.parse(config);
    } catch (cause) {
      fail(key('config'), `expected a JSON text (${(cause as Error).message})`, index);
    }
    const limitsTable = entry.limits ?? {};
    if (typeof limitsTable !== 'object' || Array.isArray(limitsTable)) fail(key('limits'), 'expected a table', index);
    // Each value is checked on its own so that the error names its key and line.
    const check = (configKey: string, input: Parameters<typeof resolvePluginOptions>[0]): void => {
      try {
        resolvePluginOptions(input, key(configKey));
      } catch (error) {
        if (isHostError(error)) fail(key(configKey), error.message.slice(error.message.indexOf(': ') + 2), index);
        throw error;
      }
    };
    const limits: Record<string, unknown> = {};
    for (const [limitKey, value] of Object.entries(limitsTable as Table)) {
      const mapped = LIMIT_KEYS[limitKey];
      if (mapped === undefined) fail(key(`limits.${limitKey}`), `unknown limit (known: ${Object.keys(LIMIT_KEYS).join(', ')})`, index);
      check(`limits.${limitKey}`, { limits: { [mapped!]: value } as Partial<SandboxLimits> });
      limits[mapped!] = value;
    }
    const onError = entry.on_error === undefined ? {} : { onError: entry.on_error as string };
    const maxFailures = entry.max_consecutive_failures === undefined ? {} : { maxConsecutiveFailures: entry.max_consecutive_failures as number };
    const allowConnect = entry.allow_connect === undefined ? {} : { allowConnect: entry.allow_connect as unknown[] };
    const allowCounters = entry.allow_counters === undefined ? {} : { allowCounters: entry.allow_counters as boolean };
    const blocking = entry.blocking === undefined ? {} : { blocking: entry.blocking as boolean };
    check('on_error', onError);
    check('max_consecutive_failures', maxFailures);
    check('allow_connect', allowConnect);
    check('allow_counters', allowCounters);
    check('blocking', blocking);
    const isolation = entry.isolation === undefined ? {} : { isolation: entry.isolation as string };
    check('isolation', isolation);
    // Only a native library can run in a process of its own; a sandboxed build already runs out of the server's memory.
    if (entry.isolation !== undefined && sandboxed) fail(key('isolation'), 'applies to a native library, but this entry runs its sandboxed build', index);
    const options: PluginOptions = resolvePluginOptions({ limits: limits as Partial<SandboxLimits>, ...onError, ...maxFailures, ...allowConnect, ...allowCounters, ...blocking, ...isolation });
    return Object.freeze({
      name,
      enabled: bool(entry.enabled, key('enabled'), true, index),
      file,
      builds: Object.freeze(builds),
      sandboxed,
      config,
      options,
      optional: bool(entry.optional, key('optional'), false, index),
      authenticator: bool(entry.authenticator, key('authenticator'), false, index),
    });
  });
  return Object.freeze({
    enabled: bool(table.enabled, 'plugins.enabled', true),
    directory,
    wasmDirectory,
    autoLoad: bool(table.auto_load, 'plugins.auto_load', false),
    hotReload: bool(table.hot_reload, 'plugins.hot_reload', false),
    trustedDirectories,
    plugins: Object.freeze(plugins),
  });
}

/**
 * The entries that may approve a login: enabled, and marked authenticator.
 * With none, the server does not offer AUTH even when [server] auth = true
 * (docs/configuration.md, "Who may approve a login").
 */
export function authenticatorNames(plugins: PluginsConfig): string[] {
  if (!plugins.enabled) return [];
  return plugins.plugins.filter((entry) => entry.enabled && entry.authenticator).map((entry) => entry.name);
}
