// Where the time goes, for a missed target: a V8 CPU profile (node
// --cpu-prof on a server child, or the inspector's profiler on an in-process
// loop) summarised by self time: the top frames, and the time by component
// (this server's code, smtp-server, Node's internals, plugin code...).
import { readdirSync, readFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../dist/src/paths.js';

const TOP_FRAMES = 12;

function shortUrl(url) {
  if (url === '') return '';
  let path = url.replace(/^file:\/\//, '');
  if (path.startsWith(PROJECT_ROOT)) path = path.slice(PROJECT_ROOT.length + 1);
  return path.replace(/^.*node_modules\//, '');
}

function component(frame) {
  const { functionName, url } = frame;
  if (url === '') {
    if (functionName === '(idle)') return 'idle (waiting for I/O)';
    if (functionName === '(garbage collector)') return 'garbage collector';
    if (functionName === '(program)') return 'native code outside JS (V8, libuv, koffi, syscalls)';
    return `native: ${functionName}`;
  }
  if (url.startsWith('wasm://')) return 'WebAssembly (sandboxed plugin code and guest glue)';
  if (url.startsWith('node:')) return 'Node.js internals (streams, net, timers, promises)';
  if (url.includes('/node_modules/smtp-server/')) return 'smtp-server (the SMTP engine)';
  if (url.includes('/node_modules/koffi/')) return 'koffi (JS side)';
  if (url.includes('/node_modules/Haraka/') || url.includes('/node_modules/haraka-')) return 'Haraka';
  if (url.includes('/dist/src/')) return `this server: ${url.split('/dist/src/')[1].split('/')[0]}/`;
  if (url.includes('/node_modules/')) return `other packages: ${shortUrl(url).split('/')[0]}`;
  return 'other JS';
}

/** Self time by frame and by component, from a .cpuprofile object. */
export function summarize(profile) {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const parents = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id);
  // Samples under node:inspector are the in-process profiler's own work (starting and stopping it).
  const own = new Map();
  const profilerOwn = (id) => {
    if (!own.has(id)) {
      const parent = parents.get(id);
      own.set(id, nodes.get(id).callFrame.url === 'node:inspector' || (parent !== undefined && profilerOwn(parent)));
    }
    return own.get(id);
  };
  const self = new Map();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    if (profilerOwn(id)) continue;
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const frames = new Map();
  const components = new Map();
  let total = 0;
  for (const [id, us] of self) {
    const frame = nodes.get(id).callFrame;
    const key = frame.url === '' ? frame.functionName : `${frame.functionName || '(anonymous)'} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
    frames.set(key, (frames.get(key) ?? 0) + us);
    const name = component(frame);
    components.set(name, (components.get(name) ?? 0) + us);
    total += us;
  }
  const rank = (map, n) => [...map].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, us]) => ({ name, ms: us / 1000, share: us / total }));
  return { totalMs: total / 1000, components: rank(components, 20), top: rank(frames, TOP_FRAMES) };
}

export function summarizeFile(path) {
  return summarize(JSON.parse(readFileSync(path, 'utf8')));
}

/** The main thread's .cpuprofile that a child wrote into `dir` (workers write their own: CPU.DATE.TIME.PID.TID.SEQ). */
export function profileIn(dir) {
  const files = readdirSync(dir).filter((name) => name.endsWith('.cpuprofile'));
  const main = files.find((name) => /\.\d+\.0\.\d+\.cpuprofile$/.test(name)) ?? files[0];
  if (main === undefined) throw new Error(`no .cpuprofile in ${dir}`);
  return { ...summarizeFile(join(dir, main)), threads: files.length };
}

/** Profiles `fn` in this process with the inspector (what --cpu-prof records). */
export async function profileInProcess(fn) {
  const session = new Session();
  session.connect();
  const post = (method, params) => new Promise((done, fail) => session.post(method, params, (err, result) => (err ? fail(err) : done(result))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  await fn();
  const { profile } = await post('Profiler.stop');
  session.disconnect();
  return summarize(profile);
}

/** Markdown for a summary: time by component, then the top frames. */
export function profileMarkdown(summary, what) {
  const pct = (share) => `${(share * 100).toFixed(1)}%`;
  const busy = summary.components.filter((c) => !c.name.startsWith('idle')).reduce((sum, c) => sum + c.ms, 0);
  return [
    `CPU profile of ${what}: ${summary.totalMs.toFixed(0)} ms sampled, ${busy.toFixed(0)} ms busy.`,
    '',
    '| component | self ms | share |',
    '|---|---:|---:|',
    ...summary.components.slice(0, 10).map((c) => `| ${c.name} | ${c.ms.toFixed(0)} | ${pct(c.share)} |`),
    '',
    '| top frames by self time | self ms | share |',
    '|---|---:|---:|',
    ...summary.top.map((f) => `| \`${f.name.replace(/\|/g, '\\|')}\` | ${f.ms.toFixed(0)} | ${pct(f.share)} |`),
  ].join('\n');
}
