import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { runClient, freePort, python, serverRoot, startServerProcess, waitFor, type ServerProcess } from '../helpers/server.js';
import { startSmarthost, type Smarthost } from '../helpers/smarthost.js';

const TOKEN = 'admin-test-token-0123456789';
const RATE_LIMIT = 3;
/** Six of the spam filter's default keywords: a score of 6, over its threshold of 5. */
const SPAM_TEXT = 'Congratulations, winner! Free money at our casino: click here, act now.';

/** Sends one message per line of `mails` (sender|subject|body) with smtplib; prints "sent" or "refused CODE" for each. */
const SEND = (port: number, mails: readonly { from: string; subject: string; body: string }[]): string => `
import smtplib
mails = ${JSON.stringify(mails)}
for m in mails:
    s = smtplib.SMTP('127.0.0.1', ${port}, timeout=10)
    try:
        s.sendmail(m['from'], ['box@example.org'], 'From: ' + m['from'] + '\\r\\nTo: box@example.org\\r\\nSubject: ' + m['subject'] + '\\r\\n\\r\\n' + m['body'] + '\\r\\n')
        print('sent', m['subject'], flush=True)
    except smtplib.SMTPSenderRefused as e:
        print('refused', e.smtp_code, m['subject'], flush=True)
    except smtplib.SMTPDataError as e:
        print('refused', e.smtp_code, m['subject'], flush=True)
    finally:
        try:
            s.quit()
        except Exception:
            pass
`;

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** Prometheus text format, the lines with a value. */
function parseMetrics(text: string): Sample[] {
  return text
    .split('\n')
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      if (match === null) throw new Error(`not a metric line: ${line}`);
      const labels: Record<string, string> = {};
      for (const pair of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]!] = pair[2]!;
      return { name: match[1]!, labels, value: Number(match[3]) };
    });
}

/** The sum of the samples named `name` whose labels include `labels`. */
function value(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((sum, s) => sum + s.value, 0);
}

describe('the admin listener of a running server', () => {
  let server: ServerProcess;
  let adminUrl: string;
  let smtpPort: number;
  let relayPort: number;
  let smarthost: Smarthost | undefined;

  const scrape = async (): Promise<Sample[]> => {
    const response = await fetch(`${adminUrl}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    return parseMetrics(await response.text());
  };
  const api = async (method: 'GET' | 'POST', path: string, options: { token?: string; body?: unknown } = {}): Promise<{ status: number; body: Record<string, unknown> }> => {
    const response = await fetch(`${adminUrl}${path}`, {
      method,
      headers: { ...(options.token === undefined ? {} : { authorization: `Bearer ${options.token}` }), 'content-type': 'application/json' },
      ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  const cli = (args: string[]) =>
    runClient('sh', ['-c', `SMTP_ADMIN_TOKEN=${TOKEN} exec "${process.execPath}" "${join(PROJECT_ROOT, 'bin', 'smtp-server.js')}" ${args.map((a) => `'${a}'`).join(' ')} --admin ${adminUrl}`], 60_000);

  beforeAll(async () => {
    smtpPort = await freePort();
    const adminPort = await freePort();
    relayPort = await freePort();
    const root = serverRoot({
      // Down until the queue test brings it up; no retry on its own during the test: only a flush delivers.
      delivery: `mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = ${relayPort}\nretry_initial_ms = 600000\nretry_max_ms = 600000\n`,
      policy: 'local_domains = ["example.org"]\n',
      plugins:
        '[plugins]\nenabled = true\ndirectory = "./plugins"\n\n' +
        '[[plugins.plugin]]\nname = "spam-filter"\nlibrary = "libspam_filter.so"\nconfig = \'{"spam_threshold":5.0}\'\n\n' +
        `[[plugins.plugin]]\nname = "rate-limiter"\nlibrary = "librate_limiter.so"\nconfig = '{"backend":"memory","max_per_sender_domain":${RATE_LIMIT},"window_seconds":3600}'\n`,
      admin: `listen = "127.0.0.1:${adminPort}"\ntoken = "${TOKEN}"\n`,
    });
    for (const library of ['libspam_filter.so', 'librate_limiter.so']) copyFileSync(join(PROJECT_ROOT, 'plugins', library), join(root.dir, 'plugins', library));
    server = await startServerProcess(['--config', root.config], smtpPort);
    adminUrl = `http://127.0.0.1:${adminPort}`;
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
    await smarthost?.close();
  });

  it('counts each plugin verdict, refusal and latency as smtplib sends clean, spam and over-limit mail', async () => {
    const clean = Array.from({ length: RATE_LIMIT }, (_, i) => ({ from: 'alice@clean.example', subject: `clean-${i}`, body: 'Lunch on Friday?' }));
    const overLimit = [1, 2].map((i) => ({ from: 'alice@clean.example', subject: `over-${i}`, body: 'One more thing.' }));
    const spam = [1, 2].map((i) => ({ from: `promo@spam${i}.example`, subject: `spam-${i}`, body: SPAM_TEXT }));
    const run = await python(SEND(smtpPort, [...clean, ...overLimit, ...spam]));
    const lines = run.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('sent'))).toHaveLength(RATE_LIMIT);
    expect(lines.filter((l) => l.startsWith('refused 451 over-'))).toHaveLength(2);
    expect(lines.filter((l) => l.startsWith('refused 554 spam-'))).toHaveLength(2);

    const samples = await scrape();
    // The rate limiter answered every MAIL (and RCPT) and cancelled the two over the limit.
    expect(value(samples, 'smtphost_plugin_calls_total', { plugin: 'rate-limiter', hook: 'command_validated', verdict: 'cancel' })).toBe(2);
    expect(value(samples, 'smtphost_plugin_calls_total', { plugin: 'rate-limiter', hook: 'command_validated' })).toBeGreaterThanOrEqual(RATE_LIMIT + 2 + 2);
    // The spam filter saw the 5 messages that got past MAIL, and refused the 2 spam.
    expect(value(samples, 'smtphost_plugin_calls_total', { plugin: 'spam-filter', hook: 'message_filtered', verdict: 'continue' })).toBe(RATE_LIMIT);
    expect(value(samples, 'smtphost_plugin_calls_total', { plugin: 'spam-filter', hook: 'message_filtered', verdict: 'cancel' }) + value(samples, 'smtphost_plugin_calls_total', { plugin: 'spam-filter', hook: 'message_filtered', verdict: 'stop' })).toBe(2);
    expect(value(samples, 'smtphost_plugin_call_duration_seconds_count', { plugin: 'spam-filter', hook: 'message_filtered' })).toBe(RATE_LIMIT + 2);
    expect(value(samples, 'smtphost_plugin_call_duration_seconds_bucket', { plugin: 'spam-filter', hook: 'message_filtered', le: '+Inf' })).toBe(RATE_LIMIT + 2);
    expect(value(samples, 'smtphost_plugin_call_duration_seconds_sum', { plugin: 'spam-filter', hook: 'message_filtered' })).toBeGreaterThan(0);
    expect(value(samples, 'smtphost_plugin_errors_total')).toBe(0);
    // What the clients were told, by code and by the plugin that refused.
    expect(value(samples, 'smtphost_smtpd_messages_accepted_total')).toBe(RATE_LIMIT);
    expect(value(samples, 'smtphost_smtpd_messages_rejected_total', { stage: 'message_filtered', code: '554', plugin: 'spam-filter' })).toBe(2);
    expect(value(samples, 'smtphost_smtpd_messages_rejected_total', { stage: 'command_validated', code: '451', plugin: 'rate-limiter' })).toBe(2);
    expect(value(samples, 'smtphost_smtpd_connects_total')).toBe(RATE_LIMIT + 4);
    expect(value(samples, 'smtphost_plugin_up', { plugin: 'spam-filter', mode: 'native' })).toBe(1);
    // The relay is down: the accepted messages wait in the queue.
    expect(value(samples, 'smtphost_queue_messages')).toBe(RATE_LIMIT);
    expect(value(samples, 'smtphost_queue_oldest_message_age_seconds')).toBeGreaterThan(0);
    expect(value(samples, 'smtphost_process_cpu_seconds_total')).toBeGreaterThan(0);
  }, 60_000);

  it('disabling a plugin through the API stops its calls and enabling brings them back; without the token: 401', async () => {
    const spamCalls = async (): Promise<number> => value(await scrape(), 'smtphost_plugin_calls_total', { plugin: 'spam-filter' });
    const unauthorized = await api('POST', '/api/plugins/spam-filter/disable');
    expect(unauthorized.status).toBe(401);
    expect(unauthorized.body).toMatchObject({ error: { code: 'SMTP_E_ADMIN_AUTH' } });
    expect((await api('POST', '/api/plugins/spam-filter/disable', { token: 'wrong-token-0123456789' })).status).toBe(401);
    expect((await api('GET', '/api/config')).status).toBe(401);

    const before = await spamCalls();
    const disabled = await api('POST', '/api/plugins/spam-filter/disable', { token: TOKEN });
    expect(disabled).toMatchObject({ status: 200, body: { disabled: ['spam-filter'] } });
    const listed = await api('GET', '/api/plugins');
    expect((listed.body.plugins as { name: string; state: string }[]).find((p) => p.name === 'spam-filter')).toMatchObject({ state: 'disabled', mode: 'native' });
    // With the filter off, spam is accepted and the filter's counter does not move.
    const whileOff = await python(SEND(smtpPort, [{ from: 'promo@spam3.example', subject: 'spam-while-off', body: SPAM_TEXT }]));
    expect(whileOff.stdout.trim()).toBe('sent spam-while-off');
    expect(await spamCalls()).toBe(before);
    expect(value(await scrape(), 'smtphost_plugin_up', { plugin: 'spam-filter' })).toBe(0);
    expect(value(await scrape(), 'smtphost_plugin_disables_total', { plugin: 'spam-filter', reason: 'admin' })).toBe(1);

    expect(await api('POST', '/api/plugins/spam-filter/enable', { token: TOKEN })).toMatchObject({ status: 200, body: { state: 'enabled' } });
    const whileOn = await python(SEND(smtpPort, [{ from: 'promo@spam4.example', subject: 'spam-while-on', body: SPAM_TEXT }]));
    expect(whileOn.stdout.trim()).toBe('refused 554 spam-while-on');
    expect(await spamCalls()).toBe(before + 1);
    // The API refuses what it does not know, with a code.
    expect(await api('POST', '/api/plugins/nope/disable', { token: TOKEN })).toMatchObject({ status: 404, body: { error: { code: 'SMTP_E_PLUGIN_UNKNOWN' } } });
    expect(await api('POST', '/api/queue/delete', { token: TOKEN, body: {} })).toMatchObject({ status: 400, body: { error: { code: 'SMTP_E_ADMIN_REQUEST' } } });
  }, 60_000);

  it('lists the queue with its last error, deletes one for good, and flush delivers the rest once the relay is up', async () => {
    const listed = await cli(['queue', 'list']);
    expect(listed.status, listed.stderr).toBe(0);
    // 3 clean messages and the spam accepted while the filter was off.
    expect(listed.stdout).toMatch(/-- 4 messages/);
    expect(listed.stdout).toMatch(/ECONNREFUSED/);
    const json = await cli(['queue', 'list', '--json']);
    const entries = (JSON.parse(json.stdout) as { entries: { id: string; sender: string; state: string; last_error: string | null }[] }).entries;
    expect(entries).toHaveLength(4);
    for (const entry of entries) expect(entry).toMatchObject({ state: 'deferred', last_error: expect.stringMatching(/ECONNREFUSED/) });
    const doomed = entries.find((entry) => entry.sender === 'promo@spam3.example')!;
    expect(doomed).toBeDefined();

    const deleted = await cli(['queue', 'delete', doomed.id]);
    expect(deleted.status, deleted.stderr).toBe(0);
    expect(deleted.stdout).toContain(`${doomed.id}: deleted`);
    expect((await cli(['queue', 'list'])).stdout).toMatch(/-- 3 messages/);

    smarthost = await startSmarthost(relayPort);
    const flushed = await cli(['queue', 'flush', '--all']);
    expect(flushed.status, flushed.stderr).toBe(0);
    expect(flushed.stdout).toMatch(/3 messages flushed/);
    await waitFor(() => smarthost!.transactions.length >= 3, 'the three clean messages at the relay', 20_000);
    let depth = -1;
    for (let round = 0; round < 100 && depth !== 0; round++) {
      depth = ((await api('GET', '/api/queue')).body.total as number);
      if (depth !== 0) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const empty = await cli(['queue', 'list']);
    expect(empty.stdout).toContain('Mail queue is empty');
    // The deleted message is never delivered.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const subjects = smarthost.transactions.map((t) => /Subject: (\S+)/.exec(t.data.toString('latin1'))?.[1]);
    expect(subjects.sort()).toEqual(['clean-0', 'clean-1', 'clean-2']);
    const samples = await scrape();
    expect(value(samples, 'smtphost_delivery_attempts_total', { outcome: 'delivered' })).toBe(3);
    expect(value(samples, 'smtphost_delivery_delay_seconds_count', { stage: 'queue' })).toBe(3);
    expect(value(samples, 'smtphost_queue_messages')).toBe(0);
  }, 60_000);

  it('shows and validates the config with the token, never the token itself, and the CLI lists plugins', async () => {
    const shown = await api('GET', '/api/config', { token: TOKEN });
    expect(shown.status).toBe(200);
    expect(JSON.stringify(shown.body)).not.toContain(TOKEN);
    expect(shown.body).toMatchObject({ config: { admin: { token: '(set)' } } });
    expect(await api('POST', '/api/config/validate', { token: TOKEN })).toMatchObject({ status: 200, body: { valid: true, plugins: ['spam-filter', 'rate-limiter'] } });
    const bad = await fetch(`${adminUrl}/api/config/validate`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: '[server]\nport = "x"\n' });
    expect(bad.status).toBe(422);
    expect(await bad.json()).toMatchObject({ error: { code: 'SMTP_E_CONFIG', message: expect.stringContaining('server.port') } });

    // A reload through the API is SIGHUP's: nothing changed on disk, so no plugin changes; it is counted.
    expect(await api('POST', '/api/config/reload', { token: TOKEN })).toMatchObject({ status: 200, body: { reloaded: true, changed_plugins: [] } });
    expect(value(await scrape(), 'smtphost_config_reloads_total', { result: 'ok' })).toBe(1);

    const plugins = await cli(['plugins', 'list']);
    expect(plugins.status, plugins.stderr).toBe(0);
    expect(plugins.stdout).toMatch(/spam-filter\s+\S+\s+native\s+enabled/);
    expect(plugins.stdout).toMatch(/rate-limiter\s+\S+\s+native\s+enabled/);
    const refused = await runClient(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), 'plugins', 'disable', 'spam-filter', '--admin', adminUrl]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain('SMTP_E_ADMIN_AUTH');
  }, 60_000);
});
