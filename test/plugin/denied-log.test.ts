import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { DENIED_LOG_INTERVAL_MS, deniedConnectLogger, deniedCountersLogger } from '../../src/plugin/denied-log.js';

describe('the log of refused connections', () => {
  it('logs each address at once, then at most once a minute with the count, so a plugin cannot flood the log', () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    let now = 1_000_000;
    const log = deniedConnectLogger(logger, 'refused', () => now);
    for (let i = 0; i < 500; i++) log('tcp:127.0.0.1:6379');
    log('unix:/run/other.sock');
    expect(lines.map((line) => [line.code, line.address])).toEqual([
      ['SMTP_E_NET_DENIED', 'tcp:127.0.0.1:6379'],
      ['SMTP_E_NET_DENIED', 'unix:/run/other.sock'],
    ]);
    now += DENIED_LOG_INTERVAL_MS;
    log('tcp:127.0.0.1:6379');
    expect(lines).toHaveLength(3);
    // 499 refusals went unlogged after the first, and this one is the 500th since.
    expect(lines[2]).toMatchObject({ address: 'tcp:127.0.0.1:6379', refused_since_last_log: 500 });
  });

  it('logs refused counter calls (no allow_counters) the same way: once, then once a minute with the count', () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    let now = 1_000_000;
    const log = deniedCountersLogger(logger, 'refused', () => now);
    for (let i = 0; i < 100; i++) log();
    expect(lines).toEqual([expect.objectContaining({ code: 'SMTP_E_COUNTER_DENIED', msg: 'refused' })]);
    now += DENIED_LOG_INTERVAL_MS;
    log();
    expect(lines[1]).toMatchObject({ code: 'SMTP_E_COUNTER_DENIED', refused_since_last_log: 100 });
  });
});
