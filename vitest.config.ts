import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Suites that start system services (slapd, redis, rsyslog, clamd) run
    // with `npm run test:integration` (vitest.integration.config.ts).
    exclude: ['test/integration/**', 'node_modules/**'],
    globalSetup: ['test/global-setup.ts'],
    // Zig builds inside tests take seconds on a shared 2-core machine.
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Plugins are loaded in-process through koffi; forks keep a crash in one
    // test file from taking the others with it.
    pool: 'forks',
  },
});
