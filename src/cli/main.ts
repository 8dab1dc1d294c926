import { isHostError } from '../errors.js';
import { SERVER_VERSION } from '../version.js';
import { MILTER_USAGE, milterCommand } from './milter-command.js';
import { PLUGIN_USAGE, pluginCommand } from './plugin-command.js';
import { PLUGINS_USAGE, pluginsCommand } from './plugins-command.js';
import { QUEUE_USAGE, queueCommand } from './queue-command.js';
import { SERVE_USAGE, serveCommand } from './serve-command.js';

const USAGE = `smtp-server ${SERVER_VERSION}
usage:
${SERVE_USAGE}
${PLUGIN_USAGE.replace(/^usage:\n/, '')}
${PLUGINS_USAGE}
${QUEUE_USAGE}
${MILTER_USAGE}
  smtp-server --version`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'plugin':
        return await pluginCommand(rest);
      case 'plugins':
        return await pluginsCommand(rest);
      case 'queue':
        return await queueCommand(rest);
      case 'milter':
        return await milterCommand(rest);
      case '--version':
        process.stdout.write(`${SERVER_VERSION}\n`);
        return 0;
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`);
        return 0;
      default:
        if (command === undefined || command.startsWith('--')) return await serveCommand(argv);
        process.stderr.write(`unknown command "${command}"\n${USAGE}\n`);
        return 2;
    }
  } catch (error) {
    if (isHostError(error)) {
      process.stderr.write(`error ${error.code}: ${error.message}\n`);
      return error.code === 'SMTP_E_CLI_USAGE' ? 2 : 1;
    }
    if (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`error SMTP_E_CLI_USAGE: ${error.message}\n${USAGE}\n`);
      return 2;
    }
    if (error instanceof Error && 'code' in error && error.code === 'ENOENT') {
      process.stderr.write(`error: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}
