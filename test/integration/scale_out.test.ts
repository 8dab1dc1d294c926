import { appendFileSync, copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { fixture } from '../helpers/fixtures.js';
import { freePort, python, serverRoot, startServerProcess, waitFor, type ServerProcess } from '../helpers/server.js';
import { redisAvailable, startRedis, type Redis } from './helpers/redis.js';

/**
 * Two server instances on two ports with one real redis-server: what
 * [cluster] redis shares between them (docs/scale-out.md).
 */
/** The rate limiter's limit per sender domain per hour, counted in Redis for both instances. */
const LIMIT = 10;

/** Sends one message per port in `ports` with smtplib (a connection each); prints each SMTP code (250, or the refusal's). */
const SEND = (ports: readonly number[], sender: string): string => `
import smtplib
for port in ${JSON.stringify(ports)}:
    s = smtplib.SMTP('127.0.0.1', port, timeout=10)
    try:
        s.sendmail('${sender}', ['box@example.org'], 'Subject: limited\\r\\n\\r\\nhello\\r\\n')
        print(250, flush=True)
    except smtplib.SMTPSenderRefused as e:
        print(e.smtp_code, flush=True)
    finally:
        s.quit()
`;

const codes = async (ports: readonly number[], sender: string): Promise<number[]> => (await python(SEND(ports, sender))).stdout.trim().split('\n').filter(Boolean).map(Number);

describe('two instances and one Redis', () => {
  let redis: Redis;
  const instances: { server: ServerProcess; root: ReturnType<typeof serverRoot>; trace: string }[] = [];

  beforeAll(async () => {
    if (!redisAvailable()) throw new Error('redis-server is not installed (apt-get install redis-server; .ci/run installs it)');
    redis = await startRedis();
    for (let i = 0; i < 2; i++) {
      const root = serverRoot({
        plugins: (dir) =>
          `[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nconfig = '{"trace":"${join(dir, 'trace.log')}"}'\n\n` +
          `[[plugins.plugin]]\nname = "rate-limiter"\nlibrary = "librate_limiter.so"\nallow_counters = true\nconfig = '{"backend":"host","max_per_sender_domain":${LIMIT},"window_seconds":3600}'\n`,
      });
      copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
      copyFileSync(join(PROJECT_ROOT, 'plugins', 'librate_limiter.so'), join(root.dir, 'plugins', 'librate_limiter.so'));
      appendFileSync(root.config, `\n[cluster]\nredis = "redis://127.0.0.1:${redis.port}"\ninstance_id = "mx${i + 1}"\n`);
      const server = await startServerProcess(['--config', root.config], await freePort());
      instances.push({ server, root, trace: join(root.dir, 'trace.log') });
    }
    // Both subscribed before anyone reloads.
    for (const { server } of instances) await waitFor(() => server.logs().includes('config fan-out: subscribed'), 'the fan-out subscription', 10_000);
  }, 60_000);

  afterAll(async () => {
    for (const { server } of instances) await server.stop();
    await redis?.stop();
  });

  const configChanges = (trace: string): number => (existsSync(trace) ? readFileSync(trace, 'utf8').split('\n').filter((line) => line.startsWith('config_changed')).length : 0);

  it('a reload on one instance fires config_changed on the other, once, and the notice does not echo back', async () => {
    const [first, second] = instances;
    first!.server.child.kill('SIGHUP');
    await waitFor(() => configChanges(first!.trace) === 1, 'config_changed on the instance that reloaded', 10_000);
    await waitFor(() => configChanges(second!.trace) === 1, 'config_changed on the other instance', 10_000);
    expect(second!.server.logs()).toContain('another instance reloaded its config');
    // The other's reload, caused by the notice, is not announced: nothing comes back to the first.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(configChanges(first!.trace)).toBe(1);
    expect(configChanges(second!.trace)).toBe(1);
  }, 30_000);

  it('admits exactly the limit of 10 messages per sender domain per hour across both instances together', async () => {
    const ports = instances.map(({ server }) => server.port);
    // Eight rounds of one message to each instance: sixteen tries, alternating.
    const answers = await codes(Array.from({ length: 16 }, (_, i) => ports[i % 2]!), 'alice@limited.example');
    expect(answers).toHaveLength(16);
    expect(answers.filter((code) => code === 250)).toHaveLength(LIMIT);
    expect(answers.slice(LIMIT)).toEqual(Array(16 - LIMIT).fill(451));
    // Both instances accepted some and refused some: the count is one.
    expect(answers.filter((code, i) => code === 250 && i % 2 === 0).length).toBeGreaterThan(0);
    expect(answers.filter((code, i) => code === 250 && i % 2 === 1).length).toBeGreaterThan(0);
    const keys = (await redis.command('KEYS', 'smtp-plugin-host:ctr:rate-limiter:*')) as string[];
    expect(keys.some((key) => key.includes('limited.example'))).toBe(true);
  }, 60_000);

  it('keeps serving and reloading locally while Redis is down, and shares reloads again once it is back', async () => {
    const [first, second] = instances;
    await redis.stop();
    // on_redis_down = "tempfail" (the default): limits fail closed, the client is told to retry.
    expect(await codes([first!.server.port, second!.server.port], 'bob@down.example')).toEqual([451, 451]);
    second!.server.child.kill('SIGHUP');
    await waitFor(() => configChanges(second!.trace) === 2, 'the local reload with Redis down', 10_000);
    await waitFor(() => second!.server.logs().includes('could not tell the other instances'), 'the lost notice logged', 10_000);
    expect(configChanges(first!.trace)).toBe(1);
    await redis.start();
    await waitFor(() => first!.server.logs().includes('config fan-out: Redis answers again') && second!.server.logs().includes('config fan-out: Redis answers again'), 'both clients back', 20_000);
    second!.server.child.kill('SIGHUP');
    await waitFor(() => configChanges(first!.trace) === 2, 'config_changed on the first after Redis came back', 10_000);
    // Mail flows again once Redis answers (after the host's short back-off).
    let answers: number[] = [];
    for (let round = 0; round < 20 && answers.join() !== '250,250'; round++) {
      answers = await codes([first!.server.port, second!.server.port], `carol${round}@back.example`);
      if (answers.join() !== '250,250') await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(answers).toEqual([250, 250]);
  }, 60_000);
});
