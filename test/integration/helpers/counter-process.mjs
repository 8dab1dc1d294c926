// A second server process for test/integration/host_counters.test.ts: its own
// native runtime (so its own memory counters), configured with the [cluster]
// settings it is given, running a counter probe plugin. Uses the compiled
// sources (dist/: `npm run build`, which `npm run test:integration` runs first).
//
// stdin, one JSON request a line; stdout, one JSON answer a line:
//   {"op":"configure","config":{redis, redisTimeoutMs, onRedisDown, keyPrefix}} -> {"ok":true}
//   {"op":"open","file":PATH,"options":{...}}                                   -> {"ok":true}
//   {"op":"call","fields":{key, by, window}}                                    -> {"ok":true,"changed":{...}}
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const dist = new URL('../../../dist/src/', import.meta.url);
const load = (path) => import(fileURLToPath(new URL(path, dist)));
const { configureHostCounters } = await load('runtime/counters.js');
const { openPlugin, backendsStopped } = await load('plugin/backends.js');
const { HookContext } = await load('plugin/hook-context.js');
const { resolvePluginOptions } = await load('plugin/options.js');

let plugin = null;

async function handle(request) {
  switch (request.op) {
    case 'configure':
      await configureHostCounters(request.config);
      return {};
    case 'open':
      plugin = await openPlugin(request.file, { options: resolvePluginOptions(request.options) });
      await plugin.init('{}');
      await plugin.enable();
      return {};
    case 'call': {
      const context = HookContext.of('command_validated', request.fields);
      await plugin.executeHook(context);
      return { changed: Object.fromEntries([...context.pluginChanges()].map(([key, value]) => [key, String(value)])) };
    }
    default:
      throw new Error(`unknown op ${request.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  try {
    process.stdout.write(`${JSON.stringify({ ok: true, ...(await handle(JSON.parse(line))) })}\n`);
  } catch (error) {
    process.stdout.write(`${JSON.stringify({ ok: false, error: String(error) })}\n`);
  }
}
await plugin?.unload();
await backendsStopped();
