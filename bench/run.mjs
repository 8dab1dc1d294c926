// npm run bench: runs every scenario in bench/ (one file each) and prints
// Markdown tables with the machine and date, for docs/benchmarks.md.
import { cpus, release, totalmem } from 'node:os';
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const scenarios = readdirSync(dir)
  .filter((file) => file.endsWith('.mjs') && file !== 'run.mjs' && !file.startsWith('_'))
  .filter((file) => only.length === 0 || only.some((name) => file.includes(name)))
  .sort();
console.log(`date: ${new Date().toISOString()}`);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}, Node ${process.version}`);
for (const file of scenarios) {
  const { run } = await import(pathToFileURL(`${dir}/${file}`).href);
  const { title, header, rows, notes = [] } = await run();
  console.log(`\n## ${title} (bench/${file})\n| ${header.join(' | ')} |\n|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
  for (const note of notes) console.log(`\n${note}`);
}
