import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BUILD_DIR, PROJECT_ROOT, sharedLibraryName } from '../../../src/paths.js';

/** Where the integration run builds the example plugins (never committed). */
export const EXAMPLE_BUILD_DIR = join(BUILD_DIR, 'integration-plugins');
export const EXAMPLE_SOURCES = join(PROJECT_ROOT, 'plugins');

/**
 * The example plugins: every plugins/*.zig, by file stem (spam_filter,
 * ldap_auth...). SMTP_EXAMPLES=a,b limits the build to those while working
 * on one of them.
 */
export function exampleNames(): string[] {
  const only = process.env.SMTP_EXAMPLES?.split(',').filter(Boolean);
  return readdirSync(EXAMPLE_SOURCES)
    .filter((file) => file.endsWith('.zig'))
    .map((file) => file.replace(/\.zig$/, ''))
    .filter((stem) => only === undefined || only.includes(stem));
}

export type ExampleTarget = 'native' | 'wasm';

/** The build of example plugin `stem` (plugins/<stem>.zig) for `target`, made by global-setup. */
export function examplePlugin(stem: string, target: ExampleTarget): string {
  return join(EXAMPLE_BUILD_DIR, target === 'native' ? sharedLibraryName(stem) : `${stem}.wasm`);
}
