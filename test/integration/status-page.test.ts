import { spawn } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILD_DIR } from '../../src/paths.js';
import { SERVER_VERSION } from '../../src/version.js';
import { freePort, serverRoot, startServerProcess, waitForPort, type ServerProcess } from '../helpers/server.js';
import { examplePlugin } from './helpers/plugins.js';

/**
 * The admin listener's status page (src/admin/status-page/) in Debian's
 * headless Chromium, against the real `smtp-server` process running the
 * native spam-filter, rate-limiter and message-logger, with its relay down so
 * that accepted mail stays queued. Chromium runs the page's script (with
 * virtual time, so the 2 s refresh runs too) and dumps the DOM, which is
 * checked against what the test sent; a second run writes a screenshot to
 * build/artifacts/status-page.png for a person to look at.
 */

const CHROMIUM = '/usr/bin/chromium';
/** A whole Chromium run (start, load, dump, exit); it is killed after this. */
const CHROMIUM_TIMEOUT_MS = 60_000;
/** Virtual time the page runs before the dump: the first fetch and two 2 s refreshes. */
const VIRTUAL_TIME_BUDGET_MS = 5_000;
/** How long the server may take to queue, attempt and sample what was sent (a latency sample comes every 10 s). */
const SETTLE_TIMEOUT_MS = 40_000;
const SCREENSHOT = join(BUILD_DIR, 'artifacts', 'status-page.png');
const WINDOW = { width: 1280, height: 1000 };
/** A rendered page with its tables; a blank or broken page compresses far below this. */
const SCREENSHOT_BYTES_MIN = 20_000;
const SCREENSHOT_BYTES_MAX = 10_000_000;
const TOKEN = 'test-token-0123456789';

/** Accepted and then queued, since the relay is down. */
const CLEAN = [
  { from: 'alice@clean.example', to: ['carol@example.org'] },
  { from: 'bob@clean.example', to: ['carol@example.org', 'dave@example.org'] },
  { from: 'erin@clean.example', to: ['frank@example.org'] },
] as const;
/** Seven of the filter's keywords: refused with 554 at the default threshold (5). */
const SPAM_TEXT = 'Congratulations, winner! Free money at our casino: click here, act now, limited time only.';
const SPAM_COUNT = 2;

interface Status {
  queue: { depth: number; entries: { last_error: string | null }[] };
  refusals: { by_plugin: Record<string, number> };
  latency_history: { points: { plugins: Record<string, number> }[] };
}

// ---- Chromium ----

interface BrowserRun {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs headless Chromium on `url` with `args` (--dump-dom or --screenshot)
 * in a fresh profile, bounded by CHROMIUM_TIMEOUT_MS. It gets its own
 * process group, killed by its PID if it has not exited by the end.
 */
async function chromium(args: readonly string[], url: string): Promise<BrowserRun> {
  const profile = mkdtempSync(join(tmpdir(), 'status-page-chromium-'));
  const child = spawn(
    CHROMIUM,
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      '--no-default-browser-check',
      '--hide-scrollbars',
      `--user-data-dir=${profile}`,
      // The page's console messages and uncaught errors go to stderr.
      '--enable-logging=stderr',
      '--v=0',
      `--virtual-time-budget=${VIRTUAL_TIME_BUDGET_MS}`,
      ...args,
      url,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const killGroup = (): void => {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  const timer = setTimeout(() => {
    stderr += `\n(killed after ${CHROMIUM_TIMEOUT_MS} ms)`;
    killGroup();
  }, CHROMIUM_TIMEOUT_MS);
  try {
    const status = await new Promise<number | null>((done) => {
      child.once('close', (code) => done(code));
      child.once('error', (error) => {
        stderr += `\n${error.message}`;
        done(null);
      });
    });
    return { status, stdout, stderr };
  } finally {
    clearTimeout(timer);
    killGroup();
    rmSync(profile, { recursive: true, force: true });
  }
}

/** Uncaught errors (and rejected promises) the page's script raised, as Chromium logged them. */
function pageErrors(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.includes(':CONSOLE') && line.includes('Uncaught'));
}

// ---- The dumped DOM ----

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', '#39': "'", nbsp: ' ' };

/** The text of an HTML fragment: tags dropped, the entities Chromium writes decoded. */
function text(html: string): string {
  return html
    .replace(/<[^>]*>/g, '')
    .replace(/&(amp|lt|gt|quot|#39|nbsp);/g, (_, name: string) => ENTITIES[name]!)
    .replace(/\s+/g, ' ')
    .trim();
}

/** The start tag and inner HTML of the element with `id` (elements of one tag name are not nested here). */
function element(dom: string, id: string): { tag: string; inner: string } {
  const match = new RegExp(`(<(\\w+)[^>]*\\sid="${id}"[^>]*>)([\\s\\S]*?)</\\2>`).exec(dom);
  if (match === null) throw new Error(`no element with id "${id}" in the page`);
  return { tag: match[1]!, inner: match[3]! };
}

/** The rows of table `id`'s body as { column header: cell text }; the "empty" row is left out. */
function tableRows(dom: string, id: string): Record<string, string>[] {
  const { inner } = element(dom, id);
  const cells = (row: string): string[] => [...row.matchAll(/<t[hd]\b[^>]*>([\s\S]*?)<\/t[hd]>/g)].map((m) => text(m[1]!));
  const head = /<thead>([\s\S]*?)<\/thead>/.exec(inner);
  const body = /<tbody>([\s\S]*?)<\/tbody>/.exec(inner);
  if (head === null || body === null) throw new Error(`table "${id}" has no thead or tbody`);
  const headers = cells(head[1]!);
  return [...body[1]!.matchAll(/<tr\b[^>]*>([\s\S]*?)<\/tr>/g)]
    .map((m) => cells(m[1]!))
    .filter((row) => row.length === headers.length)
    .map((row) => Object.fromEntries(headers.map((header, i) => [header, row[i]!])));
}

const number = (cell: string | undefined): number => Number((cell ?? '').replace(/,/g, ''));

// ---- Mail ----

/** One message over a fresh connection; the reply code, a refusal's included. */
async function send(port: number, from: string, to: readonly string[], body: string): Promise<number> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    const info = await transport.sendMail({ from, to: [...to], subject: 'status page', text: body });
    return Number(info.response.slice(0, 3));
  } catch (error) {
    const failure = error as { responseCode?: number };
    if (failure.responseCode === undefined) throw error;
    return failure.responseCode;
  } finally {
    transport.close();
  }
}

/** `count` loopback ports, distinct, each free when checked (the relay's stays free: nothing listens there). */
async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  for (let tries = 0; ports.size < count; tries++) {
    if (tries >= count * 10) throw new Error(`could not find ${count} distinct free ports`);
    ports.add(await freePort());
  }
  return [...ports];
}

describe('the admin status page in headless Chromium', () => {
  let server: ServerProcess | undefined;
  let collector: Server | undefined;
  let adminPort: number;
  let relayPort: number;
  let pageUrl: string;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: this test needs Debian's chromium package (apt-get install chromium; .ci/run installs it)`);
    }
    // message-logger ships its records here; only the page is under test, so the sink just reads.
    collector = createServer((socket) => socket.resume().on('error', () => undefined));
    await new Promise<void>((done) => collector!.listen(0, '127.0.0.1', done));
    const sink = `tcp:127.0.0.1:${(collector.address() as { port: number }).port}`;

    let smtpPort: number;
    [smtpPort, adminPort, relayPort] = (await freePorts(3)) as [number, number, number];
    const root = serverRoot({
      delivery: `mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = ${relayPort}\n`,
      plugins: (dir) => {
        const entry = (name: string, stem: string, extra: string): string => {
          const library = basename(examplePlugin(stem, 'native'));
          copyFileSync(examplePlugin(stem, 'native'), join(dir, 'plugins', library));
          return `[[plugins.plugin]]\nname = "${name}"\nlibrary = "${library}"\nsandbox = false\n${extra}\n\n`;
        };
        return (
          '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n' +
          entry('rate-limiter', 'rate_limiter', `allow_counters = true\nconfig = '{"max_per_sender_domain": 100}'`) +
          entry('spam-filter', 'spam_filter', `config = '{"spam_threshold": 5.0, "quarantine": false}'`) +
          entry('message-logger', 'message_logger', `allow_connect = ["${sink}"]\nconfig = '${JSON.stringify({ collector: sink, retry_ms: 100 })}'`)
        );
      },
    });
    appendFileSync(root.config, `\n[admin]\nlisten = "127.0.0.1:${adminPort}"\ntoken = "${TOKEN}"\n`);
    server = await startServerProcess(['--config', root.config], smtpPort);
    await waitForPort(adminPort);
    pageUrl = `http://127.0.0.1:${adminPort}/`;
  });

  afterAll(async () => {
    await server?.stop();
    await new Promise((done) => (collector ? collector.close(done) : done(undefined)));
  });

  /** The page's DOM after its script ran, with no uncaught error on the way. */
  async function renderedDom(): Promise<string> {
    const run = await chromium(['--dump-dom'], pageUrl);
    expect(run.status, `chromium --dump-dom failed:\n${run.stderr}`).toBe(0);
    expect(pageErrors(run.stderr), 'the page raised errors').toEqual([]);
    expect(run.stdout).toContain('id="plugins"');
    return run.stdout;
  }

  async function apiStatus(): Promise<Status> {
    const response = await fetch(`${pageUrl}api/status`);
    expect(response.status).toBe(200);
    return (await response.json()) as Status;
  }

  it('renders the idle server: the three plugins, an empty queue, no refusals', async () => {
    const dom = await renderedDom();
    expect(text(element(dom, 'hostname').inner)).toBe('mx.test');
    expect(text(element(dom, 'version').inner)).toBe(SERVER_VERSION);
    expect(text(element(dom, 'updated').inner), 'the page never got api/status').not.toBe('never');
    expect(element(dom, 'error').tag).toMatch(/\shidden/);
    const plugins = tableRows(dom, 'plugins');
    expect(plugins.map((p) => p['Name']).sort()).toEqual(['message-logger', 'rate-limiter', 'spam-filter']);
    for (const plugin of plugins) expect(plugin, plugin['Name']).toMatchObject({ Mode: 'native', State: 'enabled' });
    expect(text(element(dom, 'queue-depth').inner)).toBe('0');
    expect(tableRows(dom, 'queue')).toEqual([]);
    expect(text(element(dom, 'queue').inner)).toContain('The queue is empty.');
    expect(tableRows(dom, 'refusals')).toEqual([]);
  });

  it('shows the queued mail with the relay error, the spam refusals and the plugin counters', async () => {
    for (const message of CLEAN) expect(await send(server!.port, message.from, message.to, 'a plain note'), message.from).toBe(250);
    for (let i = 0; i < SPAM_COUNT; i++) expect(await send(server!.port, `offer${i}@spam.example`, ['carol@example.org'], SPAM_TEXT)).toBe(554);

    // Wait (bounded) until the server has attempted every message and taken a latency sample.
    const deadline = Date.now() + SETTLE_TIMEOUT_MS;
    for (;;) {
      const status = await apiStatus();
      const settled =
        status.queue.depth === CLEAN.length &&
        status.queue.entries.every((e) => e.last_error !== null) &&
        status.refusals.by_plugin['spam-filter'] === SPAM_COUNT &&
        status.latency_history.points.some((p) => 'spam-filter' in p.plugins);
      if (settled) break;
      if (Date.now() > deadline) throw new Error(`api/status did not settle in ${SETTLE_TIMEOUT_MS} ms: ${JSON.stringify(status)}\n${server!.logs()}`);
      await new Promise((r) => setTimeout(r, 250));
    }

    const dom = await renderedDom();
    expect(element(dom, 'error').tag).toMatch(/\shidden/);

    const plugins = tableRows(dom, 'plugins');
    expect(plugins.map((p) => p['Name']).sort()).toEqual(['message-logger', 'rate-limiter', 'spam-filter']);
    for (const plugin of plugins) expect(plugin, plugin['Name']).toMatchObject({ Mode: 'native', State: 'enabled' });
    const spamFilter = plugins.find((p) => p['Name'] === 'spam-filter')!;
    expect(number(spamFilter['Calls'])).toBeGreaterThan(0);
    expect(number(spamFilter['Refusals'])).toBe(SPAM_COUNT);

    expect(text(element(dom, 'queue-depth').inner)).toBe(String(CLEAN.length));
    const queue = tableRows(dom, 'queue');
    expect(queue.map((e) => e['Sender']).sort()).toEqual(CLEAN.map((m) => m.from).sort());
    expect(queue.find((e) => e['Sender'] === 'bob@clean.example')?.['Recipients']).toBe('2');
    for (const entry of queue) expect(entry['Last error'], entry['Sender']).toMatch(new RegExp(`ECONNREFUSED.*127\\.0\\.0\\.1:${relayPort}`));
    expect(element(dom, 'queue-note').tag, 'every entry is shown').toMatch(/\shidden/);

    expect(tableRows(dom, 'refusals-by-plugin')).toContainEqual({ Plugin: 'spam-filter', Refusals: String(SPAM_COUNT) });
    const recent = tableRows(dom, 'refusals').filter((r) => r['Plugin'] === 'spam-filter');
    expect(recent).toHaveLength(SPAM_COUNT);
    for (const refusal of recent) expect(refusal['Code']).toBe('554');

    expect(text(element(dom, 'latency-legend').inner)).toContain('spam-filter');
    expect(element(dom, 'latency-chart').inner).toMatch(/<circle\b/);

    rmSync(SCREENSHOT, { force: true });
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    const shot = await chromium([`--screenshot=${SCREENSHOT}`, `--window-size=${WINDOW.width},${WINDOW.height}`], pageUrl);
    expect(shot.status, `chromium --screenshot failed:\n${shot.stderr}`).toBe(0);
    expect(pageErrors(shot.stderr), 'the page raised errors').toEqual([]);
    expect(existsSync(SCREENSHOT), `no screenshot at ${SCREENSHOT}:\n${shot.stderr}`).toBe(true);
    console.log(`status page screenshot: ${SCREENSHOT}`);
    const png = readFileSync(SCREENSHOT);
    expect(png.subarray(0, 8).toString('hex'), 'the PNG signature').toBe('89504e470d0a1a0a');
    // IHDR, the first chunk: width and height, big-endian, at bytes 16 and 20.
    expect({ width: png.readUInt32BE(16), height: png.readUInt32BE(20) }).toEqual(WINDOW);
    expect(statSync(SCREENSHOT).size).toBeGreaterThan(SCREENSHOT_BYTES_MIN);
    expect(statSync(SCREENSHOT).size).toBeLessThan(SCREENSHOT_BYTES_MAX);
  });
});
