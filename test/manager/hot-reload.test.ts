import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { MailServer } from '../../src/server/mail-server.js';
import { buildPlugin } from '../../src/toolchain/build.js';
import { FIXTURE_SOURCES } from '../helpers/fixtures.js';
import { python, serverRoot } from '../helpers/server.js';

const REBUILDS = 10;

/** Sends mail over one connection until a stop file appears; prints each reply code. */
const CLIENT = (port: number, stopFile: string) => `
import smtplib, os, time
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=20)
deadline = time.time() + 170
i = 0
while not os.path.exists('${stopFile}') and time.time() < deadline:
    try:
        s.sendmail('flow@example.com', ['flow@example.org'], f'Subject: flow {i}\\r\\n\\r\\nbody {i}\\r\\n')
        print(250, flush=True)
    except smtplib.SMTPResponseException as e:
        print(e.smtp_code, flush=True)
    i += 1
s.quit()
`;

async function reloadWhileMailFlows(target: 'native' | 'wasm'): Promise<void> {
  const root = serverRoot({
    delivery: 'mode = "none"\n',
    plugins: (dir) =>
      `[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./wasm-plugins"\nhot_reload = true\n\n[[plugins.plugin]]\nname = "reload-probe"\n` +
      (target === 'native' ? 'library = "libreload_probe.so"\n' : 'wasm = "reload_probe.wasm"\n') +
      `# root ${dir}\n`,
  });
  mkdirSync(join(root.dir, 'wasm-plugins'));
  const output = target === 'native' ? join(root.dir, 'plugins', 'libreload_probe.so') : join(root.dir, 'wasm-plugins', 'reload_probe.wasm');
  const template = readFileSync(join(FIXTURE_SOURCES, 'reload_probe.zig'), 'utf8');
  const build = async (tag: number): Promise<void> => {
    const source = join(root.dir, `reload_probe_${tag}.zig`);
    writeFileSync(source, template.replace('const build = "BUILD";', `const build = "${tag}";`));
    // Straight over the file the server loaded: the reload must cope with a build in progress.
    await buildPlugin({ source, output, target });
  };
  await build(0);
  const lines: string[] = [];
  const server = new MailServer(loadConfig(root.config), pino({ level: 'info' }, { write: (line: string) => void lines.push(line) }));
  const port = await server.start();
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  const probe = async (): Promise<string> => {
    try {
      await transport.sendMail({ from: 'probe@example.com', to: 'probe@example.org', subject: 'probe', text: 'which build?' });
      return 'accepted';
    } catch (error) {
      return String((error as { response?: string }).response);
    }
  };
  const stopFile = join(root.dir, 'stop');
  const client = python(CLIENT(port, stopFile), 180_000);
  try {
    const first = await probe();
    expect(first, lines.slice(-5).join('')).toBe('554 5.7.1 build 0');
    for (let tag = 1; tag <= REBUILDS; tag++) {
      await build(tag);
      const deadline = Date.now() + 20_000;
      let answer = await probe();
      while (answer !== `554 5.7.1 build ${tag}` && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        answer = await probe();
      }
      expect(answer, `after rebuild ${tag}`).toBe(`554 5.7.1 build ${tag}`);
    }
  } finally {
    writeFileSync(stopFile, '');
    await client;
    await server.stop();
  }
  {
    const run = await client;
    const codes = run.stdout.trim().split('\n').filter((l) => l !== '');
    // Every message got a reply, and every reply was 250: none lost, none tempfailed by a reload.
    expect(run.stderr).toBe('');
    expect(codes.length).toBeGreaterThan(REBUILDS);
    expect(codes.filter((c) => c !== '250')).toEqual([]);
    const reloads = lines.filter((l) => l.includes('"plugin hot-reloaded"'));
    expect(reloads.length).toBeGreaterThanOrEqual(REBUILDS);
    expect(existsSync(stopFile)).toBe(true);
  }
}

describe('hot reload', () => {
  it('swaps a native plugin rebuilt 10 times while mail flows, losing and tempfailing nothing', async () => {
    await reloadWhileMailFlows('native');
  }, 240_000);

  it('swaps a sandboxed plugin rebuilt 10 times while mail flows, losing and tempfailing nothing', async () => {
    await reloadWhileMailFlows('wasm');
  }, 240_000);
});
