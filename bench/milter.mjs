// Milter both ways (docs/milter.md). (1) The milter client's round trip per
// message: this server with the spam filter in-process, and with a `milter`
// entry calling `smtp-server milter` (the same spam filter, native, in a
// process of its own) for every step, against the server without plugins.
// (2) Postfix alone against Postfix with `smtpd_milters` pointing at
// `smtp-server milter`. CPU counts every process doing the work: the milter
// process is read beside the server (or beside Postfix's processes).
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../dist/src/paths.js';
import { accepts, cpuTicks, fmt, freePort, median, scaled, TICKS_PER_SECOND, waitFor } from './_support.mjs';
import { postfixMissing, startPostfix } from './_postfix.mjs';
import { externalPeer, hostConfig, hostPeer, loadText, measure, pluginEntry, smtpSource, tempDir } from './_smtp.mjs';
import { chainBuilds } from './smtp-throughput.mjs';

const ROUNDS = scaled(3, 1);
const LOAD = { messages: scaled(5_000, 500), size: 1024 };

/** `smtp-server milter` serving the native spam filter; resolves once it listens. */
async function startMilter(spamBuild) {
  const dir = tempDir('bench-milter-');
  mkdirSync(join(dir, 'plugins'));
  const config = join(dir, 'config.toml');
  writeFileSync(config, `[plugins]\nenabled = true\ndirectory = "plugins"\ntrusted_directories = ["${join(spamBuild.native, '..')}"]\n\n${pluginEntry({ name: 'spam-filter', build: spamBuild, sandboxed: false, config: { spam_threshold: 5.0 } })}`);
  const port = await freePort();
  const child = spawn(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), 'milter', '--listen', `inet:127.0.0.1:${port}`, '--config', config], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LOG_LEVEL: 'warn' } });
  let errors = '';
  child.stderr.on('data', (chunk) => (errors = (errors + chunk).slice(-2000)));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`smtp-server milter exited ${child.exitCode}: ${errors}`);
    return accepts(port);
  }, 20_000, 'smtp-server milter');
  return {
    address: `inet:127.0.0.1:${port}`,
    ticks: () => cpuTicks(child.pid),
    async stop() {
      const exited = new Promise((done) => child.once('exit', done));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export async function run() {
  const title = 'Milter both ways: the client\'s round trip, and Postfix with this chain as its milter';
  const source = smtpSource();
  if (source === null) return { title, skipped: ['smtp-source not found (apt-get install postfix)'] };
  const builds = await chainBuilds();
  const milter = await startMilter(builds.spam);
  const skipped = [];
  const postfixes = [];
  try {
    const spam = pluginEntry({ name: 'spam-filter', build: builds.spam, sandboxed: false, config: { spam_threshold: 5.0 } });
    const peers = [
      { ...hostPeer('this server, no plugins', hostConfig('milter-none')), role: 'none' },
      { ...hostPeer('this server, spam filter native in-process', hostConfig('milter-inproc', { entries: spam })), role: 'inproc' },
      { ...hostPeer('this server, milter entry -> smtp-server milter (spam filter)', hostConfig('milter-client', { entries: `[[plugins.plugin]]\nname = "spam-milter"\nmilter = "${milter.address}"\n` })), role: 'client', milter: true },
    ];
    const why = postfixMissing();
    if (why !== null) {
      skipped.push(`Postfix: ${why}`);
    } else {
      const alone = await startPostfix();
      postfixes.push(alone);
      const filtered = await startPostfix({ mainExtra: `smtpd_milters = ${milter.address}\nmilter_default_action = tempfail\nmilter_protocol = 6\n` });
      postfixes.push(filtered);
      peers.push({ ...externalPeer('Postfix alone', alone), role: 'postfix' });
      peers.push({ ...externalPeer('Postfix + smtp-server milter (spam filter)', filtered), role: 'postfix-milter', milter: true });
    }
    const samples = new Map(peers.map((peer) => [peer.name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const peer of peers) {
        const before = milter.ticks();
        const result = await measure(source, peer, LOAD);
        const milterUs = peer.milter ? ((milter.ticks() - before) / TICKS_PER_SECOND / LOAD.messages) * 1e6 : 0;
        samples.get(peer.name).push({ ...result, milterUs, totalUs: result.cpuUsPerMessage + milterUs });
      }
    }
    const stats = new Map(peers.map((peer) => {
      const s = samples.get(peer.name);
      return [peer.name, { rate: median(s.map((x) => x.rate)), server: median(s.map((x) => x.cpuUsPerMessage)), milter: median(s.map((x) => x.milterUs)), total: median(s.map((x) => x.totalUs)), seconds: median(s.map((x) => x.seconds)) }];
    }));
    const of = (role) => stats.get(peers.find((p) => p.role === role)?.name);
    const none = of('none');
    const client = of('client');
    const notes = [
      `${ROUNDS} rounds, peers interleaved, each from a fresh server (Postfix: one instance per row, its queue drained after each round). The milter process serves the two milter rows and is counted with them.`,
      `Milter client round trip: ${fmt(client.total - none.total)} us of CPU per message over the server without plugins (server ${fmt(client.server - none.server)} us, milter process ${fmt(client.milter)} us), against ${fmt(of('inproc').total - none.total)} us for the same filter in-process; wall ${fmt(((client.seconds - none.seconds) / LOAD.messages) * 1e6 * 20)} us more per message per connection (20 connections).`,
    ];
    const pf = of('postfix');
    const pfm = of('postfix-milter');
    if (pf && pfm) notes.push(`Postfix with this chain as its milter: ${(pfm.rate / pf.rate).toFixed(2)}x Postfix alone's msg/s, ${fmt(pfm.total - pf.total)} us more CPU per message (the milter process ${fmt(pfm.milter)} us of it).`);
    return {
      title,
      description:
        'Every row keeps no copy (this server: `spool = "none"`, `delivery.mode = "none"`; Postfix: every transport `discard:`) and accepts every message (the load is not spam). ' +
        'The milter is `smtp-server milter --listen inet:127.0.0.1:PORT` with the example spam filter, native, in a process of its own; ' +
        'this server reaches it with a `[[plugins.plugin]]` entry `milter = "inet:..."` (one milter connection per SMTP session: connect, helo, mail, rcpt, data, headers, body, end of message), ' +
        'Postfix with `smtpd_milters`, `milter_protocol = 6`.',
      commands: [loadText(LOAD)],
      tables: [{
        header: ['peer', 'median msg/s', 'server CPU us/msg', 'milter process CPU us/msg', 'total CPU us/msg'],
        rows: peers.map((peer) => {
          const s = stats.get(peer.name);
          return [peer.name, fmt(s.rate), fmt(s.server), peer.milter ? fmt(s.milter) : '-', fmt(s.total)];
        }),
      }],
      notes,
      targets: [],
      skipped,
      chart: {
        type: 'bars',
        title: 'Milter both ways: msg/s (median)',
        unit: 'msg/s',
        groups: [{ label: '', bars: peers.map((peer) => ({ label: peer.name, value: stats.get(peer.name).rate, color: peer.role.startsWith('postfix') ? 'postfix' : 'host' })) }],
      },
    };
  } finally {
    for (const postfix of postfixes) await postfix.stop();
    await milter.stop();
  }
}
