import { readdirSync } from 'node:fs';
import nodemailer, { type SendMailOptions } from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { freePort, serverRoot, waitFor } from '../helpers/server.js';
import { startSmarthost, type Smarthost, type Transaction } from '../helpers/smarthost.js';
import {
  GTUBE,
  GTUBE_REPLY,
  RSPAMD_HEADERS,
  startActionsMilter,
  startOpendkim,
  startRspamd,
  type ActionsMilter,
  type Opendkim,
  type Rspamd,
} from './helpers/milter-services.js';

/**
 * This server as the MTA side of the milter protocol: a `[[plugins.plugin]]`
 * entry with `milter = "inet:..."` in front of real milters started here on
 * loopback (a pymilter milter that performs every action on request, rspamd,
 * opendkim). Mail is sent with nodemailer and relayed to a smarthost on
 * loopback, so each change is checked where a user would see it: in the
 * reply, in the delivered message and in its envelope.
 */

interface Running {
  readonly server: MailServer;
  readonly port: number;
  readonly smarthost: Smarthost;
  readonly root: ReturnType<typeof serverRoot>;
  readonly logs: string[];
}

const running: Running[] = [];

async function serverWithMilter(milter: string, options: { onError?: string; config?: Record<string, unknown> } = {}): Promise<Running> {
  const smarthost = await startSmarthost();
  const root = serverRoot({
    delivery: `mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = ${smarthost.port}\nretry_initial_ms = 50\nretry_max_ms = 200\n`,
    policy: 'local_domains = ["mx.test"]\n',
    plugins:
      '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n' +
      `[[plugins.plugin]]\nname = "milter"\nmilter = "${milter}"\nconfig = '''${JSON.stringify({ command_timeout_ms: 3_000, hostname: 'mx.test', ...options.config })}'''\n` +
      (options.onError === undefined ? '' : `on_error = "${options.onError}"\n`),
  });
  const logs: string[] = [];
  const server = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void logs.push(line) }));
  const port = await server.start();
  const started = { server, port, smarthost, root, logs };
  running.push(started);
  return started;
}

afterAll(async () => {
  for (const each of running.splice(0)) {
    await each.server.stop();
    await each.smarthost.close();
  }
});

function send(port: number, mail: SendMailOptions) {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, name: 'client.example.test', socketTimeout: 30_000 });
  return transport.sendMail({ from: 'sender@example.test', subject: 'hello', text: 'a clean message\n', headers: { 'X-Delete-Me': 'please' }, ...mail });
}

/** The status of a refused send ("550 5.7.1 ...") as nodemailer reports it. */
async function refusal(sending: Promise<unknown>): Promise<string> {
  try {
    await sending;
  } catch (error) {
    return String((error as { response?: string }).response ?? error);
  }
  throw new Error('the message was accepted');
}

async function delivered(smarthost: Smarthost, count: number): Promise<Transaction[]> {
  await waitFor(() => smarthost.transactions.length >= count, `${count} relayed message(s)`, 15_000);
  return smarthost.transactions;
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 500));

function headerNames(data: Buffer): string[] {
  const head = data.toString('latin1').split('\r\n\r\n')[0]!;
  return head.split('\r\n').filter((line) => /^[^ \t]/.test(line)).map((line) => line.slice(0, line.indexOf(':')));
}

describe('milter client against a pymilter milter (python3-milter)', () => {
  let milter: ActionsMilter;

  beforeAll(async () => {
    milter = await startActionsMilter();
  });

  afterAll(async () => {
    await milter.stop();
  });

  it('passes a clean message through, telling the milter the connection, HELO, envelope, headers, body and the macros it reads', async () => {
    const { port, smarthost } = await serverWithMilter(milter.address);
    const before = milter.received().length;
    await send(port, { to: 'user@example.test', messageId: '<clean-1@example.test>' });
    const [relayed] = await delivered(smarthost, 1);
    expect(relayed!.from).toBe('sender@example.test');
    expect(relayed!.to).toEqual(['user@example.test']);
    const record = (await milter.waitForReceived(before + 1)).at(-1)!;
    expect(record.connect.addr).toBe('127.0.0.1');
    expect(record.helo).toBe('client.example.test');
    expect(record.from).toBe('<sender@example.test>');
    expect(record.rcpts.map((each) => each[0])).toEqual(['<user@example.test>']);
    expect(record.headers.map(([name]) => name)).toContain('Subject');
    expect(record.body).toContain('a clean message');
    expect(record.macros.j).toBe('mx.test');
    expect(record.macros['{client_addr}']).toBe('127.0.0.1');
  });

  it('applies every modification: sender, recipients added and deleted, headers added, inserted, changed and deleted, and the body replaced', async () => {
    const { port, smarthost } = await serverWithMilter(milter.address);
    const actions = 'chgfrom+addrcpt+addheader+insheader+chgheader+delheader+replbody@example.test';
    await send(port, { envelope: { from: 'sender@example.test', to: [actions, 'delrcpt@example.test'] }, to: actions });
    const [relayed] = await delivered(smarthost, 1);
    expect(relayed!.from).toBe('changed-sender@example.test');
    expect(relayed!.to.sort()).toEqual(['added@example.test', actions].sort());
    const text = relayed!.data.toString('latin1');
    const names = headerNames(relayed!.data);
    expect(names[0]).toBe('X-Actions-Inserted');
    expect(text).toContain('\r\nX-Actions-Milter: added\r\n');
    expect(text).toMatch(/\r\nSubject: changed by actions milter\r\n/i);
    expect(names).not.toContain('X-Delete-Me');
    expect(text).not.toContain('a clean message');
    expect(text.endsWith('\r\n\r\nThis body was replaced by the actions milter.\r\nSecond line.\r\n')).toBe(true);
  });

  it('answers with the milter\'s verdicts: its own reject and tempfail replies, a rejected recipient alone, discard and quarantine', async () => {
    const { port, smarthost, root } = await serverWithMilter(milter.address);
    expect(await refusal(send(port, { to: 'reject@example.test' }))).toMatch(/^550 5\.7\.1 Rejected by actions milter/);
    expect(await refusal(send(port, { to: 'tempfail@example.test' }))).toMatch(/^451 4\.7\.1 Try again later \(actions milter\)/);
    const partly = await send(port, { envelope: { from: 'sender@example.test', to: ['reject-rcpt@example.test', 'kept@example.test'] }, to: 'kept@example.test' });
    expect(partly.rejected).toEqual(['reject-rcpt@example.test']);
    expect(partly.accepted).toEqual(['kept@example.test']);
    const [relayed] = await delivered(smarthost, 1);
    expect(relayed!.to).toEqual(['kept@example.test']);

    const discarded = await send(port, { to: 'discard@example.test' });
    expect(discarded.response).toMatch(/^250 /);
    const held = await send(port, { to: 'quarantine@example.test' });
    expect(held.response).toMatch(/^250 /);
    await waitFor(() => readdirSync(root.quarantine).some((file) => file.endsWith('.eml')), 'the quarantined message');
    await settle();
    // Only the message with a kept recipient was relayed: the discarded one and the quarantined one were not.
    expect(smarthost.transactions).toHaveLength(1);
  });

  it('tempfails a session whose milter hangs, within command_timeout_ms, while other sessions are served', async () => {
    const { port, smarthost } = await serverWithMilter(milter.address, { config: { command_timeout_ms: 1_000 } });
    const started = performance.now();
    const hung = refusal(send(port, { to: 'hang@example.test' }));
    const other = await send(port, { to: 'user@example.test' });
    expect(other.response).toMatch(/^250 /);
    expect(await hung).toMatch(/^451 4\.3\.0/);
    expect(performance.now() - started).toBeLessThan(5_000);
    await delivered(smarthost, 1);
    await settle();
    expect(smarthost.transactions.map((each) => each.to)).toEqual([['user@example.test']]);
  });

  it('tempfails when the milter is down (on_error = "tempfail", the default), and lets mail through with on_error = "continue"', async () => {
    const nobody = `inet:127.0.0.1:${await freePort()}`;
    const closed = await serverWithMilter(nobody);
    expect(await refusal(send(closed.port, { to: 'user@example.test' }))).toMatch(/^451 4\.3\.0/);
    expect(closed.logs.some((line) => line.includes('SMTP_E_MILTER_UNAVAILABLE'))).toBe(true);
    const open = await serverWithMilter(nobody, { onError: 'continue' });
    expect((await send(open.port, { to: 'user@example.test' })).response).toMatch(/^250 /);
    await delivered(open.smarthost, 1);
  });
});

describe('milter client against rspamd', () => {
  let rspamd: Rspamd;

  beforeAll(async () => {
    rspamd = await startRspamd();
  }, 90_000);

  afterAll(async () => {
    await rspamd.stop();
  });

  it('gets rspamd\'s reject for GTUBE, and its headers on clean mail', async () => {
    const { port, smarthost } = await serverWithMilter(rspamd.address, { config: { command_timeout_ms: 10_000 } });
    expect(await refusal(send(port, { to: 'user@example.test', text: `spam ${GTUBE}\n` }))).toContain(GTUBE_REPLY);
    await send(port, { to: 'user@example.test' });
    const [relayed] = await delivered(smarthost, 1);
    const names = headerNames(relayed!.data);
    for (const header of RSPAMD_HEADERS) expect(names).toContain(header);
    await settle();
    expect(smarthost.transactions).toHaveLength(1);
  });
});

describe('milter client against opendkim', () => {
  let opendkim: Opendkim;

  beforeAll(async () => {
    opendkim = await startOpendkim({ domain: 'example.test' });
  }, 60_000);

  afterAll(async () => {
    await opendkim.stop();
  });

  it('relays mail from the signing domain with a DKIM-Signature that verifies, and one that fails once the body is changed', async () => {
    const { port, smarthost } = await serverWithMilter(opendkim.address);
    await send(port, { from: 'someone@example.test', to: 'user@elsewhere.test', text: 'signed body\n' });
    const [relayed] = await delivered(smarthost, 1);
    expect(headerNames(relayed!.data)[0]).toBe('DKIM-Signature');
    expect((await opendkim.verify(relayed!.data)).result).toBe('pass');
    const tampered = Buffer.from(relayed!.data.toString('latin1').replace('signed body', 'changed body'), 'latin1');
    expect((await opendkim.verify(tampered)).result).toBe('fail');
  });
});
