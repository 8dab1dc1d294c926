import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import nodemailer, { type SendMailOptions } from 'nodemailer';
import type { Attachment } from 'nodemailer/lib/mailer/index.js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { serverRoot } from '../helpers/server.js';
import { EICAR, EICAR_VIRUS_NAME, clamdCommand, startClamd, type Clamd } from './helpers/clamd.js';
import { examplePlugin, type ExampleTarget } from './helpers/plugins.js';

/**
 * plugins/virus_scanner.zig against a real clamd (a database of one EICAR
 * signature made by the test), through the whole server: nodemailer sends,
 * and the test looks where a user would: the SMTP reply, the Maildir, the
 * quarantine folder. Each case runs with the native build and the sandboxed
 * (wasm) build of the same source.
 */

const SCAN_TIMEOUT_MS = 3_000;
/** Big enough that the default 64 KiB chunks make dozens of INSTREAM chunks. */
const LARGE_ATTACHMENT_BYTES = 3 * 1024 * 1024;

interface Variant {
  readonly label: string;
  readonly target: ExampleTarget;
  /** The `[[plugins.plugin]]` keys choosing this build (copied into the root's plugins/). */
  readonly entry: string;
}

const VARIANTS: readonly Variant[] = [
  { label: 'native', target: 'native', entry: `library = "${basename(examplePlugin('virus_scanner', 'native'))}"\nsandbox = false` },
  { label: 'sandboxed', target: 'wasm', entry: `wasm = "${basename(examplePlugin('virus_scanner', 'wasm'))}"\nsandbox = true` },
];

interface RunningServer {
  readonly root: ReturnType<typeof serverRoot>;
  readonly server: MailServer;
  readonly port: number;
  readonly logs: string[];
}

/** A mail server in this process with the virus scanner as its only plugin. */
async function startMailServer(variant: Variant, pluginConfig: Record<string, unknown>, grants: readonly string[]): Promise<RunningServer> {
  const grantLine = grants.length > 0 ? `allow_connect = [${grants.map((g) => JSON.stringify(g)).join(', ')}]\n` : '';
  const root = serverRoot({
    server: 'max_message_bytes = 16777216\n',
    plugins:
      '[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./plugins"\n\n' +
      `[[plugins.plugin]]\nname = "virus-scanner"\n${variant.entry}\nconfig = '''${JSON.stringify(pluginConfig)}'''\n${grantLine}` +
      // The host's own deadline is well past the plugin's timeout_ms, so a
      // slow clamd gets the plugin's explicit 451, not a plugin failure.
      '\n[plugins.plugin.limits]\nhook_timeout_ms = 15000\n',
  });
  const build = examplePlugin('virus_scanner', variant.target);
  copyFileSync(build, join(root.dir, 'plugins', basename(build)));
  const logs: string[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(line) });
  const server = new MailServer(loadConfig(root.config), logger);
  const port = await server.start();
  return { root, server, port, logs };
}

/** The server's pino records, parsed. */
function logRecords(running: RunningServer): Record<string, unknown>[] {
  return running.logs.map((line) => JSON.parse(line) as Record<string, unknown>);
}

function files(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => !f.startsWith('.')) : [];
}

function mailbox(root: RunningServer['root'], recipient: string): string[] {
  const dir = join(root.maildir, recipient, 'new');
  return files(dir).map((f) => readFileSync(join(dir, f), 'latin1'));
}

function quarantined(root: RunningServer['root']): string[] {
  return files(root.quarantine)
    .filter((f) => f.endsWith('.eml'))
    .map((f) => readFileSync(join(root.quarantine, f), 'latin1'));
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Long enough for a delivery that was going to happen to have happened. */
const settle = () => new Promise((r) => setTimeout(r, 500));

function send(port: number, mail: SendMailOptions) {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, socketTimeout: 60_000 });
  return transport.sendMail({ from: 'sender@example.com', ...mail });
}

/** A random, clean attachment: base64 of random bytes compresses to nothing clamd knows. */
function largeAttachment(): Attachment {
  return { filename: 'data.bin', content: randomBytes(LARGE_ATTACHMENT_BYTES), contentType: 'application/octet-stream' };
}

const eicarAttachment: Attachment = { filename: 'eicar.com', content: Buffer.from(EICAR, 'latin1'), contentType: 'application/octet-stream', contentTransferEncoding: 'base64' };

describe('the test clamd', () => {
  let dir: string;
  let clamd: Clamd;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'clamd-'));
    clamd = await startClamd(dir);
  });

  afterAll(async () => {
    await clamd?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds EICAR by its INSTREAM and passes a clean stream', async () => {
    const instream = (data: Buffer) =>
      new Promise<string>((done, fail) => {
        const client = connect(clamd.socket);
        let reply = '';
        client.on('connect', () => {
          const length = Buffer.alloc(4);
          length.writeUInt32BE(data.length);
          client.write(Buffer.concat([Buffer.from('zINSTREAM\0'), length, data, Buffer.alloc(4)]));
        });
        client.on('data', (chunk) => (reply += chunk.toString('latin1')));
        client.on('end', () => done(reply));
        client.on('error', fail);
      });
    expect(await instream(Buffer.from(EICAR, 'latin1'))).toBe(`stream: ${EICAR_VIRUS_NAME} FOUND\0`);
    expect(await instream(Buffer.from('hello'))).toBe('stream: OK\0');
    expect(await clamdCommand(clamd.socket, 'PING')).toBe('PONG');
  });
});

describe.each(VARIANTS)('virus-scanner ($label) with a real clamd', (variant) => {
  let dir: string;
  let clamd: Clamd;
  let rejecting: RunningServer;
  let quarantining: RunningServer;
  let ungranted: RunningServer;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'clamd-'));
    clamd = await startClamd(dir);
    // The socket path as the guide writes it; the plugin makes it `unix:<path>`.
    const config = { clamav_socket: clamd.socket, timeout_ms: SCAN_TIMEOUT_MS };
    rejecting = await startMailServer(variant, config, [clamd.address]);
    quarantining = await startMailServer(variant, { ...config, action: 'quarantine' }, [clamd.address]);
    ungranted = await startMailServer(variant, config, []);
  });

  afterAll(async () => {
    for (const running of [rejecting, quarantining, ungranted]) {
      await running?.server.stop();
      if (running) rmSync(running.root.dir, { recursive: true, force: true });
    }
    await clamd?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`loads the ${variant.target} build`, () => {
    const loaded = logRecords(rejecting).find((record) => record.msg === 'plugin loaded' && record.plugin === 'virus-scanner');
    expect(loaded?.kind).toBe(variant.target);
  });

  it('refuses a message with EICAR in a base64 attachment: 554 5.7.1 naming the virus, nothing kept', async () => {
    const to = 'infected@example.org';
    await expect(send(rejecting.port, { to, subject: 'invoice', text: 'see attached', attachments: [eicarAttachment] })).rejects.toMatchObject({
      responseCode: 554,
      response: `554 5.7.1 Virus found: ${EICAR_VIRUS_NAME}`,
    });
    await settle();
    expect(mailbox(rejecting.root, to)).toEqual([]);
    expect(quarantined(rejecting.root)).toEqual([]);
  });

  it('delivers a clean message', async () => {
    const to = 'clean@example.org';
    const info = await send(rejecting.port, { to, subject: 'lunch', text: 'clean body 7f3a' });
    expect(info.response).toMatch(/^250 /);
    await waitFor(() => mailbox(rejecting.root, to).length === 1, 'delivery');
    expect(mailbox(rejecting.root, to)[0]).toContain('clean body 7f3a');
  });

  it('delivers a clean multi-megabyte message, sent to clamd in many chunks', async () => {
    const to = 'large@example.org';
    const info = await send(rejecting.port, { to, subject: 'large clean', text: 'large body', attachments: [largeAttachment()] });
    expect(info.response).toMatch(/^250 /);
    await waitFor(() => mailbox(rejecting.root, to).length === 1, 'delivery');
    expect(mailbox(rejecting.root, to)[0]!.length).toBeGreaterThan(LARGE_ATTACHMENT_BYTES);
  });

  it('finds EICAR after several megabytes: every chunk reached clamd', async () => {
    const to = 'large-infected@example.org';
    await expect(send(rejecting.port, { to, subject: 'large infected', text: 'x', attachments: [largeAttachment(), eicarAttachment] })).rejects.toMatchObject({
      responseCode: 554,
      response: `554 5.7.1 Virus found: ${EICAR_VIRUS_NAME}`,
    });
    await settle();
    expect(mailbox(rejecting.root, to)).toEqual([]);
  });

  it('with action "quarantine": 250, kept in the quarantine folder, not in the Maildir', async () => {
    const to = 'quarantine@example.org';
    const info = await send(quarantining.port, { to, subject: 'quarantine me 51c2', text: 'see attached', attachments: [eicarAttachment] });
    expect(info.response).toMatch(/^250 /);
    await waitFor(() => quarantined(quarantining.root).length === 1, 'quarantine');
    expect(quarantined(quarantining.root)[0]).toContain('quarantine me 51c2');
    await settle();
    expect(mailbox(quarantining.root, to)).toEqual([]);
    // A clean message through the same server is delivered as usual.
    await send(quarantining.port, { to, subject: 'fine', text: 'clean' });
    await waitFor(() => mailbox(quarantining.root, to).length === 1, 'delivery');
    expect(quarantined(quarantining.root)).toHaveLength(1);
  });

  it('without the allow_connect grant: the host refuses the connect and logs it, the client gets 451', async () => {
    const to = 'ungranted@example.org';
    await expect(send(ungranted.port, { to, subject: 'no grant', text: 'clean' })).rejects.toMatchObject({
      responseCode: 451,
      response: '451 4.7.1 Virus scanner unavailable, try again later',
    });
    await settle();
    expect(mailbox(ungranted.root, to)).toEqual([]);
    const refusal = logRecords(ungranted).find((record) => record.code === 'SMTP_E_NET_DENIED' && record.address === clamd.address);
    expect(refusal, ungranted.logs.join('')).toBeDefined();
  });

  it('with clamd hung (SIGSTOP): 451 after timeout_ms, nothing delivered', async () => {
    const to = 'hung@example.org';
    process.kill(clamd.service.pid, 'SIGSTOP');
    const started = Date.now();
    try {
      await expect(send(rejecting.port, { to, subject: 'hung', text: 'clean' })).rejects.toMatchObject({
        responseCode: 451,
        response: '451 4.7.1 Virus scanner unavailable, try again later',
      });
    } finally {
      process.kill(clamd.service.pid, 'SIGCONT');
    }
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(SCAN_TIMEOUT_MS - 100);
    expect(elapsed).toBeLessThan(SCAN_TIMEOUT_MS + 5_000);
    await settle();
    expect(mailbox(rejecting.root, to)).toEqual([]);
    // Back on its feet, clamd scans again.
    await send(rejecting.port, { to, subject: 'after', text: 'clean again' });
    await waitFor(() => mailbox(rejecting.root, to).length === 1, 'delivery');
  });

  it('with clamd stopped: 451 4.7.1, nothing delivered', async () => {
    await clamd.stop();
    const to = 'stopped@example.org';
    await expect(send(rejecting.port, { to, subject: 'scanner down', text: 'clean' })).rejects.toMatchObject({
      responseCode: 451,
      response: '451 4.7.1 Virus scanner unavailable, try again later',
    });
    await settle();
    expect(mailbox(rejecting.root, to)).toEqual([]);
  });
});
