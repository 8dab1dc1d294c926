import { createRequire } from 'node:module';

const requireFromHere = createRequire(import.meta.url);

/**
 * A package that only some configurations use (prom-client with [admin],
 * the OpenTelemetry SDK with [tracing], nodemailer with relay delivery,
 * pino-pretty at a terminal), loaded where it is first needed instead of at
 * import: a server without them idles about 11 MiB smaller
 * (test/optional-package.test.ts checks which ones a server loads).
 * They are CommonJS packages; require's own cache makes a second call cheap.
 */
export function optionalPackage<T>(name: string): T {
  return requireFromHere(name) as T;
}
