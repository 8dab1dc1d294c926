import { randomUUID } from 'node:crypto';
import { createClient } from 'redis';
import type { ClusterConfig } from '../config/config.js';
import type { Logger } from '../log.js';

/** A reconnect waits this long after the first failure, doubling up to the max: Redis coming back is noticed within seconds. */
const RECONNECT_INITIAL_MS = 100;
const RECONNECT_MAX_MS = 5000;
/** A notice bigger than this is not one of ours: it is dropped. */
const NOTICE_BYTES_MAX = 64 * 1024;
/** Changed plugin names one notice carries at most. */
const NOTICE_PLUGINS_MAX = 1000;

/** The client this file makes (createClient's own type, without modules). */
type Redis = ReturnType<typeof makeClient>;

function makeClient(cluster: ClusterConfig) {
  return createClient({
    url: cluster.redis!,
    socket: {
      connectTimeout: cluster.redisTimeoutMs,
      reconnectStrategy: (retries: number) => Math.min(RECONNECT_MAX_MS, RECONNECT_INITIAL_MS * 2 ** Math.min(retries, 16)),
    },
    // A publish while Redis is down fails at once instead of waiting in memory.
    disableOfflineQueue: true,
  });
}

/** What an instance tells the others after a reload. */
interface ConfigNotice {
  /** The instance that reloaded ([cluster] instance_id). */
  readonly instance: string;
  /** Unique per notice, so that a notice seen twice is acted on once. */
  readonly id: string;
  readonly at: string;
  readonly changed: readonly string[];
}

export interface ConfigFanoutOptions {
  readonly cluster: ClusterConfig;
  readonly logger: Logger;
  /** Another instance reloaded its config: reload ours (which fires config_changed here). */
  readonly onRemoteChange: (from: string, changed: readonly string[]) => void;
}

function parseNotice(text: string): ConfigNotice | null {
  if (text.length > NOTICE_BYTES_MAX) return null;
  try {
    const value = JSON.parse(text) as Partial<ConfigNotice>;
    if (typeof value.instance !== 'string' || typeof value.id !== 'string' || typeof value.at !== 'string' || !Array.isArray(value.changed)) return null;
    const changed = value.changed.filter((name): name is string => typeof name === 'string').slice(0, NOTICE_PLUGINS_MAX);
    return { instance: value.instance, id: value.id, at: value.at, changed };
  } catch {
    return null;
  }
}

/**
 * Config change fan-out between instances through Redis pub/sub: after a
 * reload, an instance publishes a notice on `<key_prefix>:config`; every
 * other instance reloads its own config file and so fires config_changed.
 * Notices from this instance (all its workers share its instance id) are
 * ignored, and a reload a notice caused is not announced again, so a notice
 * never echoes. Redis being down never stops the server: the subscriber
 * reconnects, and a notice published meanwhile is lost (logged); an
 * operator reloads that instance by hand.
 */
export class ConfigFanout {
  readonly #options: ConfigFanoutOptions;
  readonly #channel: string;
  readonly #publisher: Redis;
  readonly #subscriber: Redis;
  readonly #seen = new Set<string>();
  #down = false;

  constructor(options: ConfigFanoutOptions) {
    const { cluster } = options;
    if (cluster.redis === null) throw new Error('ConfigFanout needs [cluster] redis');
    this.#options = options;
    this.#channel = `${cluster.keyPrefix}:config`;
    this.#publisher = makeClient(cluster);
    this.#subscriber = makeClient(cluster);
    for (const [role, redis] of [['publisher', this.#publisher], ['subscriber', this.#subscriber]] as const) {
      redis.on('error', (error: Error) => this.#wentDown(role, error));
      redis.on('ready', () => this.#cameBack(role));
    }
  }

  #wentDown(role: string, error: Error): void {
    if (this.#down) return;
    this.#down = true;
    this.#options.logger.warn({ redis: this.#options.cluster.redis, role, err: error.message }, 'config fan-out: Redis unreachable; reloads are not shared until it answers again');
  }

  #cameBack(role: string): void {
    if (!this.#down) return;
    this.#down = false;
    this.#options.logger.info({ redis: this.#options.cluster.redis, role }, 'config fan-out: Redis answers again');
  }

  /** Connects and subscribes; resolves even when Redis is down (the clients keep trying in the background). */
  async start(): Promise<void> {
    const connecting = Promise.all([
      this.#publisher.connect(),
      this.#subscriber.connect().then(() => this.#subscriber.subscribe(this.#channel, (message) => this.#received(message))),
    ]);
    const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), this.#options.cluster.redisTimeoutMs * 4).unref());
    const outcome = await Promise.race([connecting.then(() => 'ready' as const, (error: unknown) => error), timeout]);
    if (outcome === 'ready') {
      this.#options.logger.info({ channel: this.#channel, instance: this.#options.cluster.instanceId }, 'config fan-out: subscribed');
    } else {
      // The clients reconnect on their own; the subscription is made once the subscriber connects.
      connecting.catch(() => undefined);
      this.#wentDown('subscriber', outcome instanceof Error ? outcome : new Error(`no answer within ${this.#options.cluster.redisTimeoutMs * 4} ms`));
    }
  }

  #received(text: string): void {
    const notice = parseNotice(text);
    if (notice === null) {
      this.#options.logger.warn({ channel: this.#channel }, 'config fan-out: ignored a message that is not a config notice');
      return;
    }
    if (notice.instance === this.#options.cluster.instanceId || this.#seen.has(notice.id)) return;
    this.#seen.add(notice.id);
    if (this.#seen.size > NOTICE_PLUGINS_MAX) this.#seen.delete(this.#seen.values().next().value!);
    this.#options.logger.info({ from: notice.instance, changed_plugins: notice.changed }, 'config fan-out: another instance reloaded its config; reloading ours');
    this.#options.onRemoteChange(notice.instance, notice.changed);
  }

  /** Tells the other instances that this one reloaded (call after a reload this instance chose, not one a notice caused). */
  async announce(changed: readonly string[]): Promise<void> {
    const notice: ConfigNotice = { instance: this.#options.cluster.instanceId, id: randomUUID(), at: new Date().toISOString(), changed: changed.slice(0, NOTICE_PLUGINS_MAX) };
    try {
      await this.#publisher.publish(this.#channel, JSON.stringify(notice));
    } catch (error) {
      this.#options.logger.warn({ err: (error as Error).message }, 'config fan-out: could not tell the other instances about this reload (Redis down?); reload them by hand');
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.#subscriber.close(), this.#publisher.close()]);
  }
}
