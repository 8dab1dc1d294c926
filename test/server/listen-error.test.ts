import { once } from 'node:events';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { HookedSMTPServer } from '../../src/server/hooked-smtp-server.js';
import { listenAddress, listenError } from '../../src/server/listen-error.js';
import { MailServer } from '../../src/server/mail-server.js';
import { PROJECT_ROOT } from '../../src/paths.js';
import { runClient, serverRoot } from '../helpers/server.js';

const NO_GATE = { active: () => false, check: async () => undefined };

/** Listens `smtp` on host:port the way MailServer does, resolving to the coded error. */
async function failedListen(smtp: HookedSMTPServer, host: string, port: number): Promise<unknown> {
  // smtp-server re-emits its listener's errors; MailServer logs them the same way.
  smtp.on('error', () => undefined);
  smtp.listen(port, host);
  const server = (smtp as unknown as { server: Server }).server;
  const [err] = await once(server, 'error');
  return listenError(err, host, port);
}

describe('listenError', () => {
  const open: Server[] = [];
  afterEach(async () => {
    for (const server of open.splice(0)) await new Promise((done) => server.close(done));
  });

  it('turns a port in use into SMTP_E_LISTEN naming the address', async () => {
    const holder = createServer();
    open.push(holder);
    holder.listen(0, '127.0.0.1');
    await once(holder, 'listening');
    const { port } = holder.address() as AddressInfo;
    const error = await failedListen(new HookedSMTPServer({ logger: false }, NO_GATE), '127.0.0.1', port);
    expect(error).toMatchObject({
      code: 'SMTP_E_LISTEN',
      message: `the server could not listen on 127.0.0.1:${port}: the address is already in use (another server listens there) (EADDRINUSE)`,
    });
    expect((error as Error).cause).toMatchObject({ code: 'EADDRINUSE' });
  });

  it('is what MailServer.start() rejects with when its port is taken', async () => {
    const holder = createServer();
    open.push(holder);
    holder.listen(0, '127.0.0.1');
    await once(holder, 'listening');
    const { port } = holder.address() as AddressInfo;
    const root = serverRoot({ storage: 'spool = "none"\n', delivery: 'mode = "none"\n' });
    const server = new MailServer(loadConfig(root.config, { port }), pino({ level: 'silent' }));
    await expect(server.start()).rejects.toMatchObject({ code: 'SMTP_E_LISTEN', message: `the server could not listen on 127.0.0.1:${port}: the address is already in use (another server listens there) (EADDRINUSE)` });
    await server.stop();
  });

  it('makes the smtp-server command print it and exit 1', async () => {
    const holder = createServer();
    open.push(holder);
    holder.listen(0, '127.0.0.1');
    await once(holder, 'listening');
    const { port } = holder.address() as AddressInfo;
    const root = serverRoot();
    const run = await runClient(process.execPath, [join(PROJECT_ROOT, 'bin', 'smtp-server.js'), '--config', root.config, '--port', String(port)], 20_000);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain(`error SMTP_E_LISTEN: the server could not listen on 127.0.0.1:${port}: the address is already in use (another server listens there) (EADDRINUSE)\n`);
  });

  it('names an address no interface has (EADDRNOTAVAIL)', async () => {
    // 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    const error = await failedListen(new HookedSMTPServer({ logger: false }, NO_GATE), '192.0.2.1', 2525);
    expect(error).toMatchObject({ code: 'SMTP_E_LISTEN', message: 'the server could not listen on 192.0.2.1:2525: no interface of this machine has that address (EADDRNOTAVAIL)' });
  });

  it('brackets IPv6 literals, explains name and permission errors, and keeps unknown errno text', () => {
    expect(listenAddress('::1', 25)).toBe('[::1]:25');
    const errno = (code: string, message = code): Error => Object.assign(new Error(message), { code });
    expect(listenError(errno('ENOTFOUND'), 'mx.invalid', 25).message).toBe('the server could not listen on mx.invalid:25: the host name does not resolve (ENOTFOUND)');
    expect(listenError(errno('EACCES'), '0.0.0.0', 25).message).toBe('the server could not listen on 0.0.0.0:25: permission denied (ports below 1024 need privileges) (EACCES)');
    expect(listenError(errno('EWHATEVER', 'something odd'), '::', 2525).message).toBe('the server could not listen on [::]:2525: something odd');
  });
});
