import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostError } from '../errors.js';
import { BUILD_DIR, PROJECT_ROOT } from '../paths.js';

/**
 * jco transpiles a component into core modules and JS glue. That costs
 * about a second, so the output is cached by the component's content hash:
 * a restart, or a second server, does not pay it again.
 */
export const COMPONENT_CACHE_DIR = join(BUILD_DIR, 'component-cache');

/** What the cache holds for one component. */
export interface Transpiled {
  readonly dir: string;
  /** Interfaces the component imports, e.g. "smtp:plugin/types". */
  readonly imports: readonly string[];
  /** Its exports, camelCase as jco names them. */
  readonly exports: readonly string[];
}

export function contentHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex').slice(0, 32);
}

/** Transpiles `bytes` into `dir` (async: jco's API is), atomically: the folder appears complete or not at all. */
export async function transpileInto(bytes: Uint8Array, dir: string): Promise<Transpiled> {
  const { transpile } = await import('@bytecodealliance/jco');
  const { files, imports, exports } = (await transpile(bytes, { name: 'plugin', instantiation: 'sync', noTypescript: true })) as {
    files: Record<string, Uint8Array>;
    imports: string[];
    exports: [string, string][];
  };
  if (existsSync(join(dir, 'meta.json'))) {
    // Another process finished the same transpile first: keep its complete folder.
    return { dir, ...(JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as { imports: string[]; exports: string[] }) };
  }
  const staging = `${dir}.${process.pid}.tmp`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging, { recursive: true });
  for (const [name, data] of Object.entries(files)) {
    if (name.endsWith('.d.ts')) continue;
    writeFileSync(join(staging, name), data);
  }
  const meta = { imports, exports: exports.map(([name]) => name) };
  writeFileSync(join(staging, 'meta.json'), JSON.stringify(meta));
  try {
    renameSync(staging, dir);
  } catch {
    // Lost a race to an identical transpile: its folder is as good as ours.
    rmSync(staging, { recursive: true, force: true });
  }
  return { dir, ...meta };
}

/**
 * The cached transpile of a component, made on first use. Loading a plugin
 * is synchronous, and jco's transpile is not, so a cold transpile runs in a
 * child node process (src/component/transpile-main.ts) that the host waits for.
 */
export function transpiled(path: string, bytes: Uint8Array): Transpiled & { cached: boolean } {
  const dir = join(COMPONENT_CACHE_DIR, contentHash(bytes));
  const metaPath = join(dir, 'meta.json');
  let cached = true;
  if (!existsSync(metaPath)) {
    cached = false;
    const script = join(PROJECT_ROOT, 'dist', 'src', 'component', 'transpile-main.js');
    // The child transpiles exactly the bytes hashed here, not whatever `path` holds by then.
    mkdirSync(COMPONENT_CACHE_DIR, { recursive: true });
    const input = join(COMPONENT_CACHE_DIR, `${contentHash(bytes)}.${process.pid}.wasm`);
    writeFileSync(input, bytes);
    const run = spawnSync(process.execPath, [script, input, dir], { encoding: 'utf8', timeout: 300_000 });
    rmSync(input, { force: true });
    if (run.status !== 0 || !existsSync(metaPath)) {
      throw hostError('SMTP_E_COMPONENT_INVALID', `${path}: jco could not transpile the component (${(run.stderr || run.error?.message || `exit ${run.status}`).trim().split('\n').slice(-3).join(' ')})`);
    }
  }
  const meta = JSON.parse(readFileSync(metaPath, 'utf8')) as { imports: string[]; exports: string[] };
  return { dir, ...meta, cached };
}
