import { createConnection } from 'node:net';
import { freePort } from '../../helpers/server.js';
import { startService, type Service } from './process.js';

/** A TCP proxy on 127.0.0.1 that holds back every chunk the server sends. */
export interface DelayProxy {
  readonly port: number;
  /** tcp:127.0.0.1:PORT, the form of a plugin's `server` and `allow_connect`. */
  readonly address: string;
  readonly service: Service;
  /** Connections accepted so far. */
  connections(): number;
  /** Stops the proxy by PID (its connections close with it). */
  close(): Promise<void>;
}

/**
 * The proxy itself, run by `node -e` in a process of its own, so that it
 * keeps its pace whatever the test process's event loop (which runs the mail
 * server under test) is doing. Client bytes go through at once; each chunk
 * from the server is written `delayMs` later, in order (equal timeouts fire
 * in the order they were set), and the server's end travels behind its last
 * chunk. Prints "connection" for each client.
 */
const PROXY_SOURCE = `
import { createConnection, createServer } from 'node:net';
const [port, targetPort, delayMs] = process.argv.slice(1).map(Number);
const server = createServer((client) => {
  process.stdout.write('connection\\n');
  const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
  client.on('data', (chunk) => upstream.write(chunk));
  client.on('end', () => upstream.end());
  upstream.on('data', (chunk) => setTimeout(() => !client.destroyed && client.write(chunk), delayMs));
  upstream.on('end', () => setTimeout(() => client.end(), delayMs));
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
});
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;

/**
 * Starts a proxy from a free port on 127.0.0.1 to 127.0.0.1:`targetPort`
 * that delivers every chunk from the target `delayMs` late: a deliberately
 * slow server made from a real one.
 */
export async function startDelayProxy(targetPort: number, delayMs: number): Promise<DelayProxy> {
  const port = await freePort();
  const accepts = () =>
    new Promise<boolean>((done) => {
      const probe = createConnection({ host: '127.0.0.1', port }, () => {
        probe.destroy();
        done(true);
      });
      probe.on('error', () => done(false));
    });
  const service = await startService(process.execPath, ['--input-type=module', '-e', PROXY_SOURCE, String(port), String(targetPort), String(delayMs)], accepts, { timeoutMs: 10_000 });
  const count = () => service.output().split('\n').filter((line) => line === 'connection').length;
  // The readiness probe connected too; the proxy may not have printed it yet.
  const deadline = Date.now() + 5_000;
  while (count() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const probes = count();
  return {
    port,
    address: `tcp:127.0.0.1:${port}`,
    service,
    connections: () => count() - probes,
    close: () => service.stop(),
  };
}
