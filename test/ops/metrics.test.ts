import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { HOOK_NAMES } from '../../src/abi/hooks.js';
import { loadConfig } from '../../src/config/config.js';
import { silentLogger } from '../../src/log.js';
import { MailServer } from '../../src/server/mail-server.js';
import { fixture } from '../helpers/fixtures.js';
import { serverRoot } from '../helpers/server.js';
import { LatencyHistory } from '../../src/ops/latency-history.js';
import { ServerMetrics } from '../../src/ops/metrics.js';
import { PluginCallStats } from '../../src/ops/plugin-call-stats.js';

const FILTERED = HOOK_NAMES.indexOf('message_filtered');

describe('the metrics text', () => {
  it('renders each plugin hook as a cumulative histogram, and counts deadlines and crashes from the error codes', async () => {
    const metrics = new ServerMetrics({ plugins: () => [], queue: () => ({ depth: 3, oldestReceivedAt: new Date(Date.now() - 60_000).toISOString(), ready: 0, delivering: 1, deferred: 1, held: 1 }) });
    const stats = metrics.calls.of('spam-filter', FILTERED);
    stats.answered('continue', 4e-6);
    stats.answered('continue', 20e-6);
    stats.answered('stop', 3e-3);
    stats.failed('SMTP_E_WASM_DEADLINE', 0.2);
    stats.failed('SMTP_E_WASM_TRAP', 1e-5);
    metrics.calls.disabled('spam-filter', 'failures');
    metrics.refused('message_filtered', { code: 554, text: '5.7.1 spam' }, 'spam-filter');
    const text = await metrics.text();
    const line = (pattern: string): string | undefined => text.split('\n').find((l) => l.startsWith(pattern));
    expect(line('smtphost_plugin_call_duration_seconds_bucket{plugin="spam-filter",hook="message_filtered",le="0.000005"}')).toMatch(/ 1$/);
    expect(line('smtphost_plugin_call_duration_seconds_bucket{plugin="spam-filter",hook="message_filtered",le="0.000025"}')).toMatch(/ 3$/);
    expect(line('smtphost_plugin_call_duration_seconds_bucket{plugin="spam-filter",hook="message_filtered",le="0.0025"}')).toMatch(/ 3$/);
    expect(line('smtphost_plugin_call_duration_seconds_bucket{plugin="spam-filter",hook="message_filtered",le="0.005"}')).toMatch(/ 4$/);
    expect(line('smtphost_plugin_call_duration_seconds_bucket{plugin="spam-filter",hook="message_filtered",le="+Inf"}')).toMatch(/ 5$/);
    expect(line('smtphost_plugin_call_duration_seconds_count{plugin="spam-filter",hook="message_filtered"}')).toMatch(/ 5$/);
    expect(line('smtphost_plugin_calls_total{plugin="spam-filter",hook="message_filtered",verdict="continue"}')).toMatch(/ 2$/);
    expect(line('smtphost_plugin_calls_total{plugin="spam-filter",hook="message_filtered",verdict="stop"}')).toMatch(/ 1$/);
    expect(line('smtphost_plugin_errors_total{plugin="spam-filter",hook="message_filtered",code="SMTP_E_WASM_DEADLINE"}')).toMatch(/ 1$/);
    expect(line('smtphost_plugin_deadline_exceeded_total{plugin="spam-filter"}')).toMatch(/ 1$/);
    expect(line('smtphost_plugin_crashes_total{plugin="spam-filter"}')).toMatch(/ 1$/);
    expect(line('smtphost_plugin_disables_total{plugin="spam-filter",reason="failures"}')).toMatch(/ 1$/);
    expect(line('smtphost_smtpd_messages_rejected_total{stage="message_filtered",code="554",plugin="spam-filter"}')).toMatch(/ 1$/);
    expect(line('smtphost_queue_messages{state="held"}')).toMatch(/ 1$/);
    expect(Number(line('smtphost_queue_oldest_message_age_seconds')?.split(' ')[1])).toBeGreaterThanOrEqual(59);
    expect(metrics.refusals.recent()).toMatchObject([{ plugin: 'spam-filter', hook: 'message_filtered', code: 554, reason: '5.7.1 spam' }]);
    expect(metrics.refusals.byPlugin()).toEqual({ 'spam-filter': 1 });
  });
});

describe('the latency history', () => {
  it('gives each plugin\'s mean over the last minute, and null for one not called', () => {
    const calls = new PluginCallStats();
    const history = new LatencyHistory(calls, () => ['a', 'b']);
    history.start();
    try {
      calls.of('a', FILTERED).answered('continue', 10e-6);
      calls.of('a', FILTERED).answered('continue', 30e-6);
      expect(history.lastMinute()).toEqual(new Map([['a', 20], ['b', null]]));
      expect(history.points()).toEqual([]);
    } finally {
      history.stop();
    }
  });
});

describe('a process-isolated plugin in a real server, as the metrics see it', () => {
  it('counts its crash, its deadline hit, its restarts and the 451s they caused', async () => {
    const root = serverRoot({
      plugins:
        '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n' +
        '[[plugins.plugin]]\nname = "isolation-probe"\nlibrary = "libprobe.so"\nisolation = "process"\n\n' +
        '[plugins.plugin.limits]\nhook_timeout_ms = 500\n',
    });
    copyFileSync(fixture('c_isolation_probe'), join(root.dir, 'plugins', 'libprobe.so'));
    const server = new MailServer(loadConfig(root.config), silentLogger(), { withMetrics: true });
    const port = await server.start();
    const send = async (from: string): Promise<number> => {
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
      try {
        await transport.sendMail({ from, to: 'carol@example.org', text: 'hello' });
        return 250;
      } catch (error) {
        return (error as { responseCode?: number }).responseCode ?? 0;
      } finally {
        transport.close();
      }
    };
    try {
      expect(await send('segv@example.com')).toBe(451);
      expect(await send('hang@example.com')).toBe(451);
      expect(await send('fine@example.com')).toBe(250);
      const text = await server.metrics!.text();
      const value = (prefix: string): number => Number(text.split('\n').find((l) => l.startsWith(prefix))?.split(' ').pop());
      expect(value('smtphost_plugin_crashes_total{plugin="isolation-probe"}')).toBe(1);
      expect(value('smtphost_plugin_deadline_exceeded_total{plugin="isolation-probe"}')).toBe(1);
      expect(value('smtphost_plugin_restarts_total{plugin="isolation-probe"}')).toBe(2);
      expect(value('smtphost_plugin_errors_total{plugin="isolation-probe",hook="command_validated",code="SMTP_E_PLUGIN_CRASHED"}')).toBe(1);
      expect(value('smtphost_plugin_up{plugin="isolation-probe",mode="isolated"')).toBe(1);
      expect(value('smtphost_smtpd_messages_rejected_total{stage="command_validated",code="451",plugin="isolation-probe"}')).toBe(2);
      expect(value('smtphost_smtpd_messages_accepted_total')).toBe(1);
    } finally {
      await server.stop();
    }
  }, 60_000);
});
