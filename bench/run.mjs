// npm run bench: runs every scenario in bench/ and prints the results as
// Markdown rows, with the machine, for docs/benchmarks.md.
import { cpus, totalmem, release } from 'node:os';
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));
const scenarios = readdirSync(dir).filter((file) => file.endsWith('.mjs') && file !== 'run.mjs').sort();
console.log(`date: ${new Date().toISOString()}`);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}, Node ${process.version}`);
for (const file of scenarios) {
  const { run } = await import(pathToFileURL(`${dir}/${file}`).href);
  console.log(`\n## ${file}\n| peer | median ns/call | min | max |\n|---|---:|---:|---:|`);
  for (const row of await run()) console.log(`| ${row.name} | ${row.median_ns.toFixed(0)} | ${row.min_ns.toFixed(0)} | ${row.max_ns.toFixed(0)} |`);
}
