import { copyFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';
import { serverRoot } from '../helpers/server.js';

/**
 * plugins/rate_limiter.zig on the host counters (`backend = "host"`, its
 * default) in the real server, with the memory backend (no [cluster]
 * redis): the counts belong to the server process, so a native and a
 * sandboxed build in one process share them. test/integration/ covers Redis.
 */

/** 31 days, the longest window: no test here straddles a window's end. */
const WINDOW_SECONDS = 2_678_400;
const LIBRARY = basename(fixture('rate_limiter'));
const MODULE = basename(wasmFixture('rate_limiter'));

interface Running {
  readonly server: MailServer;
  readonly port: number;
  readonly logs: Record<string, unknown>[];
}

const servers: MailServer[] = [];

afterAll(async () => {
  for (const server of servers) await server.stop();
});

/** A server running the rate limiter's native or sandboxed build with `config`, granted the counters or not. */
async function startServer(sandbox: boolean, config: Record<string, unknown>, allowCounters = true): Promise<Running> {
  const root = serverRoot({
    plugins:
      '[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./plugins"\n\n' +
      `[[plugins.plugin]]\nname = "rate-limiter"\nlibrary = "${LIBRARY}"\nwasm = "${MODULE}"\nsandbox = ${sandbox}\n` +
      `allow_counters = ${allowCounters}\nconfig = '''${JSON.stringify({ window_seconds: WINDOW_SECONDS, ...config })}'''\n`,
  });
  copyFileSync(fixture('rate_limiter'), join(root.dir, 'plugins', LIBRARY));
  copyFileSync(wasmFixture('rate_limiter'), join(root.dir, 'plugins', MODULE));
  const logs: Record<string, unknown>[] = [];
  const server = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }));
  servers.push(server);
  return { server, port: await server.start(), logs };
}

/** One message from `from`; the reply's code and text (a refusal's too). */
async function send(port: number, from: string): Promise<{ code: number; response: string }> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    const info = await transport.sendMail({ from, to: 'inbox@dest.example', subject: 'rate', text: 'hello' });
    return { code: Number(info.response.slice(0, 3)), response: info.response };
  } catch (error) {
    const failure = error as { responseCode?: number; response?: string };
    if (failure.responseCode === undefined) throw error;
    return { code: failure.responseCode, response: failure.response ?? '' };
  } finally {
    transport.close();
  }
}

async function codes(port: number, from: string, count: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push((await send(port, from)).code);
  return out;
}

describe('rate-limiter on the host counters (memory backend)', () => {
  for (const sandbox of [false, true]) {
    it(`refuses the 4th MAIL of a domain with 451 4.7.1, other domains pass (${sandbox ? 'sandboxed' : 'native'})`, async () => {
      const { port } = await startServer(sandbox, { max_per_sender_domain: 3 });
      const domain = sandbox ? 'limited-wasm.example' : 'limited-native.example';
      expect(await codes(port, `a@${domain}`, 3)).toEqual([250, 250, 250]);
      const over = await send(port, `b@${domain}`);
      expect(over.code).toBe(451);
      expect(over.response).toContain(`4.7.1 Rate limit exceeded for ${domain}`);
      expect((await send(port, 'a@other.example')).code).toBe(250);
    });
  }

  it('shares the count of one domain between the native and the sandboxed build in one process', async () => {
    const native = await startServer(false, { max_per_sender_domain: 4 });
    const sandboxed = await startServer(true, { max_per_sender_domain: 4 });
    const from = 'someone@shared.example';
    expect([...(await codes(native.port, from, 2)), ...(await codes(sandboxed.port, from, 2))]).toEqual([250, 250, 250, 250]);
    expect((await send(sandboxed.port, from)).code).toBe(451);
    expect((await send(native.port, from)).code).toBe(451);
  });

  it('without allow_counters: 451 4.3.0 per on_backend_error, and the host logs the refusal with its code', async () => {
    const { port, logs } = await startServer(false, { max_per_sender_domain: 3 }, false);
    const refused = await send(port, 'a@ungranted.example');
    expect(refused.code).toBe(451);
    expect(refused.response).toContain('4.3.0 Rate limit service unavailable');
    expect(logs).toContainEqual(expect.objectContaining({ code: 'SMTP_E_COUNTER_DENIED', file: expect.stringContaining(LIBRARY), msg: expect.stringContaining('allow_counters') }));
  });
});
