import { copyFileSync, existsSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { serverRoot } from '../helpers/server.js';
import { examplePlugin } from './helpers/plugins.js';
import { startRedis, type Redis } from './helpers/redis.js';

/**
 * plugins/rate_limiter.zig through the real server, native and sandboxed:
 * the memory backend on one server, and the Redis backend shared by two
 * servers against one real redis-server, with Redis going down and back.
 */

const WINDOW_SECONDS = 3600;
const LIBRARY = basename(examplePlugin('rate_limiter', 'native'));
const MODULE = basename(examplePlugin('rate_limiter', 'wasm'));

interface Attempt {
  readonly code: number;
  readonly response: string;
  /** The SMTP command the server refused (nodemailer's `command`), when refused. */
  readonly command?: string;
}

/** One message from `from`, over a fresh connection, as a user's client sends it. */
async function send(port: number, from: string, options: { to?: string; localAddress?: string } = {}): Promise<Attempt> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, localAddress: options.localAddress });
  try {
    const info = await transport.sendMail({ from, to: options.to ?? 'inbox@dest.example', subject: 'rate', text: `from ${from}` });
    return { code: Number(info.response.slice(0, 3)), response: info.response };
  } catch (error) {
    const failure = error as { responseCode?: number; response?: string; command?: string; message: string };
    if (failure.responseCode === undefined) throw error;
    return { code: failure.responseCode, response: failure.response ?? failure.message, command: failure.command };
  } finally {
    transport.close();
  }
}

/** Sends `count` messages and returns the reply codes. */
async function sendMany(port: number, from: string, count: number, options: { to?: string; localAddress?: string } = {}): Promise<number[]> {
  const codes: number[] = [];
  for (let i = 0; i < count; i++) codes.push((await send(port, from, options)).code);
  return codes;
}

function delivered(maildir: string, recipient: string): number {
  const box = join(maildir, recipient, 'new');
  return existsSync(box) ? readdirSync(box).length : 0;
}

async function waitForDelivered(maildir: string, recipient: string, count: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (delivered(maildir, recipient) < count) {
    if (Date.now() > deadline) throw new Error(`${recipient} has ${delivered(maildir, recipient)} of ${count} messages after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The counts are per fixed window of the wall clock: a test that straddled
 * a window's end would see its counts restart. Waits (at most `marginMs`)
 * until at least `marginMs` of the current window remain.
 */
async function awayFromWindowEnd(marginMs = 30_000): Promise<number> {
  const windowMs = WINDOW_SECONDS * 1000;
  const left = windowMs - (Date.now() % windowMs);
  if (left < marginMs) await new Promise((r) => setTimeout(r, left + 50));
  return Math.floor(Date.now() / windowMs);
}

interface Running {
  readonly server: MailServer;
  readonly port: number;
  readonly maildir: string;
  readonly logs: string[];
}

const MODES = [
  { mode: 'native', sandbox: false },
  { mode: 'sandboxed', sandbox: true },
] as const;

describe.each(MODES)('rate-limiter, $mode', ({ sandbox }) => {
  const servers: MailServer[] = [];
  const redises: Redis[] = [];

  /** A mail server on its own free port running the rate limiter with `config`. */
  async function startServer(config: Record<string, unknown>, allowConnect: readonly string[] = []): Promise<Running> {
    const root = serverRoot({
      plugins:
        '[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./plugins"\n\n' +
        '[[plugins.plugin]]\nname = "rate-limiter"\n' +
        `library = "${LIBRARY}"\n` +
        `wasm = "${MODULE}"\n` +
        `sandbox = ${sandbox}\n` +
        `allow_connect = ${JSON.stringify(allowConnect)}\n` +
        `config = '''${JSON.stringify(config)}'''\n`,
    });
    // Each server gets its own copy, as on its own machine: dlopen shares
    // one library (and its globals) among all loads of the same path.
    copyFileSync(examplePlugin('rate_limiter', 'native'), join(root.dir, 'plugins', LIBRARY));
    copyFileSync(examplePlugin('rate_limiter', 'wasm'), join(root.dir, 'plugins', MODULE));
    const logs: string[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(line) });
    const server = new MailServer(loadConfig(root.config), logger);
    servers.push(server);
    const port = await server.start();
    return { server, port, maildir: root.maildir, logs };
  }

  async function startOwnRedis(): Promise<Redis> {
    const redis = await startRedis();
    redises.push(redis);
    return redis;
  }

  afterAll(async () => {
    for (const server of servers) await server.stop();
    for (const redis of redises) await redis.stop();
  });

  describe('memory backend', () => {
    let domainLimited: Running;
    let ipLimited: Running;

    beforeAll(async () => {
      domainLimited = await startServer({ backend: 'memory', max_per_sender_domain: 3 });
      ipLimited = await startServer({ backend: 'memory', max_per_sender_domain: 0, max_per_client_ip: 2 });
    });

    it('answers the 4th MAIL FROM of a domain with 451 4.7.1, before DATA; other domains are unaffected', async () => {
      await awayFromWindowEnd();
      expect(await sendMany(domainLimited.port, 'alice@limited.example', 3, { to: 'a@dest.example' })).toEqual([250, 250, 250]);
      const refused = await send(domainLimited.port, 'bob@LIMITED.example', { to: 'a@dest.example' });
      expect(refused).toEqual({ code: 451, response: '451 4.7.1 Rate limit exceeded for limited.example', command: 'MAIL FROM' });
      expect((await send(domainLimited.port, 'carol@other.example', { to: 'b@dest.example' })).code).toBe(250);
      await waitForDelivered(domainLimited.maildir, 'a@dest.example', 3);
      await waitForDelivered(domainLimited.maildir, 'b@dest.example', 1);
      await new Promise((r) => setTimeout(r, 200));
      expect(delivered(domainLimited.maildir, 'a@dest.example')).toBe(3);
    });

    it('limits per client IP likewise: the 3rd MAIL from 127.0.0.1 gets 451, another address is unaffected', async () => {
      await awayFromWindowEnd();
      expect((await send(ipLimited.port, 'one@a.example', { to: 'c@dest.example' })).code).toBe(250);
      expect((await send(ipLimited.port, 'two@b.example', { to: 'c@dest.example' })).code).toBe(250);
      expect(await send(ipLimited.port, 'three@c.example', { to: 'c@dest.example' })).toEqual({ code: 451, response: '451 4.7.1 Rate limit exceeded for 127.0.0.1', command: 'MAIL FROM' });
      // Linux routes all of 127/8 to loopback: a second client address, still loopback only.
      expect((await send(ipLimited.port, 'three@c.example', { to: 'c@dest.example', localAddress: '127.0.0.2' })).code).toBe(250);
      await waitForDelivered(ipLimited.maildir, 'c@dest.example', 3);
    });
  });

  describe('redis backend', () => {
    let redis: Redis;

    beforeAll(async () => {
      redis = await startOwnRedis();
    });

    it('two servers against one redis-server share the limit, and Redis holds the shared count', async () => {
      const prefix = `shared-${sandbox ? 'wasm' : 'native'}`;
      const config = { backend: 'redis', redis: redis.address, key_prefix: prefix, max_per_sender_domain: 5, window_seconds: WINDOW_SECONDS };
      const a = await startServer(config, [redis.address]);
      const b = await startServer(config, [redis.address]);
      const window = await awayFromWindowEnd();
      const key = `${prefix}:domain:shared.example:${window}`;

      expect(await sendMany(a.port, 'x@shared.example', 3, { to: 'd@dest.example' })).toEqual([250, 250, 250]);
      expect(await sendMany(b.port, 'y@shared.example', 2, { to: 'e@dest.example' })).toEqual([250, 250]);
      expect(await redis.command('GET', key)).toBe('5');

      const viaA = await send(a.port, 'z@shared.example', { to: 'd@dest.example' });
      const viaB = await send(b.port, 'z@shared.example', { to: 'e@dest.example' });
      for (const refused of [viaA, viaB]) expect(refused).toEqual({ code: 451, response: '451 4.7.1 Rate limit exceeded for shared.example', command: 'MAIL FROM' });
      // Refused attempts are counted too (docs/plugins/rate_limiter.md).
      expect(await redis.command('GET', key)).toBe('7');
      const ttl = await redis.command('TTL', key);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(WINDOW_SECONDS);
      // Another domain has its own count, on both servers.
      expect((await send(b.port, 'x@fresh.example', { to: 'e@dest.example' })).code).toBe(250);
      expect(await redis.command('GET', `${prefix}:domain:fresh.example:${window}`)).toBe('1');

      await waitForDelivered(a.maildir, 'd@dest.example', 3);
      await waitForDelivered(b.maildir, 'e@dest.example', 3);
    });

    it('Redis down: 451 4.3.0 by default (and accepted again once it is back); on_backend_error = "allow" accepts', async () => {
      const flaky = await startOwnRedis();
      const config = { backend: 'redis', redis: flaky.address, key_prefix: 'down', max_per_sender_domain: 100, timeout_ms: 300 };
      const tempfail = await startServer(config, [flaky.address]);
      const allow = await startServer({ ...config, on_backend_error: 'allow' }, [flaky.address]);
      await awayFromWindowEnd();
      expect((await send(tempfail.port, 'up@down.example')).code).toBe(250);

      await flaky.stop();
      expect(await send(tempfail.port, 'up@down.example')).toEqual({ code: 451, response: '451 4.3.0 Rate limit service unavailable, try again later', command: 'MAIL FROM' });
      expect((await send(allow.port, 'up@down.example', { to: 'allowed@dest.example' })).code).toBe(250);
      await waitForDelivered(allow.maildir, 'allowed@dest.example', 1);

      // The same port again: the plugin reconnects on the next MAIL.
      await flaky.start();
      expect((await send(tempfail.port, 'up@down.example')).code).toBe(250);
      expect(await flaky.command('KEYS', 'down:domain:down.example:*')).toHaveLength(1);
      if (sandbox) {
        // The sandbox sends the plugin's stderr to the server's log (a native
        // plugin writes to the process's stderr): the failure is logged once,
        // not per MAIL, and so is the recovery.
        const pluginLines = tempfail.logs.filter((line) => line.includes('[rate-limiter]'));
        expect(pluginLines.filter((line) => line.includes('redis backend') && line.includes('failed'))).toHaveLength(1);
        expect(pluginLines.some((line) => line.includes('backend answers again'))).toBe(true);
      }
    });

    it('without an allow_connect grant the host refuses the connection: 451 4.3.0, and Redis counts nothing', async () => {
      const ungranted = await startServer({ backend: 'redis', redis: redis.address, key_prefix: 'ungranted' });
      await awayFromWindowEnd();
      expect(await send(ungranted.port, 'a@ungranted.example')).toEqual({ code: 451, response: '451 4.3.0 Rate limit service unavailable, try again later', command: 'MAIL FROM' });
      expect(await redis.command('KEYS', 'ungranted:*')).toEqual([]);
    });
  });
});
