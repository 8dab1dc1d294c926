import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/paths.js';
import { fixture } from '../helpers/fixtures.js';

/** A host process (the compiled dist/, as the server runs) with one process-isolated plugin; it prints its child's pid. */
const HOST = `
import { readdirSync, readFileSync } from 'node:fs';
const { openPlugin } = await import(${JSON.stringify(join(PROJECT_ROOT, 'dist', 'src', 'plugin', 'backends.js'))});
const plugin = await openPlugin(process.argv[1], { isolation: 'process' });
await plugin.init('{}');
const child = readdirSync('/proc').filter((e) => /^\\d+$/.test(e)).find((e) => {
  try { const s = readFileSync('/proc/' + e + '/stat', 'utf8'); return s.includes('(smtp-plugin-chi') && s.slice(s.lastIndexOf(')') + 2).split(' ')[1] === String(process.pid); } catch { return false; }
});
console.log(child);
if (process.argv[2] === 'exit') process.exit(0);
setInterval(() => {}, 1000);
`;

/** Running (not gone, not a zombie left to a parent that does not reap). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function hostWithChild(mode: 'exit' | 'stay'): Promise<{ host: ReturnType<typeof spawn>; child: number }> {
  const host = spawn(process.execPath, ['--input-type=module', '-e', HOST, fixture('c_isolation_probe'), mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = await new Promise<number>((done, fail) => {
    host.stdout!.once('data', (chunk: Buffer) => done(Number(chunk.toString().trim())));
    host.once('exit', (code) => fail(new Error(`host exited ${code}`)));
  });
  expect(pid).toBeGreaterThan(0);
  return { host, child: pid };
}

async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 100 && running(pid); i++) await new Promise((r) => setTimeout(r, 20));
  return !running(pid);
}

describe("a plugin's child process ends with the server", () => {
  it('when the server exits normally', async () => {
    const { child } = await hostWithChild('exit');
    expect(await gone(child)).toBe(true);
  });

  it('when the server is killed (SIGKILL: no exit handler runs; PR_SET_PDEATHSIG does it)', async () => {
    const { host, child } = await hostWithChild('stay');
    expect(running(child)).toBe(true);
    host.kill('SIGKILL');
    expect(await gone(child)).toBe(true);
  });
});
