import semver from 'semver';
import { hostError } from '../errors.js';
import { HOOK_COUNT, PluginFlag } from '../abi/hooks.js';
import type { PluginMetadata } from './plugin.js';

/** Bounds on plugin metadata, in bytes of UTF-8 unless named otherwise. */
export const METADATA_LIMITS = Object.freeze({
  fieldBytesMax: 256,
  descriptionBytesMax: 4096,
  dependenciesMax: 64,
});

const NAME_PATTERN = /^[A-Za-z0-9._-]+$/;

/** Raw fields as a backend read them, before validation. */
export interface RawMetadata {
  name: string | null;
  version: string | null;
  author: string | null;
  description: string | null;
  license: string | null;
  dependencies: string[];
  minServerVersion: string | null;
  maxServerVersion: string | null;
  handledHooks: bigint;
  /** smtp_plugin_metadata.flags; 0n for plugins built against ABI 1.0 (which have no such field). */
  flags: bigint;
}

/** The flag bits ABI 1.1 defines. */
const KNOWN_FLAGS = PluginFlag.BLOCKING;

/** Splits "name@range" into its parts; a bare name has range "*". */
export function parseDependency(spec: string): { name: string; range: string } {
  const at = spec.indexOf('@');
  return at < 0 ? { name: spec, range: '*' } : { name: spec.slice(0, at), range: spec.slice(at + 1) };
}

/** Validates metadata read from `path`; throws SMTP_E_PLUGIN_METADATA naming the field. */
export function validateMetadata(raw: RawMetadata, path: string): PluginMetadata {
  const fail = (field: string, problem: string): never => {
    throw hostError('SMTP_E_PLUGIN_METADATA', `${path}: metadata ${field} ${problem}`);
  };
  const required = (field: keyof RawMetadata, value: string | null): string => {
    if (value === null) return fail(field, 'is NULL');
    return value;
  };
  const name = required('name', raw.name);
  if (!NAME_PATTERN.test(name)) fail('name', `"${name}" must match ${NAME_PATTERN.source}`);
  const version = required('version', raw.version);
  if (semver.valid(version) === null) fail('version', `"${version}" is not a semantic version`);
  for (const field of ['minServerVersion', 'maxServerVersion'] as const) {
    const value = raw[field];
    if (value !== null && semver.valid(value) === null) fail(field, `"${value}" is not a semantic version`);
  }
  if (raw.dependencies.length > METADATA_LIMITS.dependenciesMax) {
    fail('dependencies', `has ${raw.dependencies.length} entries (at most ${METADATA_LIMITS.dependenciesMax})`);
  }
  for (const spec of raw.dependencies) {
    const { name: depName, range } = parseDependency(spec);
    if (!NAME_PATTERN.test(depName)) fail('dependencies', `entry "${spec}" does not start with a plugin name`);
    if (semver.validRange(range) === null) fail('dependencies', `entry "${spec}" has an invalid semver range`);
  }
  if (raw.handledHooks >> BigInt(HOOK_COUNT) !== 0n) fail('handled_hooks', `sets bits above the ${HOOK_COUNT} hooks (0x${raw.handledHooks.toString(16)})`);
  if ((raw.flags & ~KNOWN_FLAGS) !== 0n) fail('flags', `sets bits this host does not know (0x${raw.flags.toString(16)})`);
  return Object.freeze({
    name,
    version,
    author: required('author', raw.author),
    description: required('description', raw.description),
    license: required('license', raw.license),
    dependencies: Object.freeze([...raw.dependencies]),
    minServerVersion: raw.minServerVersion,
    maxServerVersion: raw.maxServerVersion,
    handledHooks: raw.handledHooks,
    flags: raw.flags,
  });
}

/** Metadata as JSON-safe values (handled_hooks as hook names). */
export function metadataToJson(metadata: PluginMetadata, hookNames: readonly string[]): Record<string, unknown> {
  const handled = metadata.handledHooks === 0n
    ? 'all'
    : hookNames.filter((_, index) => ((metadata.handledHooks >> BigInt(index)) & 1n) === 1n);
  return {
    name: metadata.name,
    version: metadata.version,
    author: metadata.author,
    description: metadata.description,
    license: metadata.license,
    dependencies: metadata.dependencies,
    min_server_version: metadata.minServerVersion,
    max_server_version: metadata.maxServerVersion,
    handled_hooks: handled,
    blocking: (metadata.flags & PluginFlag.BLOCKING) !== 0n,
  };
}
