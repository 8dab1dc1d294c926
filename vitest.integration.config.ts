import { defineConfig } from 'vitest/config';

/**
 * `npm run test:integration`: the example plugins against the real services
 * they talk to (slapd, redis-server, rsyslog, clamd), each started by the
 * test on loopback in a temporary folder and stopped by PID. `.ci/run`
 * installs the Debian packages and runs this after `npm test`.
 */
export default defineConfig({
  test: {
    include: ['test/integration/**/*.test.ts'],
    globalSetup: ['test/integration/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: 'forks',
    // The services and servers of one file must not fight another file's
    // for the two cores: files run one after another.
    fileParallelism: false,
  },
});
