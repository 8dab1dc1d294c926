// A server for the SMTP scenarios, run in its own process so that its CPU
// time and memory can be read apart from the load generator's. Prints its port.
//   node bench/_server-child.mjs bare              smtp-server draining to nothing
//     (BENCH_WORKERS=N: a node:cluster primary and N such workers on one listener)
//   node bench/_server-child.mjs host CONFIG.toml   this server on that config
// SIGTERM stops it and exits 0 (so that --cpu-prof writes its profile).
import cluster from 'node:cluster';
import { SMTPServer } from 'smtp-server';

const [mode, config] = process.argv.slice(2);
let stop;
const bareWorkers = Number(process.env.BENCH_WORKERS ?? 1);
if (mode === 'bare' && bareWorkers > 1 && cluster.isPrimary) {
  // The control for [server] workers: the bare engine under node:cluster, as the smtp-server command runs its workers.
  const workers = Array.from({ length: bareWorkers }, () => cluster.fork());
  const ports = await Promise.all(workers.map((worker) => new Promise((done) => worker.once('message', done))));
  console.log(ports[0]);
  stop = () => Promise.all(workers.map((worker) => new Promise((done) => {
    worker.once('exit', done);
    worker.kill('SIGTERM');
  })));
} else if (mode === 'bare') {
  const server = new SMTPServer({
    logger: false,
    disabledCommands: ['AUTH', 'STARTTLS'],
    onData(stream, _session, callback) {
      stream.on('data', () => {});
      stream.on('end', () => callback(null, 'Ok'));
    },
  });
  // Port 0 in cluster workers: node:cluster gives every worker the same port.
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  if (cluster.isWorker) process.send(server.server.address().port);
  else console.log(server.server.address().port);
  stop = () => new Promise((done) => server.close(done));
} else {
  // Imported here, not above: the bare peer's memory is smtp-server's alone, not this server's modules too.
  const { loadConfig } = await import('../dist/src/config/config.js');
  const { silentLogger } = await import('../dist/src/log.js');
  const { MailServer } = await import('../dist/src/server/mail-server.js');
  const { backendsStopped } = await import('../dist/src/plugin/backends.js');
  const server = new MailServer(loadConfig(config), silentLogger());
  console.log(await server.start());
  stop = async () => {
    await server.stop();
    // Sandbox workers must be gone before the process exits.
    await backendsStopped();
  };
}
process.on('SIGTERM', async () => {
  await stop();
  process.exit(0);
});
