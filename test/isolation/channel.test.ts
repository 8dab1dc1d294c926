import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HEADER_OFFSETS, runtimeHeaderOffsets } from '../../src/isolation/channel.js';
import { PROJECT_ROOT } from '../../src/paths.js';
import { PINNED_ZIG_VERSION, findZig, zigEnv } from '../../src/toolchain/zig.js';

describe('the isolation channel', () => {
  it('reads the header at the offsets the runtime was built with (isolation_channel.zig)', () => {
    expect(runtimeHeaderOffsets()).toEqual(Object.values(HEADER_OFFSETS));
  });

  it("passes the confinement's own Zig tests: the filter fits, and under it open, socket, fork and setrlimit fail with EPERM while threads and abort() work", () => {
    const run = spawnSync(findZig(PINNED_ZIG_VERSION), ['test', '-lc', join(PROJECT_ROOT, 'src', 'runtime', 'confine.zig')], { encoding: 'utf8', env: zigEnv() });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toContain('All 2 tests passed');
  });
});
