import { copyFileSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { serverRoot } from '../helpers/server.js';
import { examplePlugin } from './helpers/plugins.js';
import { startRsyslog, type Rsyslog } from './helpers/rsyslog.js';

/** One RFC 5424 line as the plugin writes it: a header and one SD element. */
interface SyslogRecord {
  pri: number;
  version: number;
  timestamp: string;
  hostname: string;
  appName: string;
  procId: string;
  msgId: string;
  sdId: string;
  params: Record<string, string>;
}

/** Parses `<PRI>1 TS HOST APP PROCID MSGID [SD-ID name="value" ...]`, undoing RFC 5424's escapes. */
function parseRecord(line: string): SyslogRecord {
  const head = /^<(\d{1,3})>(\d+) (\S+) (\S+) (\S+) (\S+) (\S+) \[([^ \]]+)/.exec(line);
  if (head === null) throw new Error(`not an RFC 5424 record with structured data: ${line}`);
  const params: Record<string, string> = {};
  let at = head[0].length;
  while (line[at] === ' ') {
    const eq = line.indexOf('="', at);
    if (eq < 0) throw new Error(`bad SD-PARAM at ${at}: ${line}`);
    const name = line.slice(at + 1, eq);
    let value = '';
    let i = eq + 2;
    for (; i < line.length && line[i] !== '"'; i++) {
      if (line[i] === '\\' && (line[i + 1] === '"' || line[i + 1] === '\\' || line[i + 1] === ']')) i++;
      value += line[i];
    }
    if (line[i] !== '"') throw new Error(`unterminated value of ${name}: ${line}`);
    expect(params, `parameter ${name} twice`).not.toHaveProperty(name);
    params[name] = value;
    at = i + 1;
  }
  if (line.slice(at) !== ']') throw new Error(`trailing text after the SD element: ${line.slice(at)}`);
  const [, pri, version, timestamp, hostname, appName, procId, msgId, sdId] = head;
  return { pri: Number(pri), version: Number(version), timestamp: timestamp!, hostname: hostname!, appName: appName!, procId: procId!, msgId: msgId!, sdId: sdId!, params };
}

const RFC3339_UTC_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const RETRY_MS = 100;

type Mode = 'native' | 'sandboxed';

/**
 * A mail server in this process with spam-filter then message-logger, both
 * native or both sandboxed, the logger granted (allow_connect) and pointed at
 * `collector`.
 */
async function startMailServer(mode: Mode, collector: string, loggerConfig: Record<string, unknown>, logLines: string[]): Promise<{ server: MailServer; port: number }> {
  const root = serverRoot({
    server: 'log_hook_calls = true\n',
    plugins: (dir) => {
      mkdirSync(join(dir, 'wasm-plugins'), { recursive: true });
      const entry = (name: string, stem: string, extra: string): string => {
        if (mode === 'native') {
          copyFileSync(examplePlugin(stem, 'native'), join(dir, 'plugins', basename(examplePlugin(stem, 'native'))));
          return `[[plugins.plugin]]\nname = "${name}"\nlibrary = "${basename(examplePlugin(stem, 'native'))}"\nsandbox = false\n${extra}\n`;
        }
        copyFileSync(examplePlugin(stem, 'wasm'), join(dir, 'wasm-plugins', `${stem}.wasm`));
        return `[[plugins.plugin]]\nname = "${name}"\nwasm = "${stem}.wasm"\nsandbox = true\n${extra}\n`;
      };
      return (
        '[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./wasm-plugins"\n\n' +
        entry('spam-filter', 'spam_filter', `config = '{"spam_threshold": 5.0, "quarantine": true}'`) +
        entry('message-logger', 'message_logger', `allow_connect = ["${collector}"]\nconfig = '${JSON.stringify({ collector, connect_timeout_ms: 200, send_timeout_ms: 200, retry_ms: RETRY_MS, ...loggerConfig })}'`)
      );
    },
  });
  const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
  const server = new MailServer(loadConfig(root.config), logger);
  const port = await server.start();
  return { server, port };
}

function transport(port: number) {
  return nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
}

/** Sends one message; returns what a user sees: the reply and how long it took. */
async function send(port: number, options: { from?: string; to?: string | string[]; subject?: string; text?: string; messageId?: string } = {}): Promise<{ response: string; messageId: string; ms: number }> {
  const started = Date.now();
  const info = await transport(port).sendMail({ from: 'bob@example.com', to: 'carol@example.org', subject: 'hello', text: 'a plain note', ...options });
  return { response: info.response, messageId: info.messageId, ms: Date.now() - started };
}

function storedIds(lines: string[]): string[] {
  return lines.map(parseRecord).filter((r) => r.msgId === 'stored').map((r) => r.params.message_id!);
}

describe.each<Mode>(['native', 'sandboxed'])('message-logger (%s) shipping to a real rsyslog', (mode) => {
  let rsyslog: Rsyslog;
  let server: MailServer | undefined;
  let port: number;
  const logLines: string[] = [];
  /** Message-IDs of what the server stored, in order. */
  const stored: string[] = [];

  beforeAll(async () => {
    rsyslog = await startRsyslog();
    ({ server, port } = await startMailServer(mode, rsyslog.address, {}, logLines));
  });

  afterAll(async () => {
    await server?.stop();
    await rsyslog?.stop();
  });

  it('sends one RFC 5424 record per stored message, with the spam filter verdicts', async () => {
    const loaded = logLines.map((line) => JSON.parse(line) as Record<string, unknown>).find((line) => line.plugin === 'message-logger' && line.msg === 'plugin loaded');
    expect(loaded?.kind).toBe(mode === 'native' ? 'native' : 'wasm');
    const startedAt = new Date(Date.now() - 1000).toISOString();
    // A Message-ID with the three characters RFC 5424 escapes in a value.
    const first = await send(port, { messageId: '<odd"id]with\\backslash@example.com>', text: 'you are a winner' }); // one keyword: spam_score 1
    const second = await send(port, { from: 'alice@example.net', to: ['carol@example.org', 'dave@example.org'], text: 'nothing to see' });
    // Six keywords: spam, which this spam-filter config quarantines (250) instead of refusing.
    const spam = await send(port, { from: 'spammer@example.net', text: 'Congratulations WINNER! casino: click here for free money, act now' });
    for (const reply of [first, second, spam]) expect(reply.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
    stored.push(first.messageId, second.messageId, spam.messageId);

    const lines = await rsyslog.waitForReceived(3);
    await new Promise((r) => setTimeout(r, 300)); // a second record for any message would have arrived by now
    expect(rsyslog.received()).toHaveLength(3);
    const records = lines.map(parseRecord);
    for (const record of records) {
      expect(record).toMatchObject({ pri: 22, version: 1, hostname: 'mx.test', appName: 'smtp-server', procId: '-', msgId: 'stored', sdId: 'smtp@32473' });
      expect(record.timestamp).toMatch(RFC3339_UTC_MS);
      expect(record.timestamp >= startedAt && record.timestamp <= new Date().toISOString()).toBe(true);
      expect(record.params.time).toBe(record.timestamp);
      expect(record.params.size).toMatch(/^[1-9]\d*$/);
      expect(record.params).not.toHaveProperty('message_body');
    }
    const [one, two, three] = records;
    expect(first.messageId).toBe('<odd"id]with\\backslash@example.com>');
    expect(lines[0]).toContain('message_id="<odd\\"id\\]with\\\\backslash@example.com>"');
    expect(one!.params).toEqual({ message_id: first.messageId, sender: 'bob@example.com', recipients: 'carol@example.org', size: one!.params.size, spool_id: one!.params.spool_id, quarantined: 'false', time: one!.timestamp, spam_score: '1' });
    expect(first.response).toContain(one!.params.spool_id!);
    expect(two!.params).toMatchObject({ message_id: second.messageId, sender: 'alice@example.net', recipients: 'carol@example.org,dave@example.org', quarantined: 'false', spam_score: '0' });
    expect(two!.params).not.toHaveProperty('is_spam');
    expect(second.response).toContain(two!.params.spool_id!);
    expect(three!.params).toMatchObject({ message_id: spam.messageId, sender: 'spammer@example.net', quarantined: 'true', spam_score: '6', is_spam: 'true' });
    expect(spam.response).toContain(three!.params.spool_id!);
  });

  it('with rsyslog stopped, every message still gets 250 promptly and the server stays responsive', async () => {
    await rsyslog.stop();
    const before = rsyslog.received().length;
    for (let i = 0; i < 5; i++) {
      const reply = await send(port, { subject: `while down ${i}` });
      expect(reply.response).toMatch(/^250 /);
      // A blocked hook would hold the 250 for the connect/send timeouts or longer.
      expect(reply.ms, `message ${i} took ${reply.ms} ms`).toBeLessThan(2000);
      stored.push(reply.messageId);
    }
    await expect(transport(port).verify()).resolves.toBe(true);
    expect(rsyslog.received()).toHaveLength(before);
    expect(logLines.join('\n')).not.toMatch(/SMTP_E_PLUGIN|plugin disabled/i);
  });

  it('after rsyslog is started again, the buffered records arrive in order with the next message', async () => {
    await rsyslog.start();
    await new Promise((r) => setTimeout(r, RETRY_MS * 3)); // past the plugin's retry wait
    const trigger = await send(port, { subject: 'collector is back' });
    expect(trigger.response).toMatch(/^250 /);
    stored.push(trigger.messageId);
    const lines = await rsyslog.waitForReceived(stored.length);
    expect(lines).toHaveLength(stored.length);
    expect(lines.map(parseRecord).some((r) => r.msgId === 'dropped')).toBe(false);
    expect(storedIds(lines)).toEqual(stored);
  });

  it('with buffer_records = 3 and 6 messages while down, 3 arrive later after a record counting 3 drops', async () => {
    const collector = await startRsyslog();
    const lines: string[] = [];
    const small = await startMailServer(mode, collector.address, { buffer_records: 3 }, lines);
    try {
      const sent: string[] = [];
      sent.push((await send(small.port, { subject: 'before' })).messageId);
      await collector.waitForReceived(1);
      await collector.stop();
      for (let i = 0; i < 6; i++) {
        const reply = await send(small.port, { subject: `down ${i}` });
        expect(reply.response).toMatch(/^250 /);
        sent.push(reply.messageId);
      }
      await collector.start();
      await new Promise((r) => setTimeout(r, RETRY_MS * 3));
      sent.push((await send(small.port, { subject: 'after' })).messageId);

      // before, dropped="3", the last 3 sent while down, after
      const received = await collector.waitForReceived(6);
      await new Promise((r) => setTimeout(r, 300));
      expect(collector.received()).toHaveLength(6);
      const records = received.map(parseRecord);
      expect(records.map((r) => r.msgId)).toEqual(['stored', 'dropped', 'stored', 'stored', 'stored', 'stored']);
      expect(records[1]).toMatchObject({ pri: 20, hostname: 'mx.test', sdId: 'smtp@32473' });
      expect(records[1]!.params.dropped).toBe('3');
      expect(records[1]!.params.since).toMatch(RFC3339_UTC_MS);
      expect(storedIds(received)).toEqual([sent[0], sent[4], sent[5], sent[6], sent[7]]);
    } finally {
      await small.server.stop();
      await collector.stop();
    }
  });
});
