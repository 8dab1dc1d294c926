import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PROJECT_ROOT } from './paths.js';

/**
 * The server's version, checked against plugins' min/max_server_version.
 * It continues the seed guide's numbering (v0.28.0), so the guide's plugins,
 * which ask for at least 0.28.0, load.
 */
export const SERVER_VERSION: string = (JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
