// The chart in docs/benchmarks.svg: a small hand-written SVG generator, no
// dependency. Panels are stacked top to bottom; each is either horizontal
// bars (grouped, linear or log scale, an optional whisker such as a p99) or
// lines (series of points over a numeric x axis).

const WIDTH = 1100;
const LABEL_WIDTH = 450;
const PLOT_LEFT = LABEL_WIDTH + 10;
const PLOT_RIGHT = WIDTH - 110;
const BAR_HEIGHT = 15;
const BAR_GAP = 5;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

/** One colour per kind of peer, the same in every panel. */
export const COLORS = {
  bare: '#8c8c8c',
  js: '#8c8c8c',
  host: '#76a7d6',
  native: '#2f6db5',
  sandboxed: '#f28e2b',
  worker: '#b07aa1',
  component: '#9d755d',
  haraka: '#e15759',
  postfix: '#59a14f',
};

const esc = (text) => String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function formatValue(value) {
  if (value === 0) return '0';
  if (value >= 1_000_000) return `${+(value / 1_000_000).toFixed(1)}M`;
  if (value >= 100_000) return `${(value / 1000).toFixed(0)}k`;
  if (value >= 10_000) return `${(value / 1000).toFixed(1)}k`;
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

/** Round tick steps (1, 2, 5 x 10^n) covering 0..max. */
function linearTicks(max) {
  const raw = max / 5;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let t = 0; t <= max * 1.0001 + step; t += step) ticks.push(t);
  return ticks;
}

function barsPanel(panel, top) {
  const all = panel.groups.flatMap((g) => g.bars.flatMap((b) => [b.value, b.whisker ?? b.value]));
  let scale;
  let ticks;
  if (panel.log) {
    const lo = 10 ** Math.floor(Math.log10(Math.max(1e-9, Math.min(...all))));
    const hi = 10 ** Math.ceil(Math.log10(Math.max(...all)));
    scale = (v) => PLOT_LEFT + ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (PLOT_RIGHT - PLOT_LEFT);
    ticks = [];
    for (let t = lo; t <= hi * 1.0001; t *= 10) ticks.push(t);
  } else {
    ticks = linearTicks(Math.max(...all));
    const hi = ticks[ticks.length - 1];
    scale = (v) => PLOT_LEFT + (v / hi) * (PLOT_RIGHT - PLOT_LEFT);
  }
  const out = [`<text x="10" y="${top + 16}" font-size="15" font-weight="600">${esc(panel.title)}</text>`];
  // Room above the bars for the reference line's label.
  let y = top + (panel.reference ? 44 : 30);
  const plotTop = y;
  const rows = [];
  for (const group of panel.groups) {
    if (group.label) {
      rows.push(`<text x="10" y="${y + 12}" font-size="12" font-weight="600" fill="#333">${esc(group.label)}</text>`);
      y += BAR_HEIGHT + BAR_GAP;
    }
    for (const bar of group.bars) {
      const x0 = PLOT_LEFT;
      const x1 = Math.max(x0 + 1, scale(bar.value));
      const color = COLORS[bar.color] ?? '#555';
      rows.push(`<text x="${LABEL_WIDTH}" y="${y + 11.5}" font-size="12" text-anchor="end" fill="#222">${esc(bar.label)}</text>`);
      rows.push(`<rect x="${x0}" y="${y}" width="${(x1 - x0).toFixed(1)}" height="${BAR_HEIGHT}" fill="${color}" rx="2"/>`);
      let textX = x1 + 4;
      if (bar.whisker !== undefined && bar.whisker > bar.value) {
        const xw = scale(bar.whisker);
        rows.push(`<line x1="${x1.toFixed(1)}" y1="${y + BAR_HEIGHT / 2}" x2="${xw.toFixed(1)}" y2="${y + BAR_HEIGHT / 2}" stroke="#333" stroke-width="1"/>`);
        rows.push(`<line x1="${xw.toFixed(1)}" y1="${y + 3}" x2="${xw.toFixed(1)}" y2="${y + BAR_HEIGHT - 3}" stroke="#333" stroke-width="1"/>`);
        textX = xw + 4;
      }
      const text = bar.text ?? `${formatValue(bar.value)}${panel.unit ? ` ${panel.unit}` : ''}`;
      rows.push(`<text x="${textX.toFixed(1)}" y="${y + 11.5}" font-size="11" fill="#222">${esc(text)}</text>`);
      y += BAR_HEIGHT + BAR_GAP;
    }
  }
  const plotBottom = y;
  for (const t of ticks) {
    const x = scale(t).toFixed(1);
    out.push(`<line x1="${x}" y1="${plotTop - 4}" x2="${x}" y2="${plotBottom}" stroke="#e3e3e3" stroke-width="1"/>`);
    out.push(`<text x="${x}" y="${plotBottom + 13}" font-size="10" text-anchor="middle" fill="#666">${esc(formatValue(t))}</text>`);
  }
  if (panel.reference) {
    const x = scale(panel.reference.value).toFixed(1);
    out.push(`<line x1="${x}" y1="${plotTop - 6}" x2="${x}" y2="${plotBottom}" stroke="#333" stroke-width="1" stroke-dasharray="4 3"/>`);
    out.push(`<text x="${x}" y="${plotTop - 8}" font-size="10" text-anchor="middle" fill="#333">${esc(panel.reference.label)}</text>`);
  }
  out.push(...rows);
  return { svg: out.join('\n'), height: plotBottom + 22 - top };
}

function linesPanel(panel, top) {
  const height = 230;
  const plotTop = top + 34;
  const plotBottom = top + height - 30;
  const xs = panel.series.flatMap((s) => s.points.map(([x]) => x));
  const ys = panel.series.flatMap((s) => s.points.map(([, y]) => y));
  const xMax = Math.max(...xs);
  const yTicks = linearTicks(Math.max(...ys));
  const yMax = yTicks[yTicks.length - 1];
  const sx = (x) => PLOT_LEFT + (x / xMax) * (PLOT_RIGHT - PLOT_LEFT);
  const sy = (y) => plotBottom - (y / yMax) * (plotBottom - plotTop);
  const out = [`<text x="10" y="${top + 16}" font-size="15" font-weight="600">${esc(panel.title)}</text>`];
  for (const t of yTicks) {
    out.push(`<line x1="${PLOT_LEFT}" y1="${sy(t).toFixed(1)}" x2="${PLOT_RIGHT}" y2="${sy(t).toFixed(1)}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${PLOT_LEFT - 6}" y="${(sy(t) + 3).toFixed(1)}" font-size="10" text-anchor="end" fill="#666">${esc(formatValue(t))}</text>`);
  }
  for (const x of [...new Set(xs)]) {
    out.push(`<text x="${sx(x).toFixed(1)}" y="${plotBottom + 14}" font-size="10" text-anchor="middle" fill="#666">${x}</text>`);
  }
  out.push(`<text x="${(PLOT_LEFT + PLOT_RIGHT) / 2}" y="${plotBottom + 27}" font-size="11" text-anchor="middle" fill="#333">${esc(panel.xLabel)}</text>`);
  out.push(`<text x="${PLOT_LEFT - 40}" y="${(plotTop + plotBottom) / 2}" font-size="11" text-anchor="end" fill="#333">${esc(panel.yLabel)}</text>`);
  let legendY = plotTop + 10;
  for (const series of panel.series) {
    const color = COLORS[series.color] ?? '#555';
    const points = series.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    out.push(`<polyline points="${points}" fill="none" stroke="${color}" stroke-width="2"/>`);
    for (const [x, y] of series.points) out.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${color}"/>`);
    const [lx, ly] = series.points[series.points.length - 1];
    out.push(`<text x="${(sx(lx) + 6).toFixed(1)}" y="${(sy(ly) + 4).toFixed(1)}" font-size="11" fill="${color}">${esc(formatValue(ly))}</text>`);
    out.push(`<rect x="${LABEL_WIDTH - 330}" y="${legendY - 9}" width="12" height="12" fill="${color}"/>`);
    out.push(`<text x="${LABEL_WIDTH - 313}" y="${legendY + 1}" font-size="12" fill="#222">${esc(series.label)}</text>`);
    legendY += 18;
  }
  return { svg: out.join('\n'), height };
}

/** The whole chart: `panels` stacked, with a caption line at the bottom. */
export function renderChart(panels, caption) {
  const parts = [];
  let y = 10;
  for (const panel of panels) {
    const { svg, height } = panel.type === 'lines' ? linesPanel(panel, y) : barsPanel(panel, y);
    parts.push(svg);
    y += height + 18;
  }
  // The caption, wrapped at word boundaries.
  const lines = [];
  for (const word of caption.split(' ')) {
    if (lines.length === 0 || lines[lines.length - 1].length + word.length > 170) lines.push(word);
    else lines[lines.length - 1] += ` ${word}`;
  }
  for (const line of lines) {
    parts.push(`<text x="10" y="${y + 4}" font-size="11" fill="#555">${esc(line)}</text>`);
    y += 15;
  }
  const height = y + 4;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" ${FONT}>`,
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
