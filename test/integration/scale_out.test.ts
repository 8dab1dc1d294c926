import { appendFileSync, copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from '../helpers/fixtures.js';
import { freePort, serverRoot, startServerProcess, waitFor, type ServerProcess } from '../helpers/server.js';
import { redisAvailable, startRedis, type Redis } from './helpers/redis.js';

/**
 * Two server instances on two ports with one real redis-server: what
 * [cluster] redis shares between them (docs/scale-out.md).
 */
describe('two instances and one Redis', () => {
  let redis: Redis;
  const instances: { server: ServerProcess; root: ReturnType<typeof serverRoot>; trace: string }[] = [];

  beforeAll(async () => {
    if (!redisAvailable()) throw new Error('redis-server is not installed (apt-get install redis-server; .ci/run installs it)');
    redis = await startRedis();
    for (let i = 0; i < 2; i++) {
      const root = serverRoot({
        plugins: (dir) => `[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "policy"\nlibrary = "libpolicy.so"\nconfig = '{"trace":"${join(dir, 'trace.log')}"}'\n`,
      });
      copyFileSync(fixture('c_policy'), join(root.dir, 'plugins', 'libpolicy.so'));
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

  it('keeps serving and reloading locally while Redis is down, and shares reloads again once it is back', async () => {
    const [first, second] = instances;
    await redis.stop();
    second!.server.child.kill('SIGHUP');
    await waitFor(() => configChanges(second!.trace) === 2, 'the local reload with Redis down', 10_000);
    await waitFor(() => second!.server.logs().includes('could not tell the other instances'), 'the lost notice logged', 10_000);
    expect(configChanges(first!.trace)).toBe(1);
    await redis.start();
    await waitFor(() => first!.server.logs().includes('config fan-out: Redis answers again') && second!.server.logs().includes('config fan-out: Redis answers again'), 'both clients back', 20_000);
    second!.server.child.kill('SIGHUP');
    await waitFor(() => configChanges(first!.trace) === 2, 'config_changed on the first after Redis came back', 10_000);
  }, 60_000);
});
