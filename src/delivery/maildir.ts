import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { HostError } from '../errors.js';
import { syncDirectory, syncFile, type SpooledMessage } from '../storage/spool.js';

/**
 * Where a delivery reads the message from: its bytes in memory (an inline
 * message), or a file to copy (a large message's own file), so a large
 * message is never loaded whole.
 */
export type MessageBody = Buffer | { readonly path: string };

/** NAME_MAX on every common filesystem; a longer recipient cannot be a folder name. */
const FOLDER_NAME_BYTES_MAX = 255;

/** A Maildir delivery failure; `permanent` when trying again cannot help (the recipient is not a usable folder name). */
export class MaildirError extends HostError {
  readonly permanent: boolean;

  constructor(message: string, permanent: boolean, cause?: unknown) {
    super('SMTP_E_DELIVERY_MAILDIR', message, { cause });
    this.name = 'MaildirError';
    this.permanent = permanent;
  }
}

/** Why `recipient` cannot be a folder directly under the root, or undefined when it can. */
function folderProblem(recipient: string): string | undefined {
  if (recipient === '') return 'is empty';
  if (/[/\\\0]/.test(recipient)) return 'contains a path separator or NUL';
  // Covers "." and ".." too; a leading dot would also hide the folder.
  if (recipient.startsWith('.')) return 'starts with a dot';
  if (Buffer.byteLength(recipient) > FOLDER_NAME_BYTES_MAX) return `is longer than ${FOLDER_NAME_BYTES_MAX} bytes`;
  return undefined;
}

/** This host's name as Maildir wants it: "/" and ":" would break the file name, so they are escaped as octal. */
function maildirHostname(): string {
  return hostname().replaceAll('/', '\\057').replaceAll(':', '\\072');
}

/** `<seconds>.<pid>_<random>.<host>`: unique without coordination, as the Maildir convention asks. */
function uniqueName(): string {
  return `${Math.floor(Date.now() / 1000)}.${process.pid}_${randomBytes(8).toString('hex')}.${maildirHostname()}`;
}

/**
 * Delivers one message to `<root>/<recipient>/new/` the Maildir way: the
 * bytes go to tmp/ first, are fsynced, then renamed into new/, so a reader
 * never sees a partial message. Returns the path in new/. `body` is where
 * the bytes come from (default: the message's own file).
 */
export async function deliverToMaildir(root: string, recipient: string, message: SpooledMessage, fsync: boolean, body?: MessageBody): Promise<string> {
  const problem = folderProblem(recipient);
  if (problem !== undefined) throw new MaildirError(`recipient ${JSON.stringify(recipient)} ${problem}: it cannot be a mailbox folder under ${root}`, true);
  const source = body ?? (message.path === undefined ? undefined : { path: message.path });
  if (source === undefined) throw new MaildirError(`message ${message.id} is stored inline and no body was given (Spool.readBody)`, false);
  const mailbox = join(root, recipient);
  const name = uniqueName();
  const tmpPath = join(mailbox, 'tmp', name);
  const newPath = join(mailbox, 'new', name);
  try {
    // The first mkdir creates any missing ancestors and names the highest one it made.
    let highestCreated: string | undefined;
    for (const sub of ['tmp', 'new', 'cur']) {
      const created = await mkdir(join(mailbox, sub), { recursive: true, mode: 0o700 });
      highestCreated ??= created;
    }
    if (highestCreated !== undefined && fsync) {
      // New directories' entries must be durable before mail in them is:
      // sync from the mailbox up to the directory holding the highest new one.
      for (let dir = mailbox; ; dir = dirname(dir)) {
        await syncDirectory(dir);
        if (dir === dirname(highestCreated) || dir === dirname(dir)) break;
      }
    }
    if (Buffer.isBuffer(source)) await writeFile(tmpPath, source, { flag: 'wx', mode: 0o600 });
    else await copyFile(source.path, tmpPath, constants.COPYFILE_EXCL);
    if (fsync) await syncFile(tmpPath);
    await rename(tmpPath, newPath);
    if (fsync) await syncDirectory(join(mailbox, 'new'));
    return newPath;
  } catch (cause) {
    await rm(tmpPath, { force: true }).catch(() => undefined);
    throw new MaildirError(`cannot deliver message ${message.id} into ${mailbox}: ${(cause as Error).message}`, false, cause);
  }
}
