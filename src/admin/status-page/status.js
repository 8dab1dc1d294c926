// The admin status page: fetches api/status on load and every REFRESH_MS, and
// renders it. Every value from the server goes into the page through
// textContent or an attribute, never innerHTML: plugin names, senders and
// error texts come from outside.
'use strict';

const REFRESH_MS = 2000;
const FETCH_TIMEOUT_MS = 5000; // a hung request must not stop the refresh loop
const CHART = { width: 640, height: 200, left: 52, right: 16, top: 12, bottom: 26 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];
const STATES = ['loaded', 'initialized', 'enabled', 'disabled'];
const SVG_NS = 'http://www.w3.org/2000/svg';

const byId = (id) => document.getElementById(id);
/** Colour per plugin name, kept across refreshes so a line keeps its colour. */
const colors = new Map();
let lastUpdate = null;

function colorFor(name) {
  if (!colors.has(name)) colors.set(name, COLORS[colors.size % COLORS.length]);
  return colors.get(name);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const count = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '—');
const micros = (us) => (typeof us === 'number' ? us.toFixed(1) : '—');

function duration(seconds) {
  if (typeof seconds !== 'number') return '—';
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  let rest = Math.floor(seconds);
  const parts = [];
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0 || parts.length > 0) parts.push(`${n}${unit}`);
  }
  return parts.slice(0, 3).join(' ');
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString('en-GB', { hour12: false });
}

/** A <time> element showing the local clock time, with the full timestamp as its datetime. */
function timeCell(iso) {
  const time = el('time', clock(iso));
  time.dateTime = String(iso);
  time.title = String(iso);
  return time;
}

/**
 * One table row. A cell is a string, or { text | node, className, header };
 * `header` makes it a row header (<th scope="row">).
 */
function row(cells, className) {
  const tr = el('tr', undefined, className);
  for (const cell of cells) {
    const spec = cell !== null && typeof cell === 'object' ? cell : { text: cell };
    const td = el(spec.header ? 'th' : 'td', undefined, spec.className);
    if (spec.header) td.scope = 'row';
    if (spec.node) td.append(spec.node);
    else td.textContent = spec.text ?? '';
    tr.append(td);
  }
  return tr;
}

/** Replaces the body of table `id` with `rows`, or one row saying `emptyText`. */
function fillTable(id, rows, emptyText) {
  const table = byId(id);
  if (rows.length === 0) {
    const td = el('td', emptyText, 'empty');
    td.colSpan = table.tHead.rows[0].cells.length;
    rows = [el('tr')];
    rows[0].append(td);
  }
  table.tBodies[0].replaceChildren(...rows);
}

function renderServer(server) {
  byId('hostname').textContent = server.hostname;
  byId('version').textContent = server.version;
  byId('uptime').textContent = duration(server.uptime_s);
  byId('uptime').title = `started ${server.started_at}`;
  byId('smtp-port').textContent = String(server.smtp_port);
  document.title = `${server.hostname} · smtp-plugin-host status`;
}

function renderPlugins(plugins) {
  const rows = plugins.map((p) => {
    const state = STATES.includes(p.state) ? p.state : 'unknown';
    return row(
      [
        { text: p.name, header: true },
        p.mode,
        { text: p.state, className: `state state-${state}` },
        p.version,
        { text: count(p.calls), className: 'num' },
        { text: count(p.errors), className: p.errors > 0 ? 'num bad' : 'num' },
        { text: count(p.refusals), className: 'num' },
        { text: micros(p.latency_us_last_minute), className: 'num' },
      ],
      state === 'disabled' ? 'disabled' : undefined,
    );
  });
  fillTable('plugins', rows, 'No plugins loaded.');
}

/** The smallest of 1, 2, 5 × 10^k that is at least `value`. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

function renderChart(history) {
  const chart = byId('latency-chart');
  const summary = byId('latency-summary');
  const points = (history && history.points) || [];
  const names = [...new Set(points.flatMap((p) => Object.keys(p.plugins || {})))].sort();
  names.forEach(colorFor);
  chart.replaceChildren(summary);
  const { width, height, left, right, top, bottom } = CHART;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;

  if (points.length === 0) {
    summary.textContent = 'No samples yet.';
    chart.append(svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'note' }, 'No latency samples yet'));
    byId('latency-legend').replaceChildren();
    return;
  }
  const times = points.map((p) => Date.parse(p.at));
  const first = Math.min(...times);
  const span = Math.max(...times) - first;
  const values = points.flatMap((p) => Object.values(p.plugins || {})).filter((v) => typeof v === 'number');
  const yMax = niceMax(Math.max(0, ...values));
  // One point (or all at one time) goes in the middle rather than on the axis.
  const x = (t) => left + (span > 0 ? ((t - first) / span) * plotWidth : plotWidth / 2);
  const y = (v) => top + plotHeight - (v / yMax) * plotHeight;

  for (const v of [0, yMax / 2, yMax]) {
    chart.append(svg('line', { x1: left, x2: width - right, y1: y(v), y2: y(v), class: 'grid' }));
    chart.append(svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, String(Number(v.toPrecision(3)))));
  }
  const label = (at, anchor, t) => svg('text', { x: t, y: height - 6, 'text-anchor': anchor, class: 'axis' }, clock(at));
  if (span > 0) chart.append(label(points[0].at, 'start', left), label(points[points.length - 1].at, 'end', width - right));
  else chart.append(label(points[0].at, 'middle', x(first)));

  for (const name of names) {
    const color = colorFor(name);
    // Consecutive samples with a value make one line; a gap (no calls) breaks it.
    let segment = [];
    const segments = [segment];
    points.forEach((p, i) => {
      const v = p.plugins ? p.plugins[name] : undefined;
      if (typeof v !== 'number') {
        segment = [];
        segments.push(segment);
        return;
      }
      segment.push([x(times[i]), y(v)]);
      const dot = svg('circle', { cx: x(times[i]), cy: y(v), r: points.length === 1 ? 4 : 2.5, fill: color });
      dot.append(svg('title', {}, `${name}: ${micros(v)} µs at ${clock(p.at)}`));
      chart.append(dot);
    });
    for (const s of segments.filter((s) => s.length > 1)) {
      chart.append(svg('polyline', { points: s.map((xy) => xy.join(',')).join(' '), stroke: color, fill: 'none', 'stroke-width': 2 }));
    }
  }
  summary.textContent = `${points.length} samples, every ${history.interval_s} s, for ${names.join(', ') || 'no plugin'}.`;
  byId('latency-legend').replaceChildren(
    ...names.map((name) => {
      const item = el('li');
      const swatch = el('span', undefined, 'swatch');
      swatch.style.background = colorFor(name);
      item.append(swatch, el('span', name));
      return item;
    }),
  );
}

function renderQueue(queue) {
  byId('queue-depth').textContent = count(queue.depth);
  byId('queue-held').textContent = count(queue.held);
  byId('queue-deferred').textContent = count(queue.deferred);
  byId('queue-oldest').textContent = duration(queue.oldest_age_s);
  const note = byId('queue-note');
  note.hidden = queue.depth <= queue.entries.length;
  note.textContent = note.hidden ? '' : `showing ${queue.entries.length} of ${count(queue.depth)}`;
  const rows = queue.entries.map((e) =>
    row([
      { node: el('code', e.id) },
      { text: duration(e.age_s), className: 'num' },
      e.sender === '' ? '<>' : e.sender,
      { text: count(e.recipients), className: 'num' },
      { text: e.state, className: `state state-${e.state === 'held' ? 'held' : 'other'}` },
      { text: count(e.attempts), className: 'num' },
      { text: e.last_error ?? '', className: 'error-text' },
    ]),
  );
  fillTable('queue', rows, 'The queue is empty.');
}

function renderRefusals(refusals) {
  const counts = Object.entries(refusals.by_plugin).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  fillTable('refusals-by-plugin', counts.map(([plugin, n]) => row([{ text: plugin, header: true }, { text: count(n), className: 'num' }])), 'None.');
  const recent = [...refusals.recent].sort((a, b) => String(b.at).localeCompare(String(a.at)));
  const rows = recent.map((r) => row([{ node: timeCell(r.at) }, r.plugin, r.hook, { text: String(r.code), className: 'num' }, r.reason]));
  fillTable('refusals', rows, 'No refusals.');
}

function showError(message) {
  const line = byId('error');
  line.hidden = message === null;
  line.textContent = message ?? '';
}

async function refresh() {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch('api/status', { cache: 'no-store', signal: controller.signal, headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`);
    const status = await response.json();
    renderServer(status.server);
    renderPlugins(status.plugins);
    renderChart(status.latency_history);
    renderQueue(status.queue);
    renderRefusals(status.refusals);
    lastUpdate = new Date();
    byId('updated').textContent = clock(lastUpdate.toISOString());
    showError(null);
  } catch (error) {
    const reason = error.name === 'AbortError' ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : error.message;
    const since = lastUpdate ? `; showing data from ${clock(lastUpdate.toISOString())}` : '';
    showError(`Cannot load api/status: ${reason}${since}`);
  } finally {
    clearTimeout(timer);
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
