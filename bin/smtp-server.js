#!/usr/bin/env node
// The `smtp-server` command. The TypeScript is compiled into dist/ by
// `npm install` (scripts/setup.mjs) and by `npm run build`.
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
