// A server for the SMTP scenarios, run in its own process so that its CPU
// time and memory can be read apart from the load generator's. Prints its port.
//   node bench/_server-child.mjs bare              smtp-server draining to nothing
//   node bench/_server-child.mjs host CONFIG.toml   this server on that config
// SIGTERM stops it and exits 0 (so that --cpu-prof writes its profile).
import { SMTPServer } from 'smtp-server';
import { loadConfig } from '../dist/src/config/config.js';
import { silentLogger } from '../dist/src/log.js';
import { MailServer } from '../dist/src/server/mail-server.js';
import { backendsStopped } from '../dist/src/plugin/backends.js';

const [mode, config] = process.argv.slice(2);
let stop;
if (mode === 'bare') {
  const server = new SMTPServer({
    logger: false,
    disabledCommands: ['AUTH', 'STARTTLS'],
    onData(stream, _session, callback) {
      stream.on('data', () => {});
      stream.on('end', () => callback(null, 'Ok'));
    },
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  console.log(server.server.address().port);
  stop = () => new Promise((done) => server.close(done));
} else {
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
