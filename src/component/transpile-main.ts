// `node transpile-main.js COMPONENT DIR`: transpiles a component into the
// cache folder DIR (see transpile.ts: a synchronous load waits for this).
import { readFileSync } from 'node:fs';
import { transpileInto } from './transpile.js';

const [path, dir] = process.argv.slice(2);
if (path === undefined || dir === undefined) {
  process.stderr.write('usage: transpile-main COMPONENT DIR\n');
  process.exit(2);
}
try {
  await transpileInto(readFileSync(path), dir);
} catch (error) {
  process.stderr.write(`${(error as Error).message}\n`);
  process.exit(1);
}
