import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { HotReloader, looksComplete } from '../../src/manager/hot-reload.js';
import { PluginManager } from '../../src/manager/plugin-manager.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { fixture, wasmFixture } from '../helpers/fixtures.js';

async function visited(manager: PluginManager): Promise<string | undefined> {
  const context = new HookContext('message_received');
  await manager.executeHook('message_received', context);
  return context.getMetadata('visited');
}

describe('hot reload failures', () => {
  it('keeps the old build serving when the new one fails to load or init, or breaks a dependent', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'reload-'));
    const plain = join(dir, 'libplain.so');
    copyFileSync(fixture('c_plain'), plain);
    const manager = new PluginManager({ directory: dir });
    await manager.loadPlugin(plain);
    await manager.loadPlugin(fixture('c_needs_plain'));
    expect(await visited(manager)).toBe('plain,needs-plain');
    // The library was loaded from a private copy: overwriting the original is safe.
    writeFileSync(plain, 'not a library any more');
    await expect(manager.replacePlugin('plain')).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_NOT_LIBRARY' }));
    expect(await visited(manager)).toBe('plain,needs-plain');
    copyFileSync(fixture('c_plain_fails'), plain);
    await expect(manager.replacePlugin('plain')).rejects.toThrow(expect.objectContaining({ code: 'SMTP_E_PLUGIN_INIT' }));
    copyFileSync(fixture('c_second'), plain);
    await expect(manager.replacePlugin('plain')).rejects.toThrow('the new build is named "second", not "plain"');
    expect(await visited(manager)).toBe('plain,needs-plain');
    copyFileSync(fixture('c_plain'), plain);
    expect((await manager.replacePlugin('plain')).name).toBe('plain');
    expect(await visited(manager)).toBe('plain,needs-plain');
    await manager.deinit();
  });

  it('does not load a file that is still being written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'reload-partial-'));
    const wasm = join(dir, 'read_set.wasm');
    const bytes = readFileSync(wasmFixture('read_set'));
    writeFileSync(wasm, bytes);
    expect(looksComplete(wasm)).toBe(true);
    writeFileSync(wasm, bytes.subarray(0, bytes.length >> 1));
    expect(looksComplete(wasm)).toBe(false);
    // A component is not a core module; WebAssembly.validate alone would call it incomplete.
    expect(looksComplete(wasmFixture('read_set_component'))).toBe(true);

    writeFileSync(wasm, bytes);
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
    const manager = new PluginManager({ directory: dir, wasmDirectory: dir, logger });
    await manager.loadPlugin(wasm);
    const reloader = new HotReloader(manager, logger, 50);
    reloader.start();
    try {
      // Half the module: cut mid-section (a cut at a section boundary would be a valid, smaller module).
      writeFileSync(wasm, bytes.subarray(0, bytes.length >> 1));
      const deadline = Date.now() + 5000;
      while (!lines.some((l) => l.includes('incomplete build')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(lines.some((l) => l.includes("hot reload skipped an incomplete build")), lines.join("\n")).toBe(true);
      const context = new HookContext('message_received');
      context.setMetadata('a', 'still');
      await manager.executeHook('message_received', context);
      expect(context.getMetadata('b')).toBe('still');
      writeFileSync(wasm, bytes);
      while (!lines.some((l) => l.includes('plugin hot-reloaded')) && Date.now() < deadline + 5000) await new Promise((r) => setTimeout(r, 20));
      expect(lines.some((l) => l.includes('plugin hot-reloaded'))).toBe(true);
    } finally {
      await reloader.stop();
      await manager.deinit();
    }
  });
});
