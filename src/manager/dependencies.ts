/**
 * Plugin dependency resolution: a pure resolver (no I/O, no loading) that
 * checks every plugin's server-version bounds and dependencies and works out
 * the order to init and enable plugins in.
 *
 * Dependency syntax (PluginMetadata.dependencies, one string per entry):
 *
 *   "name"           any version of the plugin called `name`
 *   "name@<range>"   a version of `name` inside a node-semver range, e.g.
 *                    "spam-filter@^1.0", "spam-filter@~1.2.3",
 *                    "spam-filter@>=1.0 <2", "spam-filter@1.x"
 *
 * The name is everything before the first "@" and must match
 * [A-Za-z0-9._-]+; the range is everything after it and must be a valid
 * node-semver range (an empty range after "@" is refused). Ranges are matched
 * with `includePrerelease`, so "^1.0" accepts 1.2.0-rc.1.
 *
 * min_server_version and max_server_version are inclusive bounds on the
 * server's version; null means unbounded.
 *
 * Checks run in a fixed order and the first problem found throws:
 *   1. duplicate plugin names                    SMTP_E_PLUGIN_DUPLICATE
 *   2. server version bounds, in input order     SMTP_E_PLUGIN_SERVER_VERSION
 *   3. dependencies, in input order and in each
 *      plugin's dependency order: malformed
 *      spec, invalid range, missing, out of range SMTP_E_PLUGIN_DEPENDENCY
 *   4. cycles (a plugin depending on itself
 *      included)                                 SMTP_E_PLUGIN_CYCLE
 */
import semver from 'semver';
import { HostError } from '../errors.js';
import { parseDependency } from '../plugin/metadata.js';

export interface DependencyNode {
  /** Plugin name (metadata.name). */
  readonly name: string;
  /** Semver. */
  readonly version: string;
  /** "name" or "name@<semver range>", e.g. "spam-filter@^1.0". */
  readonly dependencies: readonly string[];
  readonly minServerVersion: string | null;
  readonly maxServerVersion: string | null;
}

export interface OrderedPlugin {
  readonly name: string;
  /** Why it stands where it does, for `smtp-server plugins order`: e.g. 'config position 2' or 'after spam-filter (rate-limiter depends on spam-filter@^1.0, found 1.1.0)'. */
  readonly reason: string;
}

export interface ResolveOptions {
  /** Plugins already running (name -> version) that may satisfy dependencies without being in `nodes`. */
  readonly available?: ReadonlyMap<string, string>;
}

type DependencyErrorCode =
  | 'SMTP_E_PLUGIN_DEPENDENCY'
  | 'SMTP_E_PLUGIN_CYCLE'
  | 'SMTP_E_PLUGIN_SERVER_VERSION'
  | 'SMTP_E_PLUGIN_DUPLICATE';

/** A resolution error, with the plugins it refuses (one plugin, or a whole cycle). */
export class DependencyError extends HostError {
  readonly plugins: readonly string[];

  constructor(code: DependencyErrorCode, message: string, plugins: readonly string[]) {
    super(code, message);
    this.plugins = plugins;
  }
}

function dependencyError(code: DependencyErrorCode, message: string, plugins: readonly string[] = []): DependencyError {
  return new DependencyError(code, message, plugins);
}

const NAME_PATTERN = /^[A-Za-z0-9._-]+$/;
const SATISFIES_OPTIONS = { includePrerelease: true } as const;

/** One dependency entry, parsed. */
interface ParsedDependency {
  /** The entry as written, e.g. "spam-filter@^1.0". */
  readonly spec: string;
  readonly name: string;
  readonly range: string;
}

function parseSpecs(node: DependencyNode): ParsedDependency[] {
  return node.dependencies.map((spec) => ({ spec, ...parseDependency(spec) }));
}

/** Throws SMTP_E_PLUGIN_DEPENDENCY if the entry is not "name" or "name@<valid range>". */
function checkSpec(node: DependencyNode, dep: ParsedDependency): void {
  if (!NAME_PATTERN.test(dep.name)) {
    throw dependencyError(
      'SMTP_E_PLUGIN_DEPENDENCY',
      `plugin "${node.name}" has a malformed dependency "${dep.spec}": it must be "name" or "name@<semver range>"`,
      [node.name],
    );
  }
  if (dep.range.trim() === '' || semver.validRange(dep.range) === null) {
    throw dependencyError(
      'SMTP_E_PLUGIN_DEPENDENCY',
      `plugin "${node.name}" depends on "${dep.spec}", whose range "${dep.range}" is not a valid semver range`,
      [node.name],
    );
  }
}

function checkServerVersion(node: DependencyNode, serverVersion: string): void {
  const { minServerVersion: min, maxServerVersion: max } = node;
  for (const [field, value] of [['min_server_version', min], ['max_server_version', max]] as const) {
    if (value !== null && semver.valid(value) === null) {
      throw dependencyError(
        'SMTP_E_PLUGIN_SERVER_VERSION',
        `plugin "${node.name}" has ${field} "${value}", which is not a semantic version`,
        [node.name],
      );
    }
  }
  const tooOld = min !== null && semver.lt(serverVersion, min);
  const tooNew = max !== null && semver.gt(serverVersion, max);
  if (!tooOld && !tooNew) return;
  const bounds = [min !== null ? `>= ${min}` : null, max !== null ? `<= ${max}` : null].filter((b) => b !== null);
  throw dependencyError(
    'SMTP_E_PLUGIN_SERVER_VERSION',
    `plugin "${node.name}" needs server ${bounds.join(' and ')}, this server is ${serverVersion}`,
    [node.name],
  );
}

/** Names of the plugins in `nodes` that `node` depends on, deduplicated, in dependency order. */
function edges(node: DependencyNode, inNodes: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (const spec of node.dependencies) {
    const { name } = parseDependency(spec);
    if (inNodes.has(name) && !out.includes(name)) out.push(name);
  }
  return out;
}

/**
 * A stable topological sort: repeatedly takes the first plugin in input order
 * whose dependencies (among `nodes`) are all placed. Returns the indexes
 * placed and, when stuck on a cycle, stops there.
 */
function stableOrder(nodes: readonly DependencyNode[]): { order: number[]; complete: boolean } {
  const names = new Set(nodes.map((n) => n.name));
  const deps = nodes.map((node) => edges(node, names));
  const placed = new Set<string>();
  const done = new Array<boolean>(nodes.length).fill(false);
  const order: number[] = [];
  while (order.length < nodes.length) {
    const next = nodes.findIndex((_node, i) => !done[i] && deps[i]!.every((d) => placed.has(d)));
    if (next < 0) return { order, complete: false };
    done[next] = true;
    placed.add(nodes[next]!.name);
    order.push(next);
  }
  return { order, complete: true };
}

/**
 * The first cycle: the one through the earliest plugin, in input order, that
 * lies on any cycle, starting and ending at it. Null when there is none.
 */
function findCycle(nodes: readonly DependencyNode[]): string[] | null {
  const names = new Set(nodes.map((n) => n.name));
  const adjacency = new Map(nodes.map((node) => [node.name, edges(node, names)]));
  for (const start of nodes) {
    // Depth-first search for a path from start back to start, following
    // dependencies in the order they are listed.
    const visited = new Set<string>();
    const stack: string[] = [start.name];
    const search = (current: string): boolean => {
      for (const next of adjacency.get(current) ?? []) {
        if (next === start.name) return true;
        if (visited.has(next)) continue;
        visited.add(next);
        stack.push(next);
        if (search(next)) return true;
        stack.pop();
      }
      return false;
    };
    if (search(start.name)) return [...stack, start.name];
  }
  return null;
}

/**
 * The order to init and enable in: every plugin after the plugins it depends on;
 * ties keep the input (config) order (a stable topological sort: repeatedly take the
 * first plugin in input order whose dependencies are all placed). Disable and deinit
 * go in the reverse of this order.
 *
 * A dependency is satisfied by a plugin in `nodes` or, failing that, by one in
 * `options.available` (plugins already running); a plugin in `nodes` wins
 * over a running one of the same name.
 */
export function resolveLoadOrder(
  nodes: readonly DependencyNode[],
  serverVersion: string,
  options?: ResolveOptions,
): OrderedPlugin[] {
  const available = options?.available ?? new Map<string, string>();
  if (semver.valid(serverVersion) === null) {
    throw dependencyError('SMTP_E_PLUGIN_SERVER_VERSION', `server version "${serverVersion}" is not a semantic version`);
  }

  // 1. Duplicate names.
  const positions = new Map<string, number>();
  nodes.forEach((node, index) => {
    const earlier = positions.get(node.name);
    if (earlier !== undefined) {
      throw dependencyError(
        'SMTP_E_PLUGIN_DUPLICATE',
        `plugin "${node.name}" is listed twice (config positions ${earlier + 1} and ${index + 1})`,
        [node.name],
      );
    }
    positions.set(node.name, index);
  });
  const versions = new Map(nodes.map((node) => [node.name, node.version]));

  // 2. Server version bounds.
  for (const node of nodes) checkServerVersion(node, serverVersion);

  // 3. Dependencies: well formed, present, in range. Self-dependencies are cycles (step 4).
  const parsed = nodes.map(parseSpecs);
  nodes.forEach((node, index) => {
    for (const dep of parsed[index]!) {
      checkSpec(node, dep);
      if (dep.name === node.name) continue;
      const found = versions.get(dep.name) ?? available.get(dep.name);
      if (found === undefined) {
        throw dependencyError(
          'SMTP_E_PLUGIN_DEPENDENCY',
          `plugin "${node.name}" depends on "${dep.name}", which is not loaded`,
          [node.name],
        );
      }
      if (!semver.satisfies(found, dep.range, SATISFIES_OPTIONS)) {
        throw dependencyError(
          'SMTP_E_PLUGIN_DEPENDENCY',
          `plugin "${node.name}" depends on ${dep.spec}, found ${found}`,
          [node.name],
        );
      }
    }
  });

  // 4. Cycles, then the order.
  const { order, complete } = stableOrder(nodes);
  if (!complete) {
    const cycle = findCycle(nodes);
    // A stuck sort always has a cycle; the fallback only guards the invariant.
    throw dependencyError('SMTP_E_PLUGIN_CYCLE', `dependency cycle: ${(cycle ?? []).join(' -> ')}`, [...new Set(cycle ?? [])]);
  }

  return order.map((index) => {
    const node = nodes[index]!;
    const clauses: string[] = [];
    for (const dep of parsed[index]!) {
      const found = versions.get(dep.name);
      if (found !== undefined) {
        clauses.push(`after ${dep.name} (${node.name} depends on ${dep.spec}, found ${found})`);
      }
    }
    if (clauses.length === 0) clauses.push(`config position ${index + 1}`);
    for (const dep of parsed[index]!) {
      const running = versions.has(dep.name) ? undefined : available.get(dep.name);
      if (running !== undefined) {
        clauses.push(`${dep.name} already running (${node.name} depends on ${dep.spec}, found ${running})`);
      }
    }
    return { name: node.name, reason: clauses.join('; ') };
  });
}

/**
 * Names of the plugins in `nodes` that depend, directly or transitively, on
 * `name`, in reverse load order (the order to disable them in for a cascade).
 * `name` itself is never listed. Lenient: it checks no versions, and if the
 * plugins somehow form a cycle the plugins on it keep their input order.
 */
export function dependentsOf(name: string, nodes: readonly DependencyNode[]): string[] {
  const dependents = new Set<string>();
  const pending = [name];
  while (pending.length > 0) {
    const target = pending.pop()!;
    for (const node of nodes) {
      if (node.name === name || dependents.has(node.name)) continue;
      if (node.dependencies.some((spec) => parseDependency(spec).name === target)) {
        dependents.add(node.name);
        pending.push(node.name);
      }
    }
  }
  const { order } = stableOrder(nodes);
  const placed = new Set(order);
  const full = [...order, ...nodes.map((_, i) => i).filter((i) => !placed.has(i))];
  return full
    .map((i) => nodes[i]!.name)
    .filter((n) => dependents.has(n))
    .reverse();
}

/**
 * Checks one plugin against a set of already running plugins (name -> version),
 * for loading a single plugin at run time; throws the same errors as
 * resolveLoadOrder.
 */
export function checkDependencies(node: DependencyNode, running: ReadonlyMap<string, string>, serverVersion: string): void {
  resolveLoadOrder([node], serverVersion, { available: running });
}

/** Lines for `smtp-server plugins order`: "1. name@version  reason" ("1. name  reason" when the version is unknown). */
export function formatOrder(order: readonly OrderedPlugin[], versions: ReadonlyMap<string, string>): string[] {
  return order.map((plugin, index) => {
    const version = versions.get(plugin.name);
    const label = version === undefined ? plugin.name : `${plugin.name}@${version}`;
    return `${index + 1}. ${label}  ${plugin.reason}`;
  });
}
