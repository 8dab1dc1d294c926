// A private Postfix instance for the durable-spool scenario: its own config
// directory, queue and data directories in a temporary folder (on the same
// disk as the other servers' spools), smtpd on 127.0.0.1:PORT, every
// recipient accepted from loopback and delivered by the discard transport.
// smtpd answers 250 once cleanup has fsynced the queue file: Postfix's
// durable figure. Started with `postfix -c DIR start`, stopped with
// `postfix -c DIR stop` (this instance's master, by its pid file).
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { accepts, freePort, waitFor } from './_support.mjs';

function passwdUid(user) {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`));
  return line === undefined ? undefined : Number(line.split(':')[2]);
}

function hasGroup(group) {
  return readFileSync('/etc/group', 'utf8').split('\n').some((l) => l.startsWith(`${group}:`));
}

/** Why a private Postfix cannot run here, or null. */
export function postfixMissing() {
  if (spawnSync('postfix', ['-c', '/nonexistent', 'status'], { stdio: 'ignore' }).error !== undefined) return 'the postfix command is not installed (apt-get install postfix)';
  if (!existsSync('/usr/lib/postfix/sbin/master')) return 'Postfix\'s daemons are not in /usr/lib/postfix/sbin';
  if (process.getuid?.() !== 0) return 'starting a Postfix master needs root (it drops to the postfix user itself)';
  if (passwdUid('postfix') === undefined) return 'there is no postfix user (mail_owner)';
  if (!hasGroup('postdrop')) return 'there is no postdrop group (setgid_group)';
  return null;
}

const MASTER_CF = (port) => `127.0.0.1:${port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

const MAIN_CF = (dir) => `compatibility_level = 3.6
queue_directory = ${dir}/queue
data_directory = ${dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localdomain
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
default_transport = discard:bench
local_transport = discard:bench
relay_transport = discard:bench
alias_maps =
alias_database =
local_recipient_maps =
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
maillog_file_prefixes = /var, /dev/stdout, ${dir}
maillog_file = ${dir}/maillog
`;

function postfix(dir, ...args) {
  const run = spawnSync('postfix', ['-c', join(dir, 'conf'), ...args], { encoding: 'utf8' });
  return { ok: run.status === 0, output: `${run.stdout ?? ''}${run.stderr ?? ''}`.trim() };
}

function tail(path, lines = 5) {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-lines).join(' / ');
  } catch {
    return '';
  }
}

const masterPid = (dir) => Number(readFileSync(join(dir, 'queue', 'pid', 'master.pid'), 'utf8').trim());

/** CPU ticks of the master, its live children, and the children it has reaped. */
function instanceTicks(pid) {
  let ticks = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let fields;
    try {
      fields = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1].split(' ');
    } catch {
      continue;
    }
    const ppid = Number(fields[1]);
    if (Number(entry) === pid) ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
    else if (ppid === pid) ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks;
}

/** Files still queued (not yet discarded). */
function queued(dir) {
  let count = 0;
  const walk = (path) => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      if (entry.isDirectory()) walk(join(path, entry.name));
      else count++;
    }
  };
  for (const name of ['maildrop', 'incoming', 'active', 'deferred']) {
    try {
      walk(join(dir, 'queue', name));
    } catch {
      // not created yet
    }
  }
  return count;
}

/**
 * Starts the instance; throws with Postfix's own words when it cannot.
 * `mainExtra`: more main.cf lines (the milter tests add smtpd_milters).
 */
export async function startPostfix({ mainExtra = '' } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'bench-postfix-'));
  // The daemons run as postfix and must reach the queue below this folder.
  chmodSync(dir, 0o755);
  for (const sub of ['conf', 'queue', 'data']) mkdirSync(join(dir, sub));
  chownSync(join(dir, 'data'), passwdUid('postfix'), -1);
  const port = await freePort();
  writeFileSync(join(dir, 'conf', 'main.cf'), MAIN_CF(dir) + mainExtra);
  writeFileSync(join(dir, 'conf', 'master.cf'), MASTER_CF(port));
  const started = postfix(dir, 'start');
  if (!started.ok) {
    const why = `${started.output} ${tail(join(dir, 'maillog'))}`.trim();
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`postfix start failed: ${why}`);
  }
  await waitFor(() => accepts(port), 15_000, 'postfix smtpd');
  const pid = masterPid(dir);
  return {
    dir,
    port,
    pid,
    description: `Postfix ${spawnSync('postconf', ['-h', 'mail_version'], { encoding: 'utf8' }).stdout.trim()}, private instance (\`postfix -c DIR start\`), queue in ${tmpdir()}`,
    cpuTicks: () => instanceTicks(pid),
    /** Waits (bounded) until the discard agent has emptied the queue. */
    async drained(timeoutMs = 60_000) {
      await waitFor(() => queued(dir) === 0, timeoutMs, 'postfix queue drain');
    },
    async stop() {
      postfix(dir, 'stop');
      const deadline = Date.now() + 10_000;
      while (existsSync(`/proc/${pid}`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      if (existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
