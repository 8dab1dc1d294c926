import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { loadComponentPlugin } from '../../src/component/component-plugin.js';
import { loadConfig } from '../../src/config/config.js';
import { silentLogger } from '../../src/log.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { PluginInstance } from '../../src/plugin/lifecycle.js';
import { resolvePluginOptions } from '../../src/plugin/options.js';
import { openPlugin } from '../../src/plugin/backends.js';
import { MailServer } from '../../src/server/mail-server.js';
import { wasmFixture } from '../helpers/fixtures.js';
import { callJson, runCli } from '../helpers/cli.js';
import { serverRoot } from '../helpers/server.js';
import { expectCode } from '../helpers/expect-code.js';


const SPAM = 'Congratulations WINNER! casino: click here for free money, act now';

describe('component-model plugins', () => {
  it('loads a .wasm component by its header and runs it behind the same Plugin interface', async () => {
    const plugin = await openPlugin(wasmFixture('read_set_component'));
    expect(plugin.kind).toBe('component');
    const instance = new PluginInstance(plugin);
    await instance.init('{}');
    await instance.enable();
    const context = new HookContext('message_received');
    context.setMetadata('a', Uint8Array.from([0, 1, 255]));
    expect(instance.executeHook(context)).toEqual({ code: 0, action: 'continue' });
    expect(Uint8Array.from(context.getMetadataBytes('b')!)).toEqual(Uint8Array.from([0, 1, 255]));
    await instance.shutdown();
  });

  it('recycles an instance whose memory nears its limit between calls, so that no call fails', async () => {
    // The JavaScript engine inside a component grows its memory on every call
    // and does not collect when it runs short: without recycling, a 16 MiB
    // limit traps within a few hundred calls.
    const instance = new PluginInstance(loadComponentPlugin(wasmFixture('read_set_component'), { options: resolvePluginOptions({ limits: { memoryMb: 16 } }) }));
    await instance.init('{}');
    await instance.enable();
    const context = new HookContext('message_received');
    context.setMetadata('a', 'x'.repeat(1000));
    for (let i = 0; i < 3000; i++) expect(instance.executeHook(context).code).toBe(0);
    expect(context.getMetadata('b')).toBe('x'.repeat(1000));
    await instance.shutdown();
  });

  it('refuses a non-component, a component of another world, and one importing what the host does not grant', async () => {
    await expectCode(() => loadComponentPlugin(wasmFixture('read_set')), 'SMTP_E_COMPONENT_INVALID', 'not a WebAssembly component');
    await expectCode(() => loadComponentPlugin(wasmFixture('other_world_component')), 'SMTP_E_COMPONENT_WORLD', 'not an smtp:plugin/smtp-plugin component');
    await expectCode(() => loadComponentPlugin(wasmFixture('uses_stdio_component')), 'SMTP_E_COMPONENT_IMPORT', 'wasi:cli/');
  });

  it('turns a throwing component into a coded trap and answers the next call from a fresh instance', async () => {
    const instance = new PluginInstance(loadComponentPlugin(wasmFixture('traps_component'), { logger: silentLogger() }));
    await instance.init('{}');
    await instance.enable();
    const trap = new HookContext('message_received');
    trap.setMetadata('trap', 'yes');
    await expectCode(() => instance.executeHook(trap), 'SMTP_E_WASM_TRAP', 'trapped');
    expect(instance.executeHook(new HookContext('message_received')).code).toBe(0);
    await instance.shutdown();
  });

  it('gives the Zig spam filter\'s results through plugin call', () => {
    const args = ['--hook', 'message_filtered', '--meta', `message_body=${SPAM}`];
    expect(callJson(runCli(['plugin', 'call', wasmFixture('spam_filter_component'), ...args]))).toEqual({
      code: 1,
      cancel: false,
      metadata: { message_body: SPAM, spam_score: '6', is_spam: 'true', smtp_reply_code: '554', smtp_reply_text: '5.7.1 Message refused as spam' },
    });
    const info = JSON.parse(runCli(['plugin', 'info', wasmFixture('spam_filter_component')]).stdout);
    expect(info).toMatchObject({ kind: 'component', name: 'spam-filter', version: '1.2.0', handled_hooks: ['message_filtered'] });
  });

  it('filters mail inside the running server, configured with component = "..."', async () => {
    const root = serverRoot({
      delivery: 'mode = "none"\n',
      plugins: '[plugins]\ndirectory = "./plugins"\nwasm_directory = "./wasm-plugins"\n\n[[plugins.plugin]]\nname = "spam-filter"\ncomponent = "spam_filter.component.wasm"\n',
    });
    mkdirSync(join(root.dir, 'wasm-plugins'));
    copyFileSync(wasmFixture('spam_filter_component'), join(root.dir, 'wasm-plugins', 'spam_filter.component.wasm'));
    const server = new MailServer(loadConfig(root.config), silentLogger());
    const port = await server.start();
    try {
      expect(server.manager.get('spam-filter')!.plugin.kind).toBe('component');
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
      await expect(transport.sendMail({ from: 'a@example.com', to: 'b@example.org', text: SPAM })).rejects.toMatchObject({ responseCode: 554 });
      const ok = await transport.sendMail({ from: 'a@example.com', to: 'b@example.org', text: 'lunch?' });
      expect(ok.response).toMatch(/^250 /);
    } finally {
      await server.stop();
    }
  });
});
