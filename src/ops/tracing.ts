import type * as OtelApi from '@opentelemetry/api';
import type { Span, Tracer } from '@opentelemetry/api';
import type * as OtelExporter from '@opentelemetry/exporter-trace-otlp-http';
import type * as OtelResources from '@opentelemetry/resources';
import type * as OtelSdk from '@opentelemetry/sdk-trace';
import type { TracingConfig } from '../config/config.js';
import type { HookAction } from '../plugin/lifecycle.js';
import type { HookContext } from '../plugin/hook-context.js';
import type { PluginInstance } from '../plugin/lifecycle.js';
import { SERVER_VERSION } from '../version.js';
import { optionalPackage } from '../optional-package.js';
import { pluginMode } from './plugin-mode.js';

interface Otel {
  readonly api: typeof OtelApi;
  readonly exporter: typeof OtelExporter;
  readonly resources: typeof OtelResources;
  readonly sdk: typeof OtelSdk;
}

/** OpenTelemetry, loaded with the first Tracing: without [tracing] the server never loads it. */
function otel(): Otel {
  return {
    api: optionalPackage<typeof OtelApi>('@opentelemetry/api'),
    exporter: optionalPackage<typeof OtelExporter>('@opentelemetry/exporter-trace-otlp-http'),
    resources: optionalPackage<typeof OtelResources>('@opentelemetry/resources'),
    sdk: optionalPackage<typeof OtelSdk>('@opentelemetry/sdk-trace'),
  };
}

/** Spans are sent in batches at most this often (ms) or when this many wait. */
const EXPORT_DELAY_MS = 2000;
const EXPORT_BATCH_SPANS_MAX = 512;
/** Spans waiting for export at most: past it, new ones are dropped rather than held in memory. */
const EXPORT_QUEUE_SPANS_MAX = 8192;
/** One export request may take this long. */
const EXPORT_TIMEOUT_MS = 10_000;
/** Sessions traced at once at most: a flood of connections must not grow the map without bound. */
const OPEN_SESSIONS_MAX = 100_000;

/** What the tracing needs to know of an SMTP session (smtp-server's session object). */
interface SessionLike {
  readonly id: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
}

interface OpenSession {
  readonly span: Span;
  message: Span | null;
}

/** A plugin call's span, ended with the call's verdict. */
export interface CallSpan {
  end(verdict: HookAction | 'error', errorCode?: string): void;
}

/**
 * OpenTelemetry traces, off unless [tracing] names an OTLP endpoint: a span
 * per SMTP session, a child per message (DATA), and under it (or under the
 * session, for the hooks before DATA) a child per plugin call carrying its
 * verdict. OpenTelemetry has no semantic conventions for SMTP yet, so the
 * attributes are `smtp.*` (docs/admin-api.md lists them), beside the
 * general `client.address`, `client.port` and `error.type`.
 */
export class Tracing {
  readonly #provider: OtelSdk.TracerProvider;
  readonly #tracer: Tracer;
  readonly #sessions = new Map<string, OpenSession>();

  readonly #api: typeof OtelApi;

  constructor(config: TracingConfig) {
    const { api, exporter: { OTLPTraceExporter }, resources: { resourceFromAttributes }, sdk: { BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, TracerProvider } } = otel();
    this.#api = api;
    const exporter = new OTLPTraceExporter({ url: config.otlpEndpoint, timeoutMillis: EXPORT_TIMEOUT_MS });
    this.#provider = new TracerProvider({
      resource: resourceFromAttributes({ 'service.name': config.serviceName, 'service.version': SERVER_VERSION }),
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.samplePercent / 100) }),
      spanProcessors: [new BatchSpanProcessor({ exporter, scheduledDelayMillis: EXPORT_DELAY_MS, maxExportBatchSize: EXPORT_BATCH_SPANS_MAX, maxQueueSize: EXPORT_QUEUE_SPANS_MAX })],
    });
    this.#tracer = this.#provider.getTracer('smtp-plugin-host', SERVER_VERSION);
  }

  sessionOpened(session: SessionLike): void {
    if (this.#sessions.size >= OPEN_SESSIONS_MAX) return;
    const span = this.#tracer.startSpan('smtp.session', {
      kind: this.#api.SpanKind.SERVER,
      attributes: { 'smtp.session.id': session.id, 'client.address': session.remoteAddress, 'client.port': session.remotePort },
    });
    this.#sessions.set(session.id, { span, message: null });
  }

  /** The client was refused at connect, by a plugin or a limit. */
  sessionRefused(sessionId: string, code: number): void {
    const open = this.#sessions.get(sessionId);
    open?.span.setAttribute('smtp.reply.code', code);
    open?.span.setStatus({ code: this.#api.SpanStatusCode.ERROR, message: 'connection refused' });
  }

  sessionClosed(session: { readonly id: string; readonly hostNameAppearsAs?: string; readonly transmissionType?: string }): void {
    const open = this.#sessions.get(session.id);
    if (open === undefined) return;
    this.#sessions.delete(session.id);
    if (session.hostNameAppearsAs) open.span.setAttribute('smtp.helo', session.hostNameAppearsAs);
    if (session.transmissionType) open.span.setAttribute('smtp.transmission', session.transmissionType);
    open.message?.end();
    open.span.end();
  }

  /** DATA began: the message's span, under its session's. */
  messageStarted(session: { readonly id: string; readonly envelope: { readonly mailFrom: false | { address: string }; readonly rcptTo: readonly unknown[] } }): void {
    const open = this.#sessions.get(session.id);
    if (open === undefined) return;
    open.message?.end();
    open.message = this.#tracer.startSpan(
      'smtp.message',
      { kind: this.#api.SpanKind.INTERNAL, attributes: { 'smtp.mail_from': session.envelope.mailFrom ? session.envelope.mailFrom.address : '', 'smtp.rcpt.count': session.envelope.rcptTo.length } },
      this.#api.trace.setSpan(this.#api.ROOT_CONTEXT, open.span),
    );
  }

  /** The message was answered: 250 (with its spool id in the text) or a refusal. */
  messageEnded(sessionId: string, code: number, text: string): void {
    const open = this.#sessions.get(sessionId);
    const span = open?.message;
    if (open === undefined || span == null) return;
    open.message = null;
    span.setAttribute('smtp.reply.code', code);
    span.setAttribute('smtp.reply.text', text);
    if (code >= 400) span.setStatus({ code: this.#api.SpanStatusCode.ERROR, message: text });
    span.end();
  }

  /** A plugin call begins: its span, under the message (during DATA) or the session; a call outside any session (server hooks) gets a trace of its own. */
  callStarted(instance: PluginInstance, context: HookContext): CallSpan {
    const sessionId = context.getMetadata('session_id');
    const open = sessionId === undefined ? undefined : this.#sessions.get(sessionId);
    const parent = open?.message ?? open?.span;
    const span = this.#tracer.startSpan(
      `smtp.plugin ${context.hook}`,
      { kind: this.#api.SpanKind.INTERNAL, attributes: { 'smtp.plugin.name': instance.name, 'smtp.plugin.mode': pluginMode(instance.plugin), 'smtp.plugin.version': instance.plugin.metadata.version, 'smtp.hook': context.hook } },
      parent === undefined ? this.#api.ROOT_CONTEXT : this.#api.trace.setSpan(this.#api.ROOT_CONTEXT, parent),
    );
    const failed = this.#api.SpanStatusCode.ERROR;
    return {
      end(verdict, errorCode) {
        span.setAttribute('smtp.plugin.verdict', verdict);
        if (errorCode !== undefined) {
          span.setAttribute('error.type', errorCode);
          span.setStatus({ code: failed, message: errorCode });
        }
        span.end();
      },
    };
  }

  /** Ends what is open and sends what is queued (bounded by the export timeout). */
  async shutdown(): Promise<void> {
    for (const { span, message } of this.#sessions.values()) {
      message?.end();
      span.end();
    }
    this.#sessions.clear();
    await this.#provider.shutdown();
  }
}
