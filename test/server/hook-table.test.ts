import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HOOK_NAMES } from '../../src/abi/hooks.js';
import { PROJECT_ROOT } from '../../src/paths.js';
import { HOOK_TABLE } from '../../src/server/hook-table.js';

/** The rows of docs/hooks.md's hook tables: | `hook` | when | keys | kind |. */
function documentedHooks(): Map<string, { keys: string[]; kind: string }> {
  const doc = readFileSync(join(PROJECT_ROOT, 'docs', 'hooks.md'), 'utf8');
  const rows = new Map<string, { keys: string[]; kind: string }>();
  for (const match of doc.matchAll(/^\| `([a-z_]+)` \| [^|]* \| ([^|]*) \| ([^|]*) \|$/gm)) {
    if (!(HOOK_NAMES as readonly string[]).includes(match[1]!)) continue;
    rows.set(match[1]!, { keys: [...match[2]!.matchAll(/`([a-z_]+)`/g)].map((m) => m[1]!), kind: match[3]!.trim() });
  }
  return rows;
}

describe('docs/hooks.md', () => {
  it('documents every hook with exactly the keys, kind and default refusal of the hook table', () => {
    const documented = documentedHooks();
    expect([...documented.keys()].sort()).toEqual([...HOOK_NAMES].sort());
    for (const spec of HOOK_TABLE) {
      const row = documented.get(spec.name)!;
      expect(row.keys.sort(), spec.name).toEqual([...spec.keys].sort());
      const kind = spec.refusal === null ? 'notification' : `gating: \`${spec.refusal.code} ${spec.refusal.enhanced} ${spec.refusal.text}\``;
      expect(row.kind, spec.name).toBe(kind);
    }
  });

  it('marks exactly the message stages before storage as carrying the body', () => {
    expect(HOOK_TABLE.filter((spec) => spec.body).map((spec) => spec.name)).toEqual(['message_received', 'message_validated', 'message_filtered']);
  });
});
