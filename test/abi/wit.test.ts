import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import { HOOK_NAMES } from '../../src/abi/hooks.js';
import { ABI_DIR, ABI_HEADER } from '../../src/paths.js';

// abi/smtp-plugin.wit is the C ABI (abi/smtp_plugin.h) as a WIT world, one to
// one. Both are read as text here and compared, so a change to one that is
// not made to the other fails: the hook enum, the status enum, the metadata
// record, the six exports and what the hook context offers.

const WIT_PATH = join(ABI_DIR, 'smtp-plugin.wit');

// --- reading the header -------------------------------------------------------

interface CEnumerator {
  name: string;
  value: number;
}

interface CField {
  name: string;
  /** The declaration without the name: "const char *", "int (*)(void)". */
  type: string;
  /** For a function pointer: its return type, e.g. "int", "void", "const smtp_plugin_metadata *". */
  returns?: string;
}

interface Header {
  hooks: CEnumerator[];
  hookCount: number;
  statuses: CEnumerator[];
  metadata: CField[];
  interface: CField[];
  hostApi: CField[];
  hookContext: CField[];
}

function stripCComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/.*$/gm, ' ');
}

function squash(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/** The body of `typedef <kind> <name> { ... } <name>;`. */
function cTypedefBody(header: string, kind: 'enum' | 'struct', name: string): string {
  const match = new RegExp(`typedef\\s+${kind}\\s+${name}\\s*\\{([\\s\\S]*?)\\}\\s*${name}\\s*;`).exec(header);
  if (match === null) throw new Error(`abi/smtp_plugin.h has no typedef ${kind} ${name}`);
  return match[1]!;
}

function cEnum(header: string, name: string, prefix: string): CEnumerator[] {
  let next = 0;
  return cTypedefBody(header, 'enum', name)
    .split(',')
    .map(squash)
    .filter((item) => item !== '')
    .map((item) => {
      const match = /^(\w+)(?:\s*=\s*(\d+))?$/.exec(item);
      if (match === null || !match[1]!.startsWith(prefix)) throw new Error(`${name}: cannot read enumerator "${item}"`);
      const value = match[2] === undefined ? next : Number(match[2]);
      next = value + 1;
      return { name: match[1]!.slice(prefix.length), value };
    });
}

function cStruct(header: string, name: string): CField[] {
  return cTypedefBody(header, 'struct', name)
    .split(';')
    .map(squash)
    .filter((declaration) => declaration !== '')
    .map((declaration) => {
      const pointer = /^(.*?)\(\s*\*\s*(\w+)\s*\)\s*(\(.*\))$/.exec(declaration);
      if (pointer !== null) return { name: pointer[2]!, type: `${pointer[1]!.trim()} (*)${pointer[3]!}`, returns: pointer[1]!.trim() };
      const plain = /^(.*?)(\w+)\s*(\[\s*\w*\s*\])?$/.exec(declaration);
      if (plain === null) throw new Error(`${name}: cannot read field "${declaration}"`);
      return { name: plain[2]!, type: `${plain[1]!.trim()}${plain[3] ?? ''}` };
    });
}

/**
 * What ABI 1.1 and 1.2 added to the header, which the component world does
 * not offer yet (docs/components.md: components have no clock, network,
 * blocking flag or host counters): the WIT is compared with the header's
 * ABI 1.0 part.
 */
const ABI_1_1_ONLY = new Set(['flags', 'now_unix_ms', 'net_connect', 'net_send', 'net_recv', 'net_close', 'counter_incr']);
const abi10 = (fields: CField[]): CField[] => fields.filter((field) => !ABI_1_1_ONLY.has(field.name));

function parseHeader(text: string): Header {
  const header = stripCComments(text);
  const count = /#define\s+SMTP_HOOK_COUNT\s+(\d+)/.exec(header);
  if (count === null) throw new Error('abi/smtp_plugin.h defines no SMTP_HOOK_COUNT');
  return {
    hooks: cEnum(header, 'smtp_hook_type', 'SMTP_HOOK_'),
    hookCount: Number(count[1]),
    statuses: cEnum(header, 'smtp_status', 'SMTP_STATUS_'),
    metadata: abi10(cStruct(header, 'smtp_plugin_metadata')),
    interface: cStruct(header, 'smtp_plugin_interface'),
    hostApi: abi10(cStruct(header, 'smtp_host_api')),
    hookContext: cStruct(header, 'smtp_hook_context'),
  };
}

// --- reading the WIT ----------------------------------------------------------

interface WitFunction {
  name: string;
  params: { name: string; type: string }[];
  /** The result type, or null for none. */
  result: string | null;
}

interface Wit {
  hookType: string[];
  status: string[];
  metadata: { name: string; type: string }[];
  hookContext: WitFunction[];
  /** The world's exports, in order. */
  exports: WitFunction[];
}

function stripWitComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/.*$/gm, ' ');
}

/** The text between the braces that follow `opening` (a regex), braces balanced. */
function witBlock(wit: string, opening: RegExp, what: string): string {
  const match = opening.exec(wit);
  if (match === null) throw new Error(`abi/smtp-plugin.wit has no ${what}`);
  const start = wit.indexOf('{', match.index + match[0].length - 1);
  let depth = 0;
  for (let at = start; at < wit.length; at++) {
    if (wit[at] === '{') depth++;
    else if (wit[at] === '}' && --depth === 0) return wit.slice(start + 1, at);
  }
  throw new Error(`abi/smtp-plugin.wit: ${what} is not closed`);
}

/** Splits on `separator` outside <>, () and {}. */
function splitTopLevel(text: string, separator: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let at = 0; at < text.length; at++) {
    const c = text[at]!;
    if ('<({'.includes(c)) depth++;
    else if ('>)}'.includes(c) && text[at - 1] !== '-') depth--; // not the `>` of `->`
    else if (c === separator && depth === 0) {
      parts.push(text.slice(start, at));
      start = at + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.map(squash).filter((part) => part !== '');
}

/** `name: type` pairs, names without the `%` escape. */
function witNamed(list: string, what: string): { name: string; type: string }[] {
  return splitTopLevel(list, ',').map((item) => {
    const match = /^%?([a-z][a-z0-9-]*)\s*:\s*(.+)$/.exec(item);
    if (match === null) throw new Error(`${what}: cannot read "${item}"`);
    return { name: match[1]!, type: squash(match[2]!) };
  });
}

/** `name: func(params) -> result` (optionally `static func`). */
function witFunction(item: string, what: string): WitFunction {
  const match = /^%?([a-z][a-z0-9-]*)\s*:\s*(?:static\s+)?func\s*\(([\s\S]*?)\)\s*(?:->\s*(.+))?$/.exec(item);
  if (match === null) throw new Error(`${what}: cannot read "${item}"`);
  return { name: match[1]!, params: witNamed(match[2]!, `${what} ${match[1]!}`), result: match[3] === undefined ? null : squash(match[3]) };
}

function parseWit(text: string): Wit {
  const wit = stripWitComments(text);
  const enumCases = (name: string): string[] => splitTopLevel(witBlock(wit, new RegExp(`\\benum\\s+${name}\\s*\\{`), `enum ${name}`), ',');
  const resource = witBlock(wit, /\bresource\s+hook-context\s*\{/, 'resource hook-context');
  const world = witBlock(wit, /\bworld\s+smtp-plugin\s*\{/, 'world smtp-plugin');
  return {
    hookType: enumCases('hook-type'),
    status: enumCases('status'),
    metadata: witNamed(witBlock(wit, /\brecord\s+plugin-metadata\s*\{/, 'record plugin-metadata'), 'record plugin-metadata'),
    hookContext: splitTopLevel(resource, ';')
      .filter((item) => !item.startsWith('constructor'))
      .map((item) => witFunction(item, 'resource hook-context')),
    exports: splitTopLevel(world, ';')
      .filter((statement) => statement.startsWith('export '))
      .map((statement) => {
        const item = statement.slice('export '.length).trim();
        // `export some-interface;` has no signature of its own.
        return /^[\w:/@.-]+$/.test(item) ? { name: item, params: [], result: null } : witFunction(item, 'world smtp-plugin');
      }),
  };
}

// --- the correspondence ---------------------------------------------------------

/** SMTP_HOOK_MESSAGE_RECEIVED's suffix, smtp_plugin_metadata's min_server_version: as WIT names it. */
function kebab(cName: string): string {
  return cName.toLowerCase().replaceAll('_', '-');
}

/** The WIT type that carries a field of C type `cType`. */
function witTypeOf(cType: string): string[] {
  const type = squash(cType);
  if (type === 'uint64_t') return ['u64'];
  if (type === 'const char *const *') return ['list<string>']; // NULL-terminated array of strings
  if (type === 'const char *') return ['string', 'option<string>']; // required or nullable
  return [];
}

/** The WIT result of an exported function whose C return type is `returns`. */
function witResultOf(returns: string): string | null {
  const type = squash(returns);
  if (type === 'void') return null;
  if (type === 'int') return 's32';
  if (type === 'const smtp_plugin_metadata *') return 'plugin-metadata';
  return `<no WIT type for C ${type}>`;
}

/** Each check: [what the WIT says, what the header (and hooks.ts) says it must]. */
const CHECKS: Record<string, (wit: Wit, header: Header) => [unknown, unknown]> = {
  'the header numbers its hooks 0 to SMTP_HOOK_COUNT - 1': (_wit, header) => [
    header.hooks.map((hook) => hook.value),
    [...Array(header.hookCount).keys()],
  ],
  'hooks.ts HOOK_NAMES are the header hooks, in order': (_wit, header) => [[...HOOK_NAMES], header.hooks.map((hook) => hook.name.toLowerCase())],
  'enum hook-type is smtp_hook_type, in order': (wit, header) => [wit.hookType, header.hooks.map((hook) => kebab(hook.name))],
  'enum hook-type is HOOK_NAMES, in order': (wit) => [wit.hookType, HOOK_NAMES.map(kebab)],
  'enum status is smtp_status, in order': (wit, header) => [
    wit.status.map((name, value) => ({ name, value })),
    header.statuses.map((status) => ({ name: kebab(status.name), value: status.value })),
  ],
  'record plugin-metadata has the fields of smtp_plugin_metadata, in order': (wit, header) => [
    wit.metadata.map((field) => field.name),
    header.metadata.map((field) => kebab(field.name)),
  ],
  'record plugin-metadata types carry the C types': (wit, header) => [
    wit.metadata.map((field) => field.type),
    header.metadata.map((field, index) => {
      const allowed = witTypeOf(field.type);
      const actual = wit.metadata[index]?.type;
      return actual !== undefined && allowed.includes(actual) ? actual : allowed.join(' | ') || `<no WIT type for C ${field.type}>`;
    }),
  ],
  'world smtp-plugin exports the smtp_plugin_interface functions, in order': (wit, header) => [
    wit.exports.map((f) => f.name),
    header.interface.map((field) => kebab(field.name)),
  ],
  'the exports return what the C functions return': (wit, header) => [
    wit.exports.map((f) => [f.name, f.result]),
    header.interface.map((field) => [kebab(field.name), witResultOf(field.returns ?? 'not a function pointer')]),
  ],
  'init takes the config text, execute-hook the context': (wit) => [
    wit.exports.filter((f) => f.name === 'init' || f.name === 'execute-hook').map((f) => [f.name, f.params.map((p) => p.type)]),
    [
      ['init', ['string']],
      ['execute-hook', ['borrow<hook-context>']],
    ],
  ],
  // The context's hook_type and cancel fields, and the host functions of smtp_host_api.
  'resource hook-context offers hook-type, cancel and the smtp_host_api functions': (wit, header) => [
    wit.hookContext.map((f) => f.name).sort(),
    [
      ...header.hookContext.filter((field) => field.name === 'hook_type' || field.name === 'cancel').map((field) => kebab(field.name)),
      ...header.hostApi.filter((field) => field.returns !== undefined).map((field) => kebab(field.name)),
    ].sort(),
  ],
  'resource hook-context signatures': (wit) => [
    Object.fromEntries(wit.hookContext.map((f) => [f.name, `(${f.params.map((p) => p.type).join(', ')}) -> ${f.result ?? 'none'}`])),
    {
      'hook-type': '() -> hook-type',
      'get-metadata': '(string) -> option<list<u8>>',
      'set-metadata': '(string, list<u8>) -> status',
      cancel: '() -> none',
    },
  ],
};

/** The names of the checks that fail for this WIT text (a WIT that cannot be read fails them all). */
function drift(witText: string, header: Header): string[] {
  let wit: Wit;
  try {
    wit = parseWit(witText);
  } catch {
    return Object.keys(CHECKS);
  }
  return Object.entries(CHECKS)
    .filter(([, check]) => {
      const [actual, expected] = check(wit, header);
      return !isDeepStrictEqual(actual, expected);
    })
    .map(([name]) => name);
}

describe('abi/smtp-plugin.wit is abi/smtp_plugin.h as a WIT world', () => {
  const witText = readFileSync(WIT_PATH, 'utf8');
  const header = parseHeader(readFileSync(ABI_HEADER, 'utf8'));
  const wit = parseWit(witText);

  it('reads the header: 19 hooks, 4 statuses, the metadata fields and the six functions', () => {
    expect(header.hookCount).toBe(19);
    expect(header.hooks).toHaveLength(19);
    expect(header.hooks[2]).toEqual({ name: 'MESSAGE_FILTERED', value: 2 });
    expect(header.statuses.map((s) => s.name)).toEqual(['OK', 'NO_MEMORY', 'TOO_LARGE', 'INVALID']);
    expect(header.metadata.map((f) => f.name)).toEqual([
      'name',
      'version',
      'author',
      'description',
      'license',
      'dependencies',
      'min_server_version',
      'max_server_version',
      'handled_hooks',
    ]);
    expect(header.interface.map((f) => [f.name, f.returns])).toEqual([
      ['init', 'int'],
      ['deinit', 'void'],
      ['get_metadata', 'const smtp_plugin_metadata *'],
      ['execute_hook', 'int'],
      ['enable', 'int'],
      ['disable', 'int'],
    ]);
    expect(header.hostApi.filter((f) => f.returns !== undefined).map((f) => f.name)).toEqual(['get_metadata', 'set_metadata']);
  });

  it('reads the WIT: 19 hooks, the metadata record, the context and six exports', () => {
    expect(wit.hookType).toHaveLength(19);
    expect(wit.hookType[2]).toBe('message-filtered');
    expect(wit.metadata).toHaveLength(9);
    expect(wit.hookContext.map((f) => f.name)).toEqual(['hook-type', 'get-metadata', 'set-metadata', 'cancel']);
    expect(wit.exports.map((f) => f.name)).toEqual(['init', 'deinit', 'get-metadata', 'execute-hook', 'enable', 'disable']);
  });

  for (const [name, check] of Object.entries(CHECKS)) {
    it(name, () => {
      const [actual, expected] = check(wit, header);
      expect(actual).toEqual(expected);
    });
  }

  describe('fails when the WIT drifts (edited copies in memory)', () => {
    /** [what changes, the edit, the checks it must fail]. */
    const EDITS: [string, (wit: string) => string, string[]][] = [
      [
        'two hooks swapped',
        (w) => w.replace(/message-received,(\s*)message-validated,/, 'message-validated,$1message-received,'),
        ['enum hook-type is smtp_hook_type, in order', 'enum hook-type is HOOK_NAMES, in order'],
      ],
      ['a hook dropped', (w) => w.replace(/\s*server-stopped,/, ''), ['enum hook-type is smtp_hook_type, in order', 'enum hook-type is HOOK_NAMES, in order']],
      [
        'a hook added',
        (w) => w.replace('server-stopped,', 'server-stopped,\n    server-reloaded,'),
        ['enum hook-type is smtp_hook_type, in order', 'enum hook-type is HOOK_NAMES, in order'],
      ],
      ['a hook renamed', (w) => w.replace('auth-failed,', 'auth-refused,'), ['enum hook-type is smtp_hook_type, in order', 'enum hook-type is HOOK_NAMES, in order']],
      ['two statuses swapped', (w) => w.replace(/no-memory,(\s*)too-large,/, 'too-large,$1no-memory,'), ['enum status is smtp_status, in order']],
      [
        'a metadata field renamed',
        (w) => w.replace('license: string,', 'licence: string,'),
        ['record plugin-metadata has the fields of smtp_plugin_metadata, in order'],
      ],
      [
        'two metadata fields swapped',
        (w) => w.replace(/author: string,(\s*)description: string,/, 'description: string,$1author: string,'),
        ['record plugin-metadata has the fields of smtp_plugin_metadata, in order'],
      ],
      [
        'a metadata field retyped',
        (w) => w.replace('handled-hooks: u64', 'handled-hooks: u32'),
        ['record plugin-metadata types carry the C types'],
      ],
      [
        'a metadata field added',
        (w) => w.replace('handled-hooks: u64,', 'handled-hooks: u64,\n    homepage: string,'),
        ['record plugin-metadata has the fields of smtp_plugin_metadata, in order', 'record plugin-metadata types carry the C types'],
      ],
      [
        'two exports swapped',
        (w) => w.replace(/(export enable: func\(\) -> s32;)(\s*)(export disable: func\(\) -> s32;)/, '$3$2$1'),
        ['world smtp-plugin exports the smtp_plugin_interface functions, in order', 'the exports return what the C functions return'],
      ],
      [
        'an export dropped',
        (w) => w.replace(/\s*export deinit: func\(\);/, ''),
        ['world smtp-plugin exports the smtp_plugin_interface functions, in order', 'the exports return what the C functions return'],
      ],
      ['an export retyped', (w) => w.replace('export enable: func() -> s32;', 'export enable: func();'), ['the exports return what the C functions return']],
      [
        'execute-hook taking the context by value',
        (w) => w.replace('context: borrow<hook-context>', 'context: own<hook-context>'),
        ['init takes the config text, execute-hook the context'],
      ],
      [
        'cancel dropped from the context',
        (w) => w.replace(/\s*cancel: func\(\);/, ''),
        ['resource hook-context offers hook-type, cancel and the smtp_host_api functions', 'resource hook-context signatures'],
      ],
      [
        'a method added to the context',
        (w) => w.replace('cancel: func();', 'cancel: func();\n    delete-metadata: func(key: string) -> status;'),
        ['resource hook-context offers hook-type, cancel and the smtp_host_api functions', 'resource hook-context signatures'],
      ],
      ['set-metadata returning nothing', (w) => w.replace(/(set-metadata: func\(key: string, value: list<u8>\)) -> status;/, '$1;'), ['resource hook-context signatures']],
    ];

    it('the file as it is passes every check', () => {
      expect(drift(witText, header)).toEqual([]);
    });

    for (const [what, edit, failing] of EDITS) {
      it(`${what}: ${failing.length === 1 ? 'a check fails' : `${failing.length} checks fail`}`, () => {
        const edited = edit(witText);
        expect(edited, 'the edit applies').not.toBe(witText);
        expect(drift(edited, header)).toEqual(failing);
      });
    }

    it('an unreadable WIT fails every check', () => {
      expect(drift(witText.replace('enum hook-type', 'flags hook-type'), header)).toEqual(Object.keys(CHECKS));
    });

    it('a hook renamed in the header (not in the WIT) fails the header checks', () => {
      const source = readFileSync(ABI_HEADER, 'utf8').replace('SMTP_HOOK_AUTH_FAILED = 7', 'SMTP_HOOK_AUTH_REFUSED = 7');
      expect(drift(witText, parseHeader(source))).toEqual(['hooks.ts HOOK_NAMES are the header hooks, in order', 'enum hook-type is smtp_hook_type, in order']);
    });
  });
});
