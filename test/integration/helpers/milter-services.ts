import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../../../src/paths.js';
import { freePort, hasCommand, runClient } from '../../helpers/server.js';
import { startService, type Service } from './process.js';

/**
 * Real milters for the integration tests, each on 127.0.0.1 in a temporary
 * folder of its own, offline, stopped by PID:
 *
 * - rspamd (Debian `rspamd`, 3.4): its proxy worker in milter mode scanning
 *   by itself (self_scan), every module that would reach the network off.
 * - opendkim (Debian `opendkim` + `opendkim-tools`): signs mail from
 *   127.0.0.1 for example.test with a key made here; verifies offline
 *   (TestPublicKeys, no DNS).
 * - test/fixtures/milter/actions_milter.py (Debian `python3-milter`, on the
 *   system python /usr/bin/python3): every milter action on request.
 *
 * And milterNegotiate, the readiness probe: option negotiation, then quit.
 *
 * Measured on the 2-core machine (with another load running): rspamd ready
 * in 0.8-2.6 s, 55-260 ms a message; opendkim ready in ~0.3 s, ~50 ms to
 * sign; the Python milter ready in ~0.3 s, 5-55 ms a message. libmilter
 * (opendkim, pymilter) checks for SIGTERM only every 5 s, so those are
 * SIGKILLed after 1 s: nothing they keep matters.
 */

/** The milter socket of a service, in Postfix's and sendmail's form. */
function inetSpec(port: number): string {
  return `inet:${port}@127.0.0.1`;
}

const ACTIONS_MILTER = join(PROJECT_ROOT, 'test', 'fixtures', 'milter', 'actions_milter.py');
/** Debian's python3-milter (and python3-dkim) install for the system python only, not for a pyenv or venv python3 found first on PATH. */
export const SYSTEM_PYTHON = '/usr/bin/python3';

/** `name` on PATH, else in /usr/sbin (not on a non-root PATH), else undefined. */
function findCommand(name: string): string | undefined {
  if (hasCommand(name)) return name;
  const sbin = join('/usr/sbin', name);
  return existsSync(sbin) ? sbin : undefined;
}

// --- milter protocol probes ---------------------------------------------

/** What a milter answered to option negotiation (SMFIC_OPTNEG). */
export interface MilterNegotiation {
  readonly version: number;
  /** SMFIF_* actions the milter may take. */
  readonly actions: number;
  /** SMFIP_* steps it skips / does not answer. */
  readonly protocol: number;
}

/**
 * Option negotiation with the milter on 127.0.0.1:`port` (version 6, every
 * action and step offered), then SMFIC_QUIT: proves the milter protocol is
 * served, not just that the port is open. Bounded by `timeoutMs`.
 */
export function milterNegotiate(port: number, timeoutMs = 2_000): Promise<MilterNegotiation> {
  return new Promise((done, fail) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    let buf = Buffer.alloc(0);
    const finish = (error: Error | undefined, value?: MilterNegotiation): void => {
      clearTimeout(timer);
      socket.destroy();
      if (error) fail(error);
      else done(value!);
    };
    const timer = setTimeout(() => finish(new Error(`milter on port ${port} did not negotiate within ${timeoutMs} ms`)), timeoutMs);
    socket.on('connect', () => {
      const optneg = Buffer.alloc(17);
      optneg.writeUInt32BE(13, 0);
      optneg.write('O', 4, 'latin1');
      optneg.writeUInt32BE(6, 5);
      optneg.writeUInt32BE(0x1ff, 9);
      optneg.writeUInt32BE(0x1fffff & ~0x800, 13);
      socket.write(optneg);
    });
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 4) return;
      const length = buf.readUInt32BE(0);
      if (length < 13 || length > 4096) return finish(new Error(`milter on port ${port} sent a ${length}-byte frame to option negotiation`));
      if (buf.length < 4 + length) return;
      if (buf[4] !== 0x4f) return finish(new Error(`milter on port ${port} answered option negotiation with ${JSON.stringify(String.fromCharCode(buf[4]!))}`));
      const value = { version: buf.readUInt32BE(5), actions: buf.readUInt32BE(9), protocol: buf.readUInt32BE(13) };
      // SMFIC_QUIT: a clean goodbye, so the milter logs no aborted session.
      socket.end(Buffer.from([0, 0, 0, 1, 0x51]), () => finish(undefined, value));
    });
    socket.on('error', (error) => finish(error));
    socket.on('end', () => finish(new Error(`milter on port ${port} closed the connection during option negotiation`)));
  });
}

/** A milter the test started. */
export interface MilterService {
  readonly port: number;
  /** "inet:PORT@127.0.0.1", the milter socket as Postfix and sendmail write it. */
  readonly address: string;
  readonly dir: string;
  /** The main process (replaced by restart, where there is one). */
  readonly service: Service;
  /** Stops it by PID; its folder stays for a post-mortem unless removed. */
  stop(): Promise<void>;
}

// --- rspamd ---------------------------------------------------------------

/** GTUBE: rspamd rejects a message holding it with GTUBE_REPLY (in milter mode, a 554 SMFIR_REPLYCODE at end of message). */
export const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
export const GTUBE_REPLY = '554 5.7.1 Gtube pattern';
/**
 * With `testPatterns`, these variants give the other actions: "add header"
 * (SMFIR_CHGHEADER X-Spam: Yes), "rewrite subject" (CHGHEADER Subject:
 * "*** SPAM *** <subject>") and "no action".
 */
export const GTUBE_ADD_HEADER = 'YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
export const GTUBE_REWRITE_SUBJECT = 'ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
export const GTUBE_NO_ACTION = 'AJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
/** Headers rspamd's milter_headers adds to every scanned message with the settings below (SMFIR_ADDHEADER each). */
export const RSPAMD_HEADERS = ['X-Spamd-Result', 'X-Rspamd-Server', 'X-Rspamd-Queue-Id', 'X-Rspamd-Action'] as const;

/**
 * Lua modules that would reach the network (DNS lists, SPF/DKIM/DMARC
 * lookups, HTTPS maps from maps.rspamd.com, fuzzy servers) or need Redis.
 * Turned off; the Bayes classifier still logs that it has no Redis, and
 * then stays out of the way.
 */
const RSPAMD_MODULES_OFF = ['rbl', 'surbl', 'spf', 'dmarc', 'arc', 'asn', 'emails', 'whitelist', 'phishing', 'multimap', 'mime_types', 'rspamd_update', 'mid', 'hfilter', 'neural', 'reputation', 'ratelimit', 'greylist', 'replies', 'url_redirector', 'history_redis', 'dkim_signing', 'bimi'];

export function rspamdAvailable(): boolean {
  return findCommand('rspamd') !== undefined && existsSync('/etc/rspamd/common.conf');
}

export interface RspamdOptions {
  port?: number;
  /** enable_test_patterns: the YJS/ZJS/AJS GTUBE variants (GTUBE_ADD_HEADER...). */
  testPatterns?: boolean;
  /** quarantine_on_reject: a rejected message is accepted and quarantined (SMFIR_QUARANTINE "Spam message quarantined"). */
  quarantineOnReject?: boolean;
  /** discard_on_reject: a rejected message is discarded (SMFIR_DISCARD). */
  discardOnReject?: boolean;
  /** Bounded wait for the first start; 60 s by default (about 1-3 s in practice). */
  timeoutMs?: number;
}

export interface Rspamd extends MilterService {
  /** rspamd's own log (a file: it writes next to nothing on stdout). */
  readonly logPath: string;
  log(): string;
}

function rspamdConfig(port: number, options: RspamdOptions): string {
  return [
    // The stock rules, modules and scores (CONFDIR stays /etc/rspamd); our
    // LOCAL_CONFDIR (the temp folder) is where local.d/ and override.d/ are read.
    '.include "$CONFDIR/common.conf"',
    'options {',
    // Not written with -f ("skip writing pid in no-fork mode"): the PID is the spawned process's.
    '  pidfile = "$RUNDIR/rspamd.pid";',
    '  .include "$CONFDIR/options.inc"',
    '  .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/options.inc"',
    '}',
    'logging {',
    '  type = "file";',
    '  filename = "$LOGDIR/rspamd.log";',
    '  .include "$CONFDIR/logging.inc"',
    '}',
    // The only worker: the proxy, as a milter, scanning by itself. No
    // normal or controller worker (they would bind 11333/11334).
    'worker "rspamd_proxy" {',
    `  bind_socket = "127.0.0.1:${port}";`,
    '  milter = yes;',
    '  timeout = 120s;',
    '  upstream "local" {',
    '    default = yes;',
    '    self_scan = yes;',
    '  }',
    '  count = 1;',
    '  max_retries = 5;',
    `  discard_on_reject = ${options.discardOnReject ? 'true' : 'false'};`,
    `  quarantine_on_reject = ${options.quarantineOnReject ? 'true' : 'false'};`,
    '  spam_header = "X-Spam";',
    '  reject_message = "Spam message rejected";',
    '}',
    '',
  ].join('\n');
}

function rspamdOptions(dir: string, options: RspamdOptions): string {
  return [
    // No C modules that query the network (dkim, fuzzy_check).
    'filters = "chartable,regexp";',
    // Any lookup left fails at once on loopback instead of waiting for the
    // machine's resolver.
    'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 1; }',
    // A short public-suffix list: the stock one (9,628 suffixes) takes
    // 15-20 s to compile into hyperscan at every start in a fresh folder.
    `url_tld = "${join(dir, 'tld.dat')}";`,
    `enable_test_patterns = ${options.testPatterns ? 'true' : 'false'};`,
    '',
  ].join('\n');
}

/** pid -> [parent pid, command name], from /proc. */
function processTable(): Map<number, [number, string]> {
  const table = new Map<number, [number, string]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      table.set(Number(entry), [ppid, comm]);
    } catch {
      // gone meanwhile
    }
  }
  return table;
}

/** Every live PID below `pid` (children, their children...). */
function descendantPids(pid: number): number[] {
  const table = processTable();
  const found: number[] = [];
  const walk = (of: number): void => {
    for (const [child, [ppid]] of table) {
      if (ppid !== of || found.includes(child)) continue;
      found.push(child);
      walk(child);
    }
  };
  walk(pid);
  return found;
}

/** SIGKILLs those of `pids` that still run `comm` (a PID seen earlier may have been reused since). */
function killLeftovers(pids: Iterable<number>, comm: string): void {
  const table = processTable();
  for (const pid of pids) {
    if (table.get(pid)?.[1] !== comm) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * A real rspamd on 127.0.0.1 in a temporary folder, in milter mode: GTUBE
 * (GTUBE constant) is rejected with GTUBE_REPLY, any other message is
 * accepted with the RSPAMD_HEADERS added. As root it needs --insecure
 * (otherwise: "cannot run rspamd workers as root user, please add -u and
 * -g options to select a proper unprivileged user or specify --insecure
 * flag"); for anyone else the flag changes nothing.
 */
export async function startRspamd(options: RspamdOptions = {}): Promise<Rspamd> {
  const rspamd = findCommand('rspamd');
  if (rspamd === undefined) throw new Error('rspamd not found: apt-get install rspamd');
  const dir = mkdtempSync(join(tmpdir(), 'rspamd-'));
  for (const sub of ['local.d', 'override.d', 'db', 'run', 'log']) mkdirSync(join(dir, sub));
  const port = options.port ?? (await freePort());
  const config = join(dir, 'rspamd.conf');
  writeFileSync(config, rspamdConfig(port, options));
  writeFileSync(join(dir, 'tld.dat'), ['com', 'net', 'org', 'test', 'example', 'invalid', 'localhost', ''].join('\n'));
  writeFileSync(join(dir, 'override.d', 'options.inc'), rspamdOptions(dir, options));
  // By default milter_headers adds nothing, and skips mail from local
  // addresses (127.0.0.1 is one) and authenticated senders.
  writeFileSync(join(dir, 'local.d', 'milter_headers.conf'), 'extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n');
  for (const module of RSPAMD_MODULES_OFF) writeFileSync(join(dir, 'override.d', `${module}.conf`), 'enabled = false;\n');
  const logPath = join(dir, 'log', 'rspamd.log');
  const log = (): string => (existsSync(logPath) ? readFileSync(logPath, 'utf8') : '');
  // -f: foreground (it then writes no pid file: "skip writing pid in no-fork mode").
  const args = ['-f', '--insecure', '-c', config, `--var=LOCAL_CONFDIR=${dir}`, `--var=DBDIR=${join(dir, 'db')}`, `--var=RUNDIR=${join(dir, 'run')}`, `--var=LOGDIR=${join(dir, 'log')}`];
  let service: Service;
  try {
    service = await startService(rspamd, args, async () => (await milterNegotiate(port, 1_000)).version === 6, { cwd: dir, timeoutMs: options.timeoutMs ?? 60_000 });
  } catch (error) {
    throw new Error(`${(error as Error).message}\n--- ${logPath} (end):\n${log().slice(-4000)}`);
  }
  // The proxy worker and the hs_helper, forked by the main process before it listens.
  const workers = new Set(descendantPids(service.pid));
  return {
    port,
    address: inetSpec(port),
    dir,
    service,
    logPath,
    log,
    async stop() {
      // SIGTERM to the main process stops its workers (about 0.3 s). Were
      // it SIGKILLed, they would live on, still listening (and holding the
      // output pipes, so the test process would not exit): end them too,
      // those seen at start (in case the main process is already gone) and
      // any it started since.
      for (const pid of descendantPids(service.pid)) workers.add(pid);
      await service.stop(5_000);
      killLeftovers(workers, 'rspamd');
    },
  };
}

// --- opendkim -------------------------------------------------------------

export function opendkimAvailable(): boolean {
  return findCommand('opendkim') !== undefined && findCommand('opendkim-genkey') !== undefined;
}

export type DkimResult = 'pass' | 'fail' | 'none' | 'error';

export interface Opendkim extends MilterService {
  readonly domain: string;
  readonly selector: string;
  readonly privateKeyPath: string;
  /** The TXT record of `selector._domainkey.domain`: "v=DKIM1; h=sha256; k=rsa; p=...". */
  readonly dnsRecord: string;
  /** The base64 public key (the p= value). */
  readonly publicKey: string;
  /** The file opendkim reads public keys from instead of DNS ("NAME TXT-DATA" lines). */
  readonly publicKeysPath: string;
  /**
   * Verifies the DKIM signatures of a whole message (as delivered: headers,
   * blank line, body; LF or CRLF) with `opendkim -t`, offline, against this
   * instance's key: "pass" (verification succeeded), "fail" (e.g. "body
   * hash did not verify" / "signature verification failed"), "none"
   * ("message not signed"), "error" (anything else). `output` is what
   * opendkim printed.
   */
  verify(message: string | Buffer): Promise<{ result: DkimResult; output: string }>;
}

export interface OpendkimOptions {
  port?: number;
  domain?: string;
  selector?: string;
  /** Mode: "s" sign, "v" verify, "sv" both (the default). */
  mode?: 's' | 'v' | 'sv';
  /** Hosts whose mail is signed (not verified); default 127.0.0.1 only. */
  internalHosts?: readonly string[];
  /** More opendkim.conf lines, e.g. "On-BadSignature reject". */
  extraConfig?: readonly string[];
  timeoutMs?: number;
}

/** The TXT data of a `opendkim-genkey` .txt file: its quoted strings joined. */
function txtRecord(zoneText: string): string {
  return [...zoneText.matchAll(/"([^"]*)"/g)].map((m) => m[1]).join('');
}

/**
 * A real opendkim on 127.0.0.1 with a key made here by opendkim-genkey
 * (2048-bit RSA): a message from a host in `internalHosts` (127.0.0.1)
 * whose From is in `domain` gets a DKIM-Signature (opendkim sends
 * SMFIR_INSHEADER at index 0, the value starting with a space and folded
 * with "\n\t"); a message from elsewhere is verified, offline too
 * (TestPublicKeys), and gets an Authentication-Results header.
 *
 * Runs as whoever starts it (no UserID). RequireSafeKeys is off: under
 * /tmp opendkim refuses with "/tmp can be read or written by other users".
 */
export async function startOpendkim(options: OpendkimOptions = {}): Promise<Opendkim> {
  const opendkim = findCommand('opendkim');
  const genkey = findCommand('opendkim-genkey');
  if (opendkim === undefined || genkey === undefined) throw new Error('opendkim not found: apt-get install opendkim opendkim-tools (they are in /usr/sbin)');
  const domain = options.domain ?? 'example.test';
  const selector = options.selector ?? 'sel';
  const dir = mkdtempSync(join(tmpdir(), 'opendkim-'));
  const port = options.port ?? (await freePort());
  const gen = spawnSync(genkey, ['-D', dir, '-d', domain, '-s', selector], { encoding: 'utf8', timeout: 30_000 });
  if (gen.status !== 0) throw new Error(`opendkim-genkey failed: ${gen.stderr}${gen.error?.message ?? ''}`);
  const privateKeyPath = join(dir, `${selector}.private`);
  const dnsRecord = txtRecord(readFileSync(join(dir, `${selector}.txt`), 'utf8'));
  const publicKey = /p=([A-Za-z0-9+/=]+)/.exec(dnsRecord)?.[1] ?? '';
  const publicKeysPath = join(dir, 'public-keys');
  writeFileSync(publicKeysPath, `${selector}._domainkey.${domain} ${dnsRecord}\n`);

  const config = join(dir, 'opendkim.conf');
  writeFileSync(
    config,
    [
      'Syslog no',
      `Mode ${options.mode ?? 'sv'}`,
      `Socket ${inetSpec(port)}`,
      `Domain ${domain}`,
      `KeyFile ${privateKeyPath}`,
      `Selector ${selector}`,
      `PidFile ${join(dir, 'opendkim.pid')}`,
      'Background no',
      `InternalHosts ${(options.internalHosts ?? ['127.0.0.1']).join(',')}`,
      'RequireSafeKeys false',
      // Public keys from this file, never from DNS: verifying works offline.
      `TestPublicKeys ${publicKeysPath}`,
      'Canonicalization relaxed/simple',
      ...(options.extraConfig ?? []),
      '',
    ].join('\n'),
  );
  // `opendkim -t` (test mode) verifies files with the same key file.
  const verifyConfig = join(dir, 'verify.conf');
  writeFileSync(verifyConfig, ['Syslog no', 'Mode v', 'RequireSafeKeys false', `TestPublicKeys ${publicKeysPath}`, ''].join('\n'));

  let service: Service;
  try {
    service = await startService(opendkim, ['-f', '-x', config], async () => (await milterNegotiate(port, 1_000)).version >= 2, { cwd: dir, timeoutMs: options.timeoutMs ?? 20_000 });
  } catch (error) {
    throw new Error(`${(error as Error).message}\n--- ${config}:\n${readFileSync(config, 'utf8')}`);
  }
  let checks = 0;
  return {
    port,
    address: inetSpec(port),
    dir,
    service,
    domain,
    selector,
    privateKeyPath,
    dnsRecord,
    publicKey,
    publicKeysPath,
    async verify(message) {
      const file = join(dir, `check-${++checks}.eml`);
      writeFileSync(file, message);
      // Exit status is 0 whatever the result: the verdict is in the text.
      const run = await runClient(opendkim, ['-x', verifyConfig, '-t', file], 20_000);
      const output = `${run.stdout}${run.stderr}`;
      const result: DkimResult = /verification \(.*\) succeeded/.test(output) ? 'pass' : /verification \(.*\) failed/.test(output) ? 'fail' : /message not signed/.test(output) ? 'none' : 'error';
      return { result, output };
    },
    // libmilter looks at SIGTERM every 5 s; nothing is lost with SIGKILL.
    stop: () => service.stop(1_000),
  };
}

// --- test/fixtures/milter/actions_milter.py (pymilter) --------------------

export function pymilterAvailable(): boolean {
  return existsSync(SYSTEM_PYTHON) && spawnSync(SYSTEM_PYTHON, ['-c', 'import Milter'], { stdio: 'ignore', timeout: 10_000 }).status === 0;
}

/** One line of the actions milter's log: what it received for a message. */
export interface ActionsMilterRecord {
  readonly event: 'eom' | 'abort' | 'close';
  readonly connect: { hostname?: string; family?: number; addr?: string; port?: number };
  readonly helo: string | null;
  readonly from: string | null;
  readonly from_params: readonly string[];
  /** Each [recipient, ESMTP params...], recipients with their angle brackets. */
  readonly rcpts: readonly (readonly string[])[];
  readonly headers: readonly (readonly [string, string])[];
  /** The body as received, latin1-decoded. */
  readonly body: string;
  readonly macros: Record<string, string>;
  readonly actions: readonly string[];
}

export interface ActionsMilter extends MilterService {
  readonly logPath: string;
  /** Every message the milter saw so far, in order. */
  received(): ActionsMilterRecord[];
  /** Waits (bounded) until at least `count` messages were logged; returns them all. */
  waitForReceived(count: number, timeoutMs?: number): Promise<ActionsMilterRecord[]>;
}

/**
 * test/fixtures/milter/actions_milter.py on 127.0.0.1 (see the top of that
 * file for its triggers: recipient local parts such as
 * "addheader+chgfrom@example.test", the X-Milter-Actions header, or
 * `defaults` for every message, e.g. ["hang-connect"]).
 */
export async function startActionsMilter(options: { port?: number; defaults?: readonly string[]; timeoutMs?: number } = {}): Promise<ActionsMilter> {
  if (!pymilterAvailable()) throw new Error(`${SYSTEM_PYTHON} cannot import Milter: apt-get install python3-milter`);
  const dir = mkdtempSync(join(tmpdir(), 'actions-milter-'));
  const port = options.port ?? (await freePort());
  const logPath = join(dir, 'received.jsonl');
  const args = [ACTIONS_MILTER, String(port), '--log', logPath];
  if (options.defaults?.length) args.push('--default', options.defaults.join(','));
  const service = await startService(SYSTEM_PYTHON, args, async () => (await milterNegotiate(port, 1_000)).version >= 2, { cwd: dir, timeoutMs: options.timeoutMs ?? 20_000 });
  const received = (): ActionsMilterRecord[] =>
    existsSync(logPath)
      ? readFileSync(logPath, 'utf8')
          .split('\n')
          .filter((line) => line.length > 0)
          .map((line) => JSON.parse(line) as ActionsMilterRecord)
      : [];
  return {
    port,
    address: inetSpec(port),
    dir,
    service,
    logPath,
    received,
    async waitForReceived(count, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const records = received();
        if (records.length >= count) return records;
        if (Date.now() > deadline) throw new Error(`the actions milter logged ${records.length} of ${count} messages after ${timeoutMs} ms:\n${service.output()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    // A thread left in "hang" is not waited for; libmilter sees SIGTERM within 5 s.
    stop: () => service.stop(1_000),
  };
}
