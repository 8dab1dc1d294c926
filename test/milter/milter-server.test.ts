import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { parseMilterAddress } from '../../src/milter/address.js';
import { MilterClientSession } from '../../src/milter/client-session.js';
import { MilterServer } from '../../src/milter/milter-server.js';
import { SMFIA_INET, SMFIR_QUARANTINE } from '../../src/milter/protocol.js';
import { HookRunner } from '../../src/server/hook-runner.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';
import { freePort, serverRoot } from '../helpers/server.js';

/**
 * The plugin chain served as a milter (`smtp-server milter`), driven here by
 * this project's own milter client as the MTA; the same against Postfix is
 * in test/integration/milter_postfix.test.ts.
 */
const SPAM = 'Congratulations WINNER! casino: click here for free money, act now';
const CONNECT = { hostname: Buffer.from('client.example.test'), family: SMFIA_INET, port: 40_000, address: Buffer.from('192.0.2.7') } as const;

function message(text: string): Buffer {
  return Buffer.from(`From: a@example.test\r\nTo: b@example.test\r\nSubject: hello\r\n\r\n${text}\r\n`);
}

interface Chain {
  readonly address: string;
  stop(): Promise<void>;
}

/** The spam filter alone in the chain, `build` with `config`, served as a milter on a free port. */
async function servedChain(build: 'native' | 'sandboxed', config: Record<string, unknown>): Promise<Chain> {
  const entry = build === 'native' ? 'library = "libspam_filter.so"' : 'wasm = "spam_filter.wasm"';
  const root = serverRoot({
    plugins: `[plugins]\nenabled = true\ndirectory = "./plugins"\nwasm_directory = "./plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\n${entry}\nconfig = '${JSON.stringify(config)}'\n`,
  });
  copyFileSync(fixture('spam_filter'), join(root.dir, 'plugins', 'libspam_filter.so'));
  copyFileSync(wasmFixture('spam_filter'), join(root.dir, 'plugins', 'spam_filter.wasm'));
  const loaded = loadConfig(root.config);
  const logger = pino({ level: 'silent' });
  const manager = new PluginManager({ directory: loaded.plugins.directory, wasmDirectory: loaded.plugins.wasmDirectory, logger });
  const { failed } = await manager.loadFromConfig(loaded.plugins);
  expect(failed).toEqual([]);
  const address = `inet:127.0.0.1:${await freePort()}`;
  const server = new MilterServer({ listen: parseMilterAddress(address), hooks: new HookRunner(manager, logger), logger, maxMessageBytes: 1024 * 1024 });
  expect(await server.start()).toBe(address);
  return {
    address,
    async stop() {
      await server.stop();
      await manager.deinit();
    },
  };
}

/** A milter session through DATA, as an MTA opens one. */
async function session(address: string): Promise<MilterClientSession> {
  const milter = await MilterClientSession.open({ address: parseMilterAddress(address), commandTimeoutMs: 5_000 });
  expect(await milter.connect(CONNECT)).toEqual({ kind: 'continue' });
  expect(await milter.helo('client.example.test')).toEqual({ kind: 'continue' });
  expect(await milter.mail('a@example.test')).toEqual({ kind: 'continue' });
  expect(await milter.rcpt('b@example.test')).toEqual({ kind: 'continue' });
  expect(await milter.data()).toEqual({ kind: 'continue' });
  return milter;
}

for (const build of ['native', 'sandboxed'] as const) {
  describe(`the ${build} spam filter served as a milter`, () => {
    const chains: Chain[] = [];

    afterAll(async () => {
      for (const chain of chains.splice(0)) await chain.stop();
    });

    it('rejects spam at end of message with the plugin\'s reply, and lets clean mail through, on one connection', async () => {
      const chain = await servedChain(build, { spam_threshold: 5.0 });
      chains.push(chain);
      const milter = await session(chain.address);
      const spam = await milter.message(message(SPAM));
      expect(spam.verdict).toMatchObject({ kind: 'reject', reply: expect.stringMatching(/^554 5\.7\.1 /) });
      expect(await milter.mail('a@example.test')).toEqual({ kind: 'continue' });
      expect(await milter.rcpt('b@example.test')).toEqual({ kind: 'continue' });
      expect(await milter.message(message('a clean message'))).toEqual({ verdict: { kind: 'continue' }, modifications: [] });
      milter.close();
    });

    it('turns a plugin\'s quarantine into the milter quarantine action', async () => {
      const chain = await servedChain(build, { spam_threshold: 2.0, quarantine: true });
      chains.push(chain);
      const milter = await session(chain.address);
      const held = await milter.message(message(SPAM));
      milter.close();
      expect(held.verdict.kind).toBe('continue');
      expect(held.modifications.map((each) => each.command)).toEqual([SMFIR_QUARANTINE]);
    });
  });
}
