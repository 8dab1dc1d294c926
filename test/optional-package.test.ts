import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../src/paths.js';
import { serverRoot } from './helpers/server.js';

/** Packages only some configurations use: loaded when configured, never at import (their modules hold RSS). */
const OPTIONAL = ['prom-client', '@opentelemetry/', 'nodemailer', 'pino-pretty'];

/** Starts and stops the built server (dist/) on `config` in a fresh Node; the optional packages it loaded. */
function optionalPackagesLoaded(config: string): string[] {
  const script = `
    import { createRequire } from 'node:module';
    const { loadConfig } = await import(${JSON.stringify(pathToFileURL(join(PROJECT_ROOT, 'dist/src/config/config.js')).href)});
    const { silentLogger } = await import(${JSON.stringify(pathToFileURL(join(PROJECT_ROOT, 'dist/src/log.js')).href)});
    const { MailServer } = await import(${JSON.stringify(pathToFileURL(join(PROJECT_ROOT, 'dist/src/server/mail-server.js')).href)});
    const server = new MailServer(loadConfig(process.argv[1]), silentLogger());
    await server.start();
    await server.stop();
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    console.log(JSON.stringify(${JSON.stringify(OPTIONAL)}.filter((name) => loaded.some((path) => path.includes('/node_modules/' + name)))));
    process.exit(0);
  `;
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script, config], { encoding: 'utf8', timeout: 60_000 });
  expect(result.status, result.stderr).toBe(0);
  return JSON.parse(result.stdout.trim().split('\n').at(-1)!) as string[];
}

describe('optional packages', () => {
  it('are not loaded by a server without [admin], [tracing] or a relay', () => {
    expect(optionalPackagesLoaded(serverRoot().config)).toEqual([]);
  });

  it('are loaded when their section is configured', () => {
    const admin = serverRoot({ admin: 'listen = "127.0.0.1:0"\ntoken = "optional-modules-token-0123456789"\n' });
    // prom-client brings @opentelemetry/api (its exemplars): not the tracing SDK.
    expect(optionalPackagesLoaded(admin.config)).toEqual(['prom-client', '@opentelemetry/']);
    const relay = serverRoot({ delivery: 'mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = 1\n' });
    expect(optionalPackagesLoaded(relay.config)).toEqual(['nodemailer']);
    const tracing = serverRoot({ server: '', storage: '' });
    writeFileSync(tracing.config, `${readFileSync(tracing.config, 'utf8')}\n[tracing]\notlp_endpoint = "http://127.0.0.1:1/v1/traces"\n`);
    expect(optionalPackagesLoaded(tracing.config)).toEqual(['@opentelemetry/']);
  });
});
