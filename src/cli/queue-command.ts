import { parseArgs } from 'node:util';
import { hostError } from '../errors.js';
import { ADMIN_OPTIONS, adminCall, adminTarget } from './admin-client.js';

export const QUEUE_USAGE = `  smtp-server queue list [--sender ADDR|@DOMAIN] [--recipient ADDR|@DOMAIN] [--json] [--config FILE | --admin URL]
  smtp-server queue flush|hold|release|delete (ID... | --all | --sender ADDR|@DOMAIN | --recipient ADDR|@DOMAIN) [--config FILE | --admin URL]`;

const DONE: Readonly<Record<string, string>> = { flush: 'flushed', hold: 'held', release: 'released', delete: 'deleted' };

interface ListedEntry {
  id: string;
  age_s: number;
  size: number;
  sender: string;
  recipients: string[];
  state: string;
  attempts: number;
  last_error: string | null;
}

/** 75 s -> "1m15s": an age at a glance, as postqueue -p shows arrival times. */
function age(seconds: number): string {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86_400)}d${Math.floor((s % 86_400) / 3600)}h`;
}

/**
 * `smtp-server queue ...`: the running server's queue, through its admin
 * listener (docs/admin-api.md). list is postqueue -p; flush postqueue -f;
 * hold, release and delete postsuper -h, -H and -d.
 */
export async function queueCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: { ...ADMIN_OPTIONS, sender: { type: 'string' }, recipient: { type: 'string' }, all: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } },
  });
  const target = adminTarget(values);
  if (sub === 'list') {
    if (positionals.length > 0) throw hostError('SMTP_E_CLI_USAGE', `queue list takes no ids; usage:\n${QUEUE_USAGE}`);
    const query = new URLSearchParams();
    if (values.sender !== undefined) query.set('sender', values.sender);
    if (values.recipient !== undefined) query.set('recipient', values.recipient);
    const answer = await adminCall(target, 'GET', `/api/queue${query.size > 0 ? `?${query}` : ''}`);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
      return 0;
    }
    const entries = answer.entries as ListedEntry[];
    for (const entry of entries) {
      process.stdout.write(`${entry.id}  ${age(entry.age_s).padStart(6)}  ${String(entry.size).padStart(8)}  ${entry.state.padEnd(10)}  attempts ${entry.attempts}  ${entry.sender || '<>'}\n`);
      for (const recipient of entry.recipients) process.stdout.write(`    ${recipient}\n`);
      if (entry.last_error !== null) process.stdout.write(`    (${entry.last_error})\n`);
    }
    const total = answer.total as number;
    process.stdout.write(total === 0 ? 'Mail queue is empty\n' : `-- ${total} message${total === 1 ? '' : 's'}${total > entries.length ? `, ${entries.length} shown` : ''}\n`);
    return 0;
  }
  const done = sub === undefined ? undefined : DONE[sub];
  if (done === undefined) throw hostError('SMTP_E_CLI_USAGE', `usage:\n${QUEUE_USAGE}`);
  const selector = {
    ...(positionals.length > 0 ? { ids: positionals } : {}),
    ...(values.all ? { all: true } : {}),
    ...(values.sender === undefined ? {} : { sender: values.sender }),
    ...(values.recipient === undefined ? {} : { recipient: values.recipient }),
  };
  if (Object.keys(selector).length === 0) throw hostError('SMTP_E_CLI_USAGE', `queue ${sub} needs ids, --all, --sender or --recipient; usage:\n${QUEUE_USAGE}`);
  const answer = await adminCall(target, 'POST', `/api/queue/${sub}`, selector);
  const ids = answer.ids as string[];
  const busy = answer.busy as string[];
  for (const id of ids) process.stdout.write(`${id}: ${done}\n`);
  for (const id of busy) process.stdout.write(`${id}: being delivered right now, not ${sub === 'delete' ? 'deleted' : 'changed'}\n`);
  process.stdout.write(`${ids.length} message${ids.length === 1 ? '' : 's'} ${done}\n`);
  // Busy entries were not done: the admin may try again.
  return busy.length > 0 ? 1 : 0;
}
