// A real rsyslogd collecting syslog over TCP on 127.0.0.1 for the bench (the
// approach of test/integration/helpers/rsyslog.ts): only imtcp, every record
// appended raw to a file in a temporary folder, stopped by its PID. Without
// rsyslogd, a small TCP sink in this process takes its place, and the report
// says so.
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { accepts, findTool, freePort, waitFor } from './_support.mjs';

function configText(dir, port, receivedPath) {
  return [
    `global(workDirectory="${join(dir, 'work')}" maxMessageSize="64k")`,
    'module(load="imtcp")',
    'template(name="raw" type="string" string="%rawmsg%\\n")',
    'ruleset(name="collect") {',
    `  action(type="omfile" file="${receivedPath}" template="raw")`,
    '}',
    `input(type="imtcp" address="127.0.0.1" port="${port}" ruleset="collect")`,
    '',
  ].join('\n');
}

/** Counts the newline-terminated records of a growing file, reading only what was added since the last call. */
function lineCounter(path) {
  let offset = 0;
  let lines = 0;
  const chunk = Buffer.alloc(1 << 20);
  return () => {
    let fd;
    try {
      fd = openSync(path, 'r');
    } catch {
      return lines;
    }
    try {
      for (;;) {
        const read = readSync(fd, chunk, 0, chunk.length, offset);
        if (read === 0) break;
        for (let at = chunk.indexOf(10); at !== -1 && at < read; at = chunk.indexOf(10, at + 1)) lines++;
        offset += read;
      }
    } finally {
      closeSync(fd);
    }
    return lines;
  };
}

/**
 * Starts the collector. `received()` is the number of records so far;
 * `waitForReceived(n)` waits (bounded) until n have arrived.
 */
export async function startCollector() {
  const rsyslogd = findTool('rsyslogd', ['/usr/sbin/rsyslogd']);
  const port = await freePort();
  if (rsyslogd === null) return startSink(port);
  const dir = mkdtempSync(join(tmpdir(), 'bench-rsyslog-'));
  mkdirSync(join(dir, 'work'));
  const receivedPath = join(dir, 'received.log');
  const configPath = join(dir, 'rsyslog.conf');
  writeFileSync(configPath, configText(dir, port, receivedPath));
  const child = spawn(rsyslogd, ['-n', '-f', configPath, '-i', join(dir, 'rsyslogd.pid')], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let errors = '';
  child.stderr.on('data', (chunk) => (errors += chunk));
  const exited = new Promise((done) => child.once('exit', done));
  await waitFor(() => accepts(port), 10_000, `rsyslogd ${errors}`);
  const received = lineCounter(receivedPath);
  return {
    kind: 'rsyslogd',
    description: `rsyslogd (${rsyslogd}) with imtcp on 127.0.0.1:${port}, writing each record to a file`,
    port,
    address: `tcp:127.0.0.1:${port}`,
    pid: child.pid,
    received,
    async waitForReceived(count, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (received() < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      return received();
    },
    bytes: () => {
      try {
        return statSync(receivedPath).size;
      } catch {
        return 0;
      }
    },
    async stop() {
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Stands in for rsyslogd when it is not installed: counts octet-counted or newline-framed records. */
async function startSink(port) {
  let records = 0;
  const server = createServer((socket) => {
    let pending = '';
    socket.setEncoding('latin1');
    socket.on('data', (text) => {
      pending += text;
      for (;;) {
        const octets = /^(\d+) /.exec(pending);
        if (octets) {
          const end = octets[0].length + Number(octets[1]);
          if (pending.length < end) break;
          pending = pending.slice(end);
          records++;
          continue;
        }
        const newline = pending.indexOf('\n');
        if (newline === -1) break;
        pending = pending.slice(newline + 1);
        records++;
      }
    });
    socket.on('error', () => {});
  });
  await new Promise((done) => server.listen(port, '127.0.0.1', done));
  return {
    kind: 'sink',
    description: `rsyslogd not found (apt-get install rsyslog): a TCP sink in the bench process on 127.0.0.1:${port} counted the records instead`,
    port,
    address: `tcp:127.0.0.1:${port}`,
    received: () => records,
    async waitForReceived(count, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (records < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      return records;
    },
    bytes: () => 0,
    stop: () => new Promise((done) => server.close(done)),
  };
}
