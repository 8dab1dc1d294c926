import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/errors.js';
import { PROJECT_ROOT } from '../src/paths.js';

describe('docs/errors.md', () => {
  it('lists exactly the codes the host raises, with their SMTP replies', () => {
    const doc = readFileSync(join(PROJECT_ROOT, 'docs', 'errors.md'), 'utf8');
    const rows = [...doc.matchAll(/^\| `(SMTP_E_[A-Z_]+)` \| ([^|]*) \|/gm)].map((m) => [m[1], m[2]!.trim()]);
    const expected = Object.entries(ERROR_CODES).map(([code, [, reply]]) => [code, reply ? `${reply.code} ${reply.enhanced}` : '-']);
    expect(rows.sort()).toEqual(expected.sort());
  });

  it('finds every code used in src/ in the table', () => {
    const used = new Set<string>();
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir)) {
        const path = join(dir, entry);
        if (statSync(path).isDirectory()) walk(path);
        else if (path.endsWith('.ts')) for (const m of readFileSync(path, 'utf8').matchAll(/'(SMTP_E_[A-Z_]+)'/g)) used.add(m[1]!);
      }
    };
    walk(join(PROJECT_ROOT, 'src'));
    for (const code of used) expect(Object.keys(ERROR_CODES)).toContain(code);
  });
});
