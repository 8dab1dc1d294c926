import { buildRuntime } from '../src/toolchain/build.js';
import { buildFixtures } from './helpers/fixtures.js';

/** Builds the native runtime and every plugin fixture once per test run. */
export default async function setup(): Promise<void> {
  await buildRuntime();
  await buildFixtures();
}
