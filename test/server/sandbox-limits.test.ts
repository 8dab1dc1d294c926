import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { wasmFixture } from '../helpers/fixtures.js';
import { serverRoot } from '../helpers/server.js';

const WARNING = 'sandboxed plugin cannot take the largest messages the server accepts';

/** Starts a server with the sandboxed spam filter and `limits`; returns its log lines. */
async function startupLog(limits: string): Promise<Record<string, unknown>[]> {
  const root = serverRoot({
    server: 'max_message_bytes = 26214400\n',
    plugins: `[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./wasm-plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\nwasm = "spam_filter.wasm"\n${limits}`,
  });
  mkdirSync(join(root.dir, 'wasm-plugins'));
  copyFileSync(wasmFixture('spam_filter'), join(root.dir, 'wasm-plugins', 'spam_filter.wasm'));
  const lines: Record<string, unknown>[] = [];
  const server = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) }));
  await server.start();
  await server.stop();
  return lines;
}

describe('sandbox limits against the largest message', () => {
  it('warns at start when a sandboxed message filter cannot take a max_message_bytes message', async () => {
    const lines = await startupLog('');
    const warning = lines.find((line) => String(line.msg).startsWith(WARNING));
    expect(warning).toMatchObject({ plugin: 'spam-filter', max_message_bytes: 26214400, metadata_value_bytes_max: 16777216, memory_mb: 64, memory_mb_advised: 100 });
  });

  it('says nothing when its limits fit the largest message', async () => {
    const lines = await startupLog('[plugins.plugin.limits]\nmemory_mb = 128\nmetadata_value_bytes_max = 26214400\n');
    expect(lines.some((line) => line.msg === 'plugins loaded')).toBe(true);
    expect(lines.some((line) => String(line.msg).startsWith(WARNING))).toBe(false);
  });
});
