// npm run bench: runs every scenario in bench/ (one file each), prints each
// one's tables as it finishes, and writes docs/benchmarks.md with the chart
// docs/benchmarks.svg. `npm run bench -- NAME...` runs only the scenarios
// whose file name contains a NAME and writes build/bench/benchmarks.md (and
// .svg) instead, so that a partial run never replaces the full report.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PINNED_ZIG_VERSION } from '../dist/src/toolchain/zig.js';
import { normalize, readAnalyses, renderReport, renderScenarioText } from './_report.mjs';
import { renderChart } from './_svg.mjs';
import { findTool, QUICK } from './_support.mjs';
import { cleanup } from './_smtp.mjs';

const dir = dirname(fileURLToPath(import.meta.url));
const root = join(dir, '..');
/** The issue's scenarios first, numbered as in the issue; then the others. */
const ORDER = ['hook-call', 'smtp-throughput', 'plugin-scaling', 'message-size', 'durable-spool', 'blocking-call', 'sandbox-overhead', 'sandbox-memory', 'component-load'];
const NUMBERED = 5;

const only = process.argv.slice(2);
const files = readdirSync(dir)
  .filter((file) => file.endsWith('.mjs') && file !== 'run.mjs' && !file.startsWith('_'))
  .filter((file) => only.length === 0 || only.some((name) => file.includes(name)))
  .sort((a, b) => {
    const rank = (file) => (ORDER.includes(file.replace(/\.mjs$/, '')) ? ORDER.indexOf(file.replace(/\.mjs$/, '')) : ORDER.length);
    return rank(a) - rank(b) || a.localeCompare(b);
  });

function toolLines() {
  const lines = [];
  const source = findTool('smtp-source', ['/usr/sbin/smtp-source']);
  lines.push(source ? `smtp-source: \`${source}\` (Debian package postfix)` : 'smtp-source: **not found** (apt-get install postfix): the SMTP scenarios are skipped');
  const rsyslogd = findTool('rsyslogd', ['/usr/sbin/rsyslogd']);
  lines.push(rsyslogd ? `rsyslogd: \`${rsyslogd}\` (Debian package rsyslog)` : 'rsyslogd: **not found** (apt-get install rsyslog): a TCP sink in the bench process counts the log records instead');
  const haraka = join(root, 'node_modules', 'Haraka', 'package.json');
  lines.push(existsSync(haraka) ? `Haraka ${JSON.parse(readFileSync(haraka, 'utf8')).version} (npm devDependency)` : 'Haraka: **not installed** (npm install): its rows are skipped');
  const postconf = spawnSync('postconf', ['-h', 'mail_version'], { encoding: 'utf8' });
  lines.push(postconf.status === 0 ? `Postfix ${postconf.stdout.trim()} (its smtpd in a private instance for the durable-spool scenario)` : 'Postfix: **not found** (apt-get install postfix): its row is skipped');
  lines.push(`Zig ${PINNED_ZIG_VERSION} (the project's toolchain) builds every plugin measured, into build/bench/`);
  return lines;
}

const started = Date.now();
const loadBefore = loadavg()[0];
const runDate = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const machine = `${cpus().length} x ${cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}`;
const tools = toolLines();
console.log(`date: ${runDate}\nmachine: ${machine}, Node ${process.version}\n${tools.map((t) => `- ${t}`).join('\n')}`);

const scenarios = [];
for (const file of files) {
  const id = file.replace(/\.mjs$/, '');
  const index = ORDER.indexOf(id);
  const t0 = Date.now();
  console.error(`\n[bench] ${file} ...`);
  let result;
  try {
    const { run } = await import(pathToFileURL(join(dir, file)).href);
    result = await run();
  } catch (error) {
    console.error(error);
    result = { title: id, error: String(error?.message ?? error).split('\n')[0] };
  } finally {
    cleanup();
  }
  const scenario = { ...normalize(file, result), seconds: (Date.now() - t0) / 1000, number: index >= 0 && index < NUMBERED ? index + 1 : undefined };
  scenarios.push(scenario);
  console.error(`[bench] ${file}: ${scenario.seconds.toFixed(0)} s`);
  console.log(`\n${renderScenarioText(scenario)}`);
}
const wallSeconds = (Date.now() - started) / 1000;
// The machine may be shared: its load average before the run and after (the bench itself keeps about 2 busy).
const load = `load average ${loadBefore.toFixed(1)} before the run, ${loadavg()[0].toFixed(1)} at its end`;

// A partial or quick run (BENCH_QUICK=1) never replaces the full report.
const full = only.length === 0 && !QUICK;
const outDir = full ? join(root, 'docs') : join(root, 'build', 'bench');
mkdirSync(outDir, { recursive: true });
const reportPath = join(outDir, 'benchmarks.md');
const chartPath = join(outDir, 'benchmarks.svg');
const previousPath = join(root, 'docs', 'benchmarks.md');
const previous = readAnalyses(existsSync(previousPath) ? readFileSync(previousPath, 'utf8') : '');
const panels = scenarios.flatMap((s) => s.charts);
writeFileSync(chartPath, renderChart(panels, `npm run bench, ${runDate}, ${machine}, Node ${process.version}. Grey: bare smtp-server or plain JS; blues: this server (light: no plugins, dark: native plugins); orange: sandboxed; purple: sandboxed in a worker; red: Haraka; green: Postfix.`));
writeFileSync(reportPath, renderReport({ runDate, machine, node: process.version, wallSeconds, load, tools, scenarios, previous, chartFile: 'benchmarks.svg' }));
const missed = scenarios.flatMap((s) => s.targets).filter((t) => t.met === false).length;
const met = scenarios.flatMap((s) => s.targets).filter((t) => t.met === true).length;
console.log(`\nwrote ${relative(root, reportPath)} and ${relative(root, chartPath)}; targets: ${met} met, ${missed} missed; wall time ${(wallSeconds / 60).toFixed(1)} min`);
process.exit(0);
