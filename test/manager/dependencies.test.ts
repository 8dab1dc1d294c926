import { describe, expect, it } from 'vitest';
import { HostError } from '../../src/errors.js';
import {
  checkDependencies,
  dependentsOf,
  formatOrder,
  resolveLoadOrder,
  type DependencyNode,
} from '../../src/manager/dependencies.js';

const SERVER = '0.28.0';

function node(
  name: string,
  dependencies: string[] = [],
  version = '1.0.0',
  bounds: { min?: string | null; max?: string | null } = {},
): DependencyNode {
  return { name, version, dependencies, minServerVersion: bounds.min ?? null, maxServerVersion: bounds.max ?? null };
}

const names = (nodes: DependencyNode[], options?: { available?: ReadonlyMap<string, string> }): string[] =>
  resolveLoadOrder(nodes, SERVER, options).map((p) => p.name);

/** The code and message of the HostError `run` throws. */
function failure(run: () => unknown): { code: string; message: string } {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(HostError);
    return { code: (error as HostError).code, message: (error as HostError).message };
  }
  throw new Error('expected a HostError');
}

describe('resolveLoadOrder', () => {
  it('keeps the input order when nothing depends on anything', () => {
    expect(names([node('c'), node('a'), node('b')])).toEqual(['c', 'a', 'b']);
    expect(resolveLoadOrder([], SERVER)).toEqual([]);
  });

  it('puts a dependency listed after its dependent first, ties in input order', () => {
    const nodes = [node('rate-limiter', ['spam-filter@^1.0']), node('logger'), node('spam-filter', [], '1.1.0'), node('audit')];
    expect(resolveLoadOrder(nodes, SERVER)).toEqual([
      { name: 'logger', reason: 'config position 2' },
      { name: 'spam-filter', reason: 'config position 3' },
      { name: 'rate-limiter', reason: 'after spam-filter (rate-limiter depends on spam-filter@^1.0, found 1.1.0)' },
      { name: 'audit', reason: 'config position 4' },
    ]);
  });

  it('orders a diamond: base, then both sides in input order, then the top', () => {
    const nodes = [node('top', ['right', 'left']), node('right', ['base']), node('left', ['base@1.x']), node('base', [], '1.4.0')];
    const order = resolveLoadOrder(nodes, SERVER);
    expect(order.map((p) => p.name)).toEqual(['base', 'right', 'left', 'top']);
    expect(order[3]!.reason).toBe(
      'after right (top depends on right, found 1.0.0); after left (top depends on left, found 1.0.0)',
    );
    expect(order[2]!.reason).toBe('after base (left depends on base@1.x, found 1.4.0)');
  });

  it('accepts versions inside the range, prereleases included', () => {
    for (const [range, version] of [
      ['^1.0', '1.9.3'],
      ['~1.2', '1.2.9'],
      ['~1.2.3', '1.2.4'],
      ['>=1.0 <2', '1.5.0'],
      ['1.x', '1.0.0'],
      ['^1.0', '1.3.0-rc.1'],
    ]) {
      expect(names([node('a', [`b@${range}`]), node('b', [], version)])).toEqual(['b', 'a']);
    }
  });

  it('refuses a version outside the range', () => {
    expect(failure(() => names([node('rate-limiter', ['spam-filter@^1.0']), node('spam-filter', [], '2.0.0')]))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "rate-limiter" depends on spam-filter@^1.0, found 2.0.0',
    });
    expect(failure(() => names([node('a', ['b@~1.2']), node('b', [], '1.3.0')]))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "a" depends on b@~1.2, found 1.3.0',
    });
  });

  it('refuses a missing dependency', () => {
    expect(failure(() => names([node('rate-limiter', ['spam-filter'])]))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "rate-limiter" depends on "spam-filter", which is not loaded',
    });
  });

  it('refuses malformed specs and invalid ranges', () => {
    expect(failure(() => names([node('a', ['@^1.0'])]))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "a" has a malformed dependency "@^1.0": it must be "name" or "name@<semver range>"',
    });
    expect(failure(() => names([node('a', ['b c'])])).code).toBe('SMTP_E_PLUGIN_DEPENDENCY');
    expect(failure(() => names([node('a', ['b@not a range']), node('b')]))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "a" depends on "b@not a range", whose range "not a range" is not a valid semver range',
    });
    expect(failure(() => names([node('a', ['b@']), node('b')]))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "a" depends on "b@", whose range "" is not a valid semver range',
    });
  });

  it('lets a running plugin satisfy a dependency, checking its version', () => {
    const available = new Map([['spam-filter', '1.1.0']]);
    expect(resolveLoadOrder([node('logger'), node('rate-limiter', ['spam-filter@^1.0'])], SERVER, { available })).toEqual([
      { name: 'logger', reason: 'config position 1' },
      {
        name: 'rate-limiter',
        reason: 'config position 2; spam-filter already running (rate-limiter depends on spam-filter@^1.0, found 1.1.0)',
      },
    ]);
    expect(failure(() => names([node('rate-limiter', ['spam-filter@^2.0'])], { available })).message).toBe(
      'plugin "rate-limiter" depends on spam-filter@^2.0, found 1.1.0',
    );
    // A plugin in the list wins over a running one of the same name.
    expect(failure(() => names([node('r', ['s@^1.0']), node('s', [], '2.0.0')], { available: new Map([['s', '1.0.0']]) })).message).toBe(
      'plugin "r" depends on s@^1.0, found 2.0.0',
    );
  });

  it('reports a self-dependency as a cycle', () => {
    expect(failure(() => names([node('x'), node('a', ['a@^1.0'])]))).toEqual({
      code: 'SMTP_E_PLUGIN_CYCLE',
      message: 'dependency cycle: a -> a',
    });
  });

  it('names a whole cycle, starting from its first plugin in input order', () => {
    // Input order: c, free, a, b; the cycle a -> b -> c -> a starts at c.
    const nodes = [node('c', ['a']), node('free'), node('a', ['b']), node('b', ['c'])];
    expect(failure(() => names(nodes))).toEqual({ code: 'SMTP_E_PLUGIN_CYCLE', message: 'dependency cycle: c -> a -> b -> c' });
    // A plugin that only leads into a cycle is not part of it.
    const tail = [node('entry', ['b']), node('b', ['c']), node('c', ['d']), node('d', ['b'])];
    expect(failure(() => names(tail)).message).toBe('dependency cycle: b -> c -> d -> b');
  });

  it('checks server versions before dependencies, and dependencies before cycles', () => {
    const cycle = [node('a', ['b']), node('b', ['a'])];
    const missing = node('m', ['nowhere']);
    const old = node('z', [], '1.0.0', { min: '9.0.0' });
    expect(failure(() => names([...cycle, missing, old])).code).toBe('SMTP_E_PLUGIN_SERVER_VERSION');
    expect(failure(() => names([...cycle, missing])).code).toBe('SMTP_E_PLUGIN_DEPENDENCY');
    expect(failure(() => names(cycle)).message).toBe('dependency cycle: a -> b -> a');
  });

  it('refuses a plugin listed twice', () => {
    expect(failure(() => names([node('a'), node('b'), node('a')]))).toEqual({
      code: 'SMTP_E_PLUGIN_DUPLICATE',
      message: 'plugin "a" is listed twice (config positions 1 and 3)',
    });
  });

  it('checks min and max server versions, both inclusive', () => {
    const at = (bounds: { min?: string | null; max?: string | null }, server = SERVER) =>
      resolveLoadOrder([node('x', [], '1.0.0', bounds)], server).map((p) => p.name);
    expect(at({ min: null, max: null })).toEqual(['x']);
    expect(at({ min: '0.28.0' })).toEqual(['x']);
    expect(at({ max: '0.28.0' })).toEqual(['x']);
    expect(at({ min: '0.20.0', max: '0.30.0' })).toEqual(['x']);
    expect(failure(() => at({ min: '0.30.0' }))).toEqual({
      code: 'SMTP_E_PLUGIN_SERVER_VERSION',
      message: 'plugin "x" needs server >= 0.30.0, this server is 0.28.0',
    });
    expect(failure(() => at({ max: '0.27.9' }))).toEqual({
      code: 'SMTP_E_PLUGIN_SERVER_VERSION',
      message: 'plugin "x" needs server <= 0.27.9, this server is 0.28.0',
    });
    expect(failure(() => at({ min: '0.29.0', max: '0.31.0' }))).toEqual({
      code: 'SMTP_E_PLUGIN_SERVER_VERSION',
      message: 'plugin "x" needs server >= 0.29.0 and <= 0.31.0, this server is 0.28.0',
    });
    expect(failure(() => at({ min: '0.20.0', max: '0.27.0' })).message).toBe(
      'plugin "x" needs server >= 0.20.0 and <= 0.27.0, this server is 0.28.0',
    );
    expect(failure(() => at({ min: 'soon' }))).toEqual({
      code: 'SMTP_E_PLUGIN_SERVER_VERSION',
      message: 'plugin "x" has min_server_version "soon", which is not a semantic version',
    });
  });
});

describe('dependentsOf', () => {
  const nodes = [
    node('top', ['mid-b', 'mid-a']),
    node('mid-a', ['base@^1.0']),
    node('unrelated'),
    node('mid-b', ['mid-a']),
    node('base'),
    node('other', ['unrelated']),
  ];

  it('lists direct and transitive dependents in reverse load order', () => {
    // Load order: unrelated, base, mid-a, mid-b, top, other.
    expect(resolveLoadOrder(nodes, SERVER).map((p) => p.name)).toEqual(['unrelated', 'base', 'mid-a', 'mid-b', 'top', 'other']);
    expect(dependentsOf('base', nodes)).toEqual(['top', 'mid-b', 'mid-a']);
    expect(dependentsOf('mid-a', nodes)).toEqual(['top', 'mid-b']);
    expect(dependentsOf('unrelated', nodes)).toEqual(['other']);
    expect(dependentsOf('top', nodes)).toEqual([]);
    expect(dependentsOf('not-there', nodes)).toEqual([]);
  });
});

describe('checkDependencies', () => {
  const running = new Map([['spam-filter', '1.1.0'], ['logger', '0.3.0']]);

  it('accepts a plugin whose dependencies are running and in range', () => {
    expect(() => checkDependencies(node('rate-limiter', ['spam-filter@^1.0', 'logger']), running, SERVER)).not.toThrow();
  });

  it('throws the same errors as resolveLoadOrder', () => {
    expect(failure(() => checkDependencies(node('rate-limiter', ['spam-filter@^2.0']), running, SERVER))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "rate-limiter" depends on spam-filter@^2.0, found 1.1.0',
    });
    expect(failure(() => checkDependencies(node('rate-limiter', ['greylist']), running, SERVER))).toEqual({
      code: 'SMTP_E_PLUGIN_DEPENDENCY',
      message: 'plugin "rate-limiter" depends on "greylist", which is not loaded',
    });
    expect(failure(() => checkDependencies(node('x', [], '1.0.0', { min: '0.30.0' }), running, SERVER)).message).toBe(
      'plugin "x" needs server >= 0.30.0, this server is 0.28.0',
    );
    expect(failure(() => checkDependencies(node('x', ['x']), running, SERVER))).toEqual({
      code: 'SMTP_E_PLUGIN_CYCLE',
      message: 'dependency cycle: x -> x',
    });
  });
});

describe('formatOrder', () => {
  it('numbers the plugins with their versions and reasons', () => {
    const nodes = [node('rate-limiter', ['spam-filter@^1.0'], '0.2.0'), node('spam-filter', [], '1.1.0')];
    const versions = new Map(nodes.map((n) => [n.name, n.version]));
    expect(formatOrder(resolveLoadOrder(nodes, SERVER), versions)).toEqual([
      '1. spam-filter@1.1.0  config position 2',
      '2. rate-limiter@0.2.0  after spam-filter (rate-limiter depends on spam-filter@^1.0, found 1.1.0)',
    ]);
    expect(formatOrder([{ name: 'ghost', reason: 'config position 1' }], new Map())).toEqual(['1. ghost  config position 1']);
    expect(formatOrder([], versions)).toEqual([]);
  });
});
