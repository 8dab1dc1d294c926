import { appendFileSync, copyFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { silentLogger } from '../../src/log.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture } from '../helpers/fixtures.js';
import { serverRoot } from '../helpers/server.js';

const SPAM = 'Congratulations WINNER! casino: click here for free money, act now';

interface OtlpSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly attributes: { key: string; value: { stringValue?: string; intValue?: string | number } }[];
  readonly status?: { code?: number };
}

/** An OTLP/HTTP receiver on loopback: what the exporter POSTs to /v1/traces, as spans. */
async function otlpReceiver(): Promise<{ server: Server; url: string; spans: OtlpSpan[]; service: string[] }> {
  const spans: OtlpSpan[] = [];
  const service: string[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { resourceSpans: { resource: { attributes: OtlpSpan['attributes'] }; scopeSpans: { spans: OtlpSpan[] }[] }[] };
      for (const resource of body.resourceSpans) {
        service.push(...resource.resource.attributes.filter((a) => a.key === 'service.name').map((a) => a.value.stringValue!));
        for (const scope of resource.scopeSpans) spans.push(...scope.spans);
      }
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, spans, service };
}

const attribute = (span: OtlpSpan, key: string): string | undefined => {
  const value = span.attributes.find((a) => a.key === key)?.value;
  return value === undefined ? undefined : String(value.stringValue ?? value.intValue);
};

describe('OpenTelemetry traces', () => {
  let receiver: Awaited<ReturnType<typeof otlpReceiver>> | undefined;
  afterAll(() => receiver?.server.close());

  it('sends a span per session and message, with a child per plugin call carrying its verdict', async () => {
    receiver = await otlpReceiver();
    const root = serverRoot({
      plugins: '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libspam_filter.so"\n',
    });
    copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
    appendFileSync(root.config, `\n[tracing]\notlp_endpoint = "${receiver.url}"\nservice_name = "mx-under-test"\n`);
    const server = new MailServer(loadConfig(root.config), silentLogger());
    const port = await server.start();
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
    try {
      await transport.sendMail({ from: 'bob@example.com', to: 'carol@example.org', subject: 'clean', text: 'lunch?' });
      await expect(transport.sendMail({ from: 'spammer@example.net', to: 'carol@example.org', text: SPAM })).rejects.toMatchObject({ responseCode: 554 });
    } finally {
      transport.close();
      // stop() ends every open span and sends what is queued.
      await server.stop();
    }
    const { spans } = receiver;
    expect(receiver.service).toContain('mx-under-test');
    const messages = spans.filter((s) => s.name === 'smtp.message');
    expect(messages.map((m) => attribute(m, 'smtp.mail_from')).sort()).toEqual(['bob@example.com', 'spammer@example.net']);
    const clean = messages.find((m) => attribute(m, 'smtp.mail_from') === 'bob@example.com')!;
    const spam = messages.find((m) => attribute(m, 'smtp.mail_from') === 'spammer@example.net')!;
    expect(attribute(clean, 'smtp.reply.code')).toBe('250');
    expect(attribute(spam, 'smtp.reply.code')).toBe('554');
    expect(spam.status?.code).toBe(2);
    // Each message sits under its session span, whose client is this machine.
    for (const message of [clean, spam]) {
      const session = spans.find((s) => s.spanId === message.parentSpanId)!;
      expect(session).toMatchObject({ name: 'smtp.session', traceId: message.traceId });
      expect(attribute(session, 'client.address')).toMatch(/127\.0\.0\.1/);
    }
    // The spam filter's calls are children of the messages, with their verdicts.
    const calls = spans.filter((s) => s.name === 'smtp.plugin message_filtered');
    const verdictUnder = (message: OtlpSpan) => calls.filter((c) => c.parentSpanId === message.spanId).map((c) => [attribute(c, 'smtp.plugin.name'), attribute(c, 'smtp.plugin.mode'), attribute(c, 'smtp.plugin.verdict')]);
    expect(verdictUnder(clean)).toEqual([['spam-filter', 'native', 'continue']]);
    expect(verdictUnder(spam)).toEqual([['spam-filter', 'native', 'stop']]);
  }, 60_000);

  it('refuses an endpoint that is not an http(s) URL', () => {
    const root = serverRoot();
    appendFileSync(root.config, '\n[tracing]\notlp_endpoint = "127.0.0.1:4318"\n');
    expect(() => loadConfig(root.config)).toThrow(/tracing\.otlp_endpoint: expected an http:\/\/ or https:\/\/ URL/);
  });
});
