// Writes docs/benchmarks.md from one run's results: the machine, the date,
// the commands, every scenario's tables, the targets met or missed, the
// profiles of the misses and the chart. The analysis under each scenario is
// written by a person from the run's figures; it lives between
// <!-- analysis:ID run=DATE --> and <!-- /analysis:ID --> and is carried over
// when the file is written again, with a warning when it was written for an
// earlier run than the figures above it.

const STALE_PREFIX = '> **Written for the run of';

/** The analysis blocks of an existing report: id -> { run, text }. */
export function readAnalyses(markdown) {
  const blocks = new Map();
  const pattern = /<!-- analysis:([\w-]+) run=(\S+) -->\n([\s\S]*?)<!-- \/analysis:\1 -->/g;
  for (const match of markdown.matchAll(pattern)) {
    const text = match[3].split('\n').filter((line) => !line.startsWith(STALE_PREFIX)).join('\n').trim();
    blocks.set(match[1], { run: match[2], text });
  }
  return blocks;
}

function analysisBlock(id, runDate, previous) {
  const kept = previous.get(id);
  if (kept === undefined || kept.text === '' || kept.text.startsWith('_Analysis')) {
    return `<!-- analysis:${id} run=${runDate} -->\n_Analysis: to be written from this run's figures._\n<!-- /analysis:${id} -->`;
  }
  const stale = kept.run === runDate ? '' : `${STALE_PREFIX} ${kept.run}**; the figures above come from a later run: check it against them.\n\n`;
  return `<!-- analysis:${id} run=${kept.run} -->\n${stale}${kept.text}\n<!-- /analysis:${id} -->`;
}

function table({ caption, header, rows }) {
  const lines = [];
  if (caption) lines.push(`**${caption}**`, '');
  // Columns of figures are right-aligned, columns of words left-aligned.
  const figure = (cell) => /^[-+\d.,]+( ?(x|%|ns|us|ms|s|MiB|KiB)( .*)?)?$|^-$/.test(String(cell));
  const numeric = header.map((_, i) => i > 0 && rows.length > 0 && rows.every((row) => figure(row[i])));
  lines.push(`| ${header.join(' | ')} |`, `|${numeric.map((n) => (n ? '---:' : '---')).join('|')}|`);
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/** A scenario's result in the shape the report uses (older scenarios return { title, header, rows, notes }). */
export function normalize(file, result) {
  return {
    id: file.replace(/\.mjs$/, ''),
    file,
    title: result.title,
    description: result.description ?? '',
    commands: result.commands ?? [`npm run bench -- ${file.replace(/\.mjs$/, '')}`],
    tables: result.tables ?? (result.header ? [{ header: result.header, rows: result.rows }] : []),
    notes: result.notes ?? [],
    targets: result.targets ?? [],
    profiles: result.profiles ?? [],
    skipped: result.skipped ?? [],
    charts: result.charts ?? (result.chart ? [result.chart] : []),
    seconds: result.seconds,
    error: result.error,
  };
}

export function renderScenarioText(s) {
  const parts = [`## ${s.number ? `${s.number}. ` : ''}${s.title} (\`bench/${s.file}\`)`, ''];
  if (s.error) parts.push(`**This scenario failed in this run**: \`${s.error}\``, '');
  if (s.description) parts.push(s.description, '');
  if (s.commands.length > 0) parts.push('```', ...s.commands, '```', '');
  for (const t of s.tables) parts.push(table(t), '');
  for (const note of s.notes) parts.push(note, '');
  for (const skip of s.skipped) parts.push(`**Skipped**: ${skip}`, '');
  if (s.targets.length > 0) {
    parts.push(table({ header: ['target', 'measured in this run', 'result'], rows: s.targets.map((t) => [t.name, t.measured, t.met === null ? 'not measured' : t.met ? 'met' : '**missed**']) }), '');
  }
  for (const p of s.profiles) parts.push(`<details><summary>Where the time goes: ${p.what}</summary>\n\n${p.markdown}\n\n</details>`, '');
  if (s.seconds !== undefined) parts.push(`_Scenario wall time: ${s.seconds.toFixed(0)} s._`, '');
  return parts.join('\n');
}

/** The whole docs/benchmarks.md. */
export function renderReport({ runDate, machine, node, wallSeconds, load, tools, scenarios, previous, chartFile }) {
  const targets = scenarios.flatMap((s) => s.targets.map((t) => ({ ...t, file: s.file })));
  const skipped = scenarios.flatMap((s) => s.skipped.map((why) => `${s.title}: ${why}`));
  const failed = scenarios.filter((s) => s.error);
  const lines = [
    '# Benchmarks',
    '',
    '<!-- Written by `npm run bench` (bench/run.mjs). Edit only the analysis blocks: they are kept when the file is written again. -->',
    '',
    '`npm run bench` builds the project and every plugin it measures from source, runs every',
    'scenario in `bench/` (one file each, peers interleaved round by round, each round starting',
    'one peer later, so that drift on a shared machine hits them alike) and writes this file and',
    'the chart `docs/benchmarks.svg`.',
    '`npm run bench -- NAME` runs the scenarios whose file name contains NAME and writes its',
    'report to `build/bench/benchmarks.md` instead. Compare figures from one run, not across',
    'runs. CI does not run the benchmarks.',
    '',
    `This run: ${runDate}, ${machine}, Node ${node}, ${load}; \`npm run bench\` took ${(wallSeconds / 60).toFixed(1)} minutes (bench/run.mjs; the TypeScript build before it takes a few seconds more).`,
    '',
    'Tools found:',
    '',
    ...tools.map((t) => `- ${t}`),
    '',
    `![Benchmarks of this run](${chartFile})`,
    '',
    '## Targets (issue 12), measured in this run',
    '',
    table({
      header: ['scenario', 'target', 'measured in this run', 'result'],
      rows: targets.map((t) => [t.scenario, t.name, t.measured, t.met === null ? 'not measured' : t.met ? 'met' : '**missed**']),
    }),
    '',
    analysisBlock('summary', runDate, previous),
    '',
  ];
  if (skipped.length > 0 || failed.length > 0) {
    lines.push('## Skipped or failed in this run', '');
    for (const s of skipped) lines.push(`- ${s}`);
    for (const s of failed) lines.push(`- ${s.title}: failed: \`${s.error}\``);
    lines.push('');
  }
  for (const s of scenarios) lines.push(renderScenarioText(s), analysisBlock(s.id, runDate, previous), '');
  return `${lines.join('\n').replace(/\n{3,}/g, '\n\n').trim()}\n`;
}
