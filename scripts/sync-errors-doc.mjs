// Rewrites the table in docs/errors.md from src/errors.ts (run after `npm run build`).
// test/errors.test.ts fails until the two agree.
import { readFileSync, writeFileSync } from 'node:fs';
import { ERROR_CODES } from '../dist/src/errors.js';

const path = new URL('../docs/errors.md', import.meta.url);
const doc = readFileSync(path, 'utf8');
const start = doc.indexOf('| code | SMTP reply | meaning |');
const end = doc.indexOf('\n\n', start);
const rows = Object.entries(ERROR_CODES).map(([code, [meaning, reply]]) => `| \`${code}\` | ${reply ? `${reply.code} ${reply.enhanced}` : '-'} | ${meaning} |`);
writeFileSync(path, `${doc.slice(0, start)}| code | SMTP reply | meaning |\n|---|---|---|\n${rows.join('\n')}${doc.slice(end)}`);
