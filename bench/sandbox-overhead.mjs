// Scenario: what deadline enforcement costs a sandboxed plugin's own compute.
// The same CPU-bound hook (sandbox_probe's "spin-ms" mode, a multiply-add
// loop) runs in the module as built and in the instrumented module the host
// runs, interleaved; the ratio is the cost of the loop-header budget check.
import { readFileSync } from 'node:fs';
import { instrument } from '../dist/src/sandbox/instrument.js';
import { buildFixture, median } from './_support.mjs';

const ROUNDS = 7;
const CALLS = 20;

function instantiate(bytes) {
  let budget;
  const wasi = new Proxy({}, { get: () => () => 0 });
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {
    wasi_snapshot_preview1: wasi,
    // ABI 1.1's clock and network imports: never called by the spin loop.
    smtp_host: new Proxy({}, { get: () => () => 0 }),
    smtp_sandbox: { budget_exhausted: () => { budget.value = 10_000; } },
  });
  const e = instance.exports;
  budget = e.__smtp_budget;
  const ctx = e.smtp_wasm_context_create(256, 1 << 20, 64);
  const wire = Buffer.alloc(64);
  let at = 0;
  for (const [k, v] of [['mode', 'spin-ms'], ['ms', '5']]) {
    at = wire.writeUInt32LE(k.length, at); at += wire.write(k, at);
    at = wire.writeUInt32LE(v.length, at); at += wire.write(v, at);
  }
  const ptr = e.smtp_wasm_alloc(at);
  new Uint8Array(e.memory.buffer, ptr, at).set(wire.subarray(0, at));
  if (e.smtp_wasm_context_load(ctx, 0, ptr, at) !== 0) throw new Error('load failed');
  e.smtp_plugin_init(e.smtp_wasm_host_allocator(), 0);
  return () => e.smtp_plugin_execute_hook(ctx);
}

export async function run() {
  const { wasm } = await buildFixture('sandbox_probe');
  const original = readFileSync(wasm);
  const instrumented = instrument(original, { memoryPagesMax: 1024, budgetInitial: 10_000 });
  const peers = { 'as built (no deadline)': instantiate(original), 'instrumented (deadline on)': instantiate(instrumented.bytes) };
  const samples = { 'as built (no deadline)': [], 'instrumented (deadline on)': [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, call] of Object.entries(peers)) {
      call();
      const start = process.hrtime.bigint();
      for (let i = 0; i < CALLS; i++) call();
      samples[name].push(Number(process.hrtime.bigint() - start) / CALLS / 1e6);
    }
  }
  const base = median(samples['as built (no deadline)']);
  return {
    title: "Deadline enforcement's cost to a CPU-bound plugin",
    header: ['module', 'median ms/call', 'ratio'],
    rows: Object.entries(samples).map(([name, values]) => [name, median(values).toFixed(2), (median(values) / base).toFixed(3)]),
    notes: [`${instrumented.loopCount} loop headers instrumented; ${ROUNDS} interleaved rounds of ${CALLS} calls.`],
  };
}
