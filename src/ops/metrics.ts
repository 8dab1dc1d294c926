import type * as PromClient from 'prom-client';
import { optionalPackage } from '../optional-package.js';
import type { QueueSummary } from '../delivery/queue-selector.js';
import type { PluginInstance } from '../plugin/lifecycle.js';
import { pluginMode } from './plugin-mode.js';
import { RefusalLog } from './refusal-log.js';
import { CALL_LATENCY_BUCKETS_S, DISABLE_REASONS, PluginCallStats, VERDICTS } from './plugin-call-stats.js';

/** prom-client, loaded with the first ServerMetrics: a server without an [admin] listener never loads it. */
const prom = (): typeof PromClient => optionalPackage<typeof PromClient>('prom-client');

/** Every metric's name starts so (postfix_exporter's style: <prefix>_<service>_<what>_<unit|total>). */
export const METRIC_PREFIX = 'smtphost_';

/** Error codes counted as a deadline hit, and as a trap or crash, per plugin. */
const DEADLINE_CODES: ReadonlySet<string> = new Set(['SMTP_E_WASM_DEADLINE', 'SMTP_E_PLUGIN_DEADLINE']);
const CRASH_CODES: ReadonlySet<string> = new Set(['SMTP_E_WASM_TRAP', 'SMTP_E_WASM_EXIT', 'SMTP_E_PLUGIN_CRASHED']);

/** Upper bounds (seconds) of the delivery delay histogram: from a local Maildir write to days of retries. */
const DELIVERY_DELAY_BUCKETS_S = [0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600];

/** What the metrics read at scrape time. */
export interface MetricSources {
  readonly plugins: () => readonly PluginInstance[];
  /** DeliveryQueue.summary(); null when there is no spool (storage.spool = "none"). */
  readonly queue: () => QueueSummary | null;
}

/** One line of a scraped metric, as prom-client's registry prints it. */
interface Sample {
  readonly metricName?: string;
  readonly labels?: Readonly<Record<string, string | number>>;
  readonly value: number;
}

/** A metric whose values are computed when scraped (prom-client calls get()). */
class ScrapedMetric {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge' | 'histogram';
  readonly #values: () => Sample[];

  constructor(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: () => Sample[]) {
    this.name = name;
    this.help = help;
    this.type = type;
    this.#values = values;
  }

  get(): { name: string; help: string; type: string; values: Sample[]; aggregator: 'sum' } {
    return { name: this.name, help: this.help, type: this.type, values: this.#values(), aggregator: 'sum' };
  }

  reset(): void {
    // Values live in their sources.
  }
}

/**
 * The server's Prometheus metrics. Events of a session or a message are
 * prom-client counters (a few per message); plugin calls, which happen
 * many times per message, are counted in PluginCallStats's plain arrays and
 * turned into samples only when /metrics is read, so recording one costs
 * well under a microsecond.
 */
export class ServerMetrics {
  readonly registry = new (prom().Registry)();
  readonly calls = new PluginCallStats();
  readonly connects: PromClient.Counter;
  readonly disconnects: PromClient.Counter;
  readonly connectionsRefused: PromClient.Counter<'reason'>;
  readonly messagesAccepted: PromClient.Counter;
  readonly rejects: PromClient.Counter<'stage' | 'code' | 'plugin'>;
  readonly authSuccesses: PromClient.Counter;
  readonly authFailures: PromClient.Counter<'reason'>;
  readonly tlsConnections: PromClient.Counter<'protocol' | 'cipher'>;
  readonly configReloads: PromClient.Counter<'result'>;
  readonly deliveryAttempts: PromClient.Counter<'outcome'>;
  readonly deliveryDelay: PromClient.Histogram<'stage'>;
  readonly bounces: PromClient.Counter;
  readonly refusals = new RefusalLog();

  constructor(sources: MetricSources) {
    const { registry } = this;
    const counter = <L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): PromClient.Counter<L> =>
      new (prom().Counter<L>)({ name: `${METRIC_PREFIX}${name}`, help, labelNames, registers: [registry] });
    this.connects = counter('smtpd_connects_total', 'SMTP connections opened.');
    this.disconnects = counter('smtpd_disconnects_total', 'SMTP connections closed.');
    this.connectionsRefused = counter('smtpd_connections_refused_total', 'SMTP connections refused or cut, by reason (plugin, max_clients_per_ip, command_timeout, data_timeout, min_data_rate).', ['reason']);
    this.messagesAccepted = counter('smtpd_messages_accepted_total', 'Messages answered 250 at the end of DATA (stored, quarantined or discarded as a plugin asked).');
    this.rejects = counter('smtpd_messages_rejected_total', 'Refusals of a client, its commands or its message: by stage (the hook, or policy/headers/auth), SMTP code and the plugin that refused ("" for the host).', ['stage', 'code', 'plugin']);
    this.authSuccesses = counter('smtpd_sasl_authentication_successes_total', 'Logins approved.');
    this.authFailures = counter('smtpd_sasl_authentication_failures_total', 'Logins refused, by reason (a plugin verdict, error, or no authentication plugin).', ['reason']);
    this.tlsConnections = counter('smtpd_tls_connections_total', 'STARTTLS handshakes completed, by protocol and cipher.', ['protocol', 'cipher']);
    this.configReloads = counter('config_reloads_total', 'Config reloads (SIGHUP, file change, admin API), by result (ok, failed).', ['result']);
    this.deliveryAttempts = counter('delivery_attempts_total', 'Delivery attempts, by outcome (delivered, deferred, bounced, failed: the spool bookkeeping failed).', ['outcome']);
    this.bounces = counter('delivery_bounces_total', 'Messages given up and moved to the bounced folder.');
    this.deliveryDelay = new (prom().Histogram<'stage'>)({
      name: `${METRIC_PREFIX}delivery_delay_seconds`,
      help: 'Delivery delay by stage: queue (from receipt to the start of the attempt that delivered), transmission (that attempt).',
      labelNames: ['stage'],
      buckets: DELIVERY_DELAY_BUCKETS_S,
      registers: [registry],
    });
    prom().collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
    for (const metric of this.#pluginMetrics(sources)) registry.registerMetric(metric as never);
    for (const metric of this.#queueMetrics(sources)) registry.registerMetric(metric as never);
  }

  /** The text /metrics answers. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** A client, command or message was refused: counted, and kept for the status page. */
  refused(stage: string, reply: { readonly code: number; readonly text: string }, plugin: string | undefined): void {
    this.rejects.inc({ stage, code: reply.code, plugin: plugin ?? '' });
    this.refusals.add(plugin, stage, reply.code, reply.text);
  }

  /** A delivery attempt ended (DeliveryQueue's observer). */
  attempted(outcome: 'delivered' | 'deferred' | 'bounced' | 'failed', queuedSeconds: number, attemptSeconds: number): void {
    this.deliveryAttempts.inc({ outcome });
    if (outcome === 'bounced') this.bounces.inc();
    if (outcome !== 'delivered') return;
    this.deliveryDelay.observe({ stage: 'queue' }, queuedSeconds);
    this.deliveryDelay.observe({ stage: 'transmission' }, attemptSeconds);
  }

  #pluginMetrics(sources: MetricSources): ScrapedMetric[] {
    const { calls } = this;
    const name = (suffix: string): string => `${METRIC_PREFIX}plugin_${suffix}`;
    const perPlugin = (count: (codes: ReadonlyMap<string, number>) => number) => (): Sample[] => {
      const totals = new Map<string, number>();
      for (const stats of calls.all()) totals.set(stats.plugin, (totals.get(stats.plugin) ?? 0) + count(stats.errors));
      return [...totals].map(([plugin, value]) => ({ labels: { plugin }, value }));
    };
    const countOf = (codes: ReadonlySet<string>) => (errors: ReadonlyMap<string, number>): number => {
      let total = 0;
      for (const [code, count] of errors) if (codes.has(code)) total += count;
      return total;
    };
    return [
      new ScrapedMetric(name('up'), 'A loaded plugin: 1 when enabled, else 0; its mode (native, isolated, sandboxed, component, milter) and version as labels.', 'gauge', () =>
        sources.plugins().map((instance) => ({ labels: { plugin: instance.name, mode: pluginMode(instance.plugin), version: instance.plugin.metadata.version }, value: instance.state === 'enabled' ? 1 : 0 })),
      ),
      new ScrapedMetric(name('calls_total'), 'Plugin calls that answered, by plugin, hook and verdict (continue, stop, cancel).', 'counter', () => {
        const samples: Sample[] = [];
        for (const stats of calls.all()) {
          VERDICTS.forEach((verdict, index) => {
            const value = stats.verdicts[index]!;
            if (value > 0) samples.push({ labels: { plugin: stats.plugin, hook: stats.hook, verdict }, value });
          });
        }
        return samples;
      }),
      new ScrapedMetric(name('errors_total'), 'Plugin calls that failed, by plugin, hook and error code (docs/errors.md).', 'counter', () => {
        const samples: Sample[] = [];
        for (const stats of calls.all()) for (const [code, value] of stats.errors) samples.push({ labels: { plugin: stats.plugin, hook: stats.hook, code }, value });
        return samples;
      }),
      new ScrapedMetric(name('call_duration_seconds'), 'Plugin call latency as the server pays it (backend hand-off included), by plugin and hook.', 'histogram', () => {
        const samples: Sample[] = [];
        for (const stats of calls.all()) {
          const labels = { plugin: stats.plugin, hook: stats.hook };
          let cumulative = 0;
          CALL_LATENCY_BUCKETS_S.forEach((bound, index) => {
            cumulative += stats.buckets[index]!;
            samples.push({ metricName: `${name('call_duration_seconds')}_bucket`, labels: { ...labels, le: bound }, value: cumulative });
          });
          samples.push({ metricName: `${name('call_duration_seconds')}_bucket`, labels: { ...labels, le: '+Inf' }, value: stats.count });
          samples.push({ metricName: `${name('call_duration_seconds')}_sum`, labels, value: stats.seconds });
          samples.push({ metricName: `${name('call_duration_seconds')}_count`, labels, value: stats.count });
        }
        return samples;
      }),
      new ScrapedMetric(name('deadline_exceeded_total'), 'Plugin calls stopped at their deadline (hook_timeout_ms), by plugin.', 'counter', perPlugin(countOf(DEADLINE_CODES))),
      new ScrapedMetric(name('crashes_total'), 'Plugin traps (sandboxed) and process deaths (isolated), by plugin.', 'counter', perPlugin(countOf(CRASH_CODES))),
      new ScrapedMetric(name('restarts_total'), "Restarts of a plugin's process, sandbox worker or instance after a crash, trap or deadline, since its current build was loaded.", 'counter', () =>
        sources.plugins().flatMap((instance) => {
          const runtime = instance.plugin.runtimeStats?.();
          return runtime === undefined ? [] : [{ labels: { plugin: instance.name }, value: runtime.restarts }];
        }),
      ),
      new ScrapedMetric(name('disables_total'), 'Plugins disabled, by plugin and reason (failures: max_consecutive_failures; admin; dependency: taken down with a plugin it depends on).', 'counter', () => {
        const samples: Sample[] = [];
        for (const [plugin, counts] of calls.disables()) for (const reason of DISABLE_REASONS) if (counts[reason] > 0) samples.push({ labels: { plugin, reason }, value: counts[reason] });
        return samples;
      }),
      new ScrapedMetric(name('sandbox_memory_bytes'), 'Linear memory of a sandboxed plugin running in the server thread, by plugin.', 'gauge', () =>
        sources.plugins().flatMap((instance) => {
          const bytes = instance.plugin.runtimeStats?.().memoryBytes;
          return bytes === undefined || bytes === null ? [] : [{ labels: { plugin: instance.name }, value: bytes }];
        }),
      ),
    ];
  }

  #queueMetrics(sources: MetricSources): ScrapedMetric[] {
    const states = ['ready', 'delivering', 'deferred', 'held'] as const;
    return [
      new ScrapedMetric(`${METRIC_PREFIX}queue_messages`, 'Messages in the spool waiting for delivery, by state (ready, delivering, deferred, held).', 'gauge', () => {
        const summary = sources.queue();
        return summary === null ? [] : states.map((state) => ({ labels: { state }, value: summary[state] }));
      }),
      new ScrapedMetric(`${METRIC_PREFIX}queue_oldest_message_age_seconds`, 'Age of the oldest message in the spool (0 when it is empty).', 'gauge', () => {
        const summary = sources.queue();
        if (summary === null) return [];
        return [{ value: summary.oldestReceivedAt === null ? 0 : Math.max(0, (Date.now() - Date.parse(summary.oldestReceivedAt)) / 1000) }];
      }),
    ];
  }
}
