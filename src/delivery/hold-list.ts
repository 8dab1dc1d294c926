/**
 * The ids of messages an operator put on hold, kept in <spool dir>/hold.list
 * (one id per line) so a hold outlives a restart without a new spool record
 * type. The spool only reads names it knows (segments, large/, the previous
 * layout's <id>.eml/.json and .tmp-* files), so it leaves this file and its
 * temp file alone. The file is rewritten whole and replaced by rename: a
 * crash leaves the old list or the new one, never a mix.
 */
import { join } from 'node:path';
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import { closeFd, errorCode, fstatSize, fsyncFd, openFd, readExactly, renamePath, syncDirectory, unlinkIfPresent, writevFd } from '../storage/fs-raw.js';
import { ID_PATTERN } from '../storage/message-id.js';

export const HOLD_LIST_NAME = 'hold.list';
/** Not `.tmp-` prefixed: the spool removes those as leftovers of its previous layout. */
const HOLD_LIST_TEMP_NAME = 'hold.list.tmp';
/** Messages held at once; the list is read whole at start. */
export const HELD_MESSAGES_MAX = 100_000;
/** The spool's ids are 26 characters; a longer line is not one of them. */
const ID_CHARS_MAX = 64;
/** A list of HELD_MESSAGES_MAX ids of the longest kind, each with its newline. */
const HOLD_LIST_BYTES_MAX = HELD_MESSAGES_MAX * (ID_CHARS_MAX + 1);

export interface HoldListOptions {
  /** The spool directory. */
  readonly dir: string;
  /** fsync the file before the rename and the directory after it. */
  readonly fsync: boolean;
  readonly logger: Logger;
}

export class HoldList {
  readonly path: string;
  readonly #dir: string;
  readonly #tempPath: string;
  readonly #fsync: boolean;
  readonly #logger: Logger;
  /** Writes run one after another, so the last list written is the last one asked for. */
  #writing: Promise<void> = Promise.resolve();

  constructor(options: HoldListOptions) {
    this.#dir = options.dir;
    this.path = join(options.dir, HOLD_LIST_NAME);
    this.#tempPath = join(options.dir, HOLD_LIST_TEMP_NAME);
    this.#fsync = options.fsync;
    this.#logger = options.logger;
  }

  /**
   * The ids in the list. A missing list holds nothing; an unreadable one is
   * logged and holds nothing too (the messages are delivered rather than
   * stuck); lines that are not spool ids are skipped.
   */
  async read(): Promise<Set<string>> {
    let bytes: Buffer;
    try {
      bytes = await readAtMost(this.path, HOLD_LIST_BYTES_MAX + 1);
    } catch (error) {
      if (errorCode(error) !== 'ENOENT') this.#logger.warn({ code: 'SMTP_E_SPOOL_READ', path: this.path, err: error }, 'cannot read the hold list; no message is held');
      return new Set();
    }
    let text = bytes.toString('latin1');
    if (bytes.length > HOLD_LIST_BYTES_MAX) {
      text = text.slice(0, text.lastIndexOf('\n', HOLD_LIST_BYTES_MAX) + 1);
      this.#logger.warn({ code: 'SMTP_E_SPOOL_READ', path: this.path, bytes_max: HOLD_LIST_BYTES_MAX }, 'the hold list is longer than its bound; only its first ids are held');
    }
    const ids = new Set<string>();
    let skipped = 0;
    for (const line of text.split('\n')) {
      const id = line.trim();
      if (id === '') continue;
      if (id.length > ID_CHARS_MAX || !ID_PATTERN.test(id) || ids.size >= HELD_MESSAGES_MAX) skipped++;
      else ids.add(id);
    }
    if (skipped > 0) this.#logger.warn({ code: 'SMTP_E_SPOOL_READ', path: this.path, lines_skipped: skipped }, 'hold list lines skipped: not message ids, or past HELD_MESSAGES_MAX');
    return ids;
  }

  /** Replaces the list with `ids` (an empty list removes the file); resolves once it is in place (durable with fsync). */
  write(ids: Iterable<string>): Promise<void> {
    const text = [...ids].map((id) => `${id}\n`).join('');
    const run = this.#writing.then(() => this.#replace(text));
    this.#writing = run.catch(() => undefined);
    return run;
  }

  /** Resolves when the writes asked for so far are done (whether they worked or not). */
  settled(): Promise<void> {
    return this.#writing;
  }

  async #replace(text: string): Promise<void> {
    try {
      if (text === '') {
        if (!(await unlinkIfPresent(this.path))) return;
      } else {
        await this.#writeTemp(Buffer.from(text, 'latin1'));
        await renamePath(this.#tempPath, this.path);
      }
      if (this.#fsync) await syncDirectory(this.#dir);
    } catch (cause) {
      await unlinkIfPresent(this.#tempPath).catch(() => undefined);
      throw hostError('SMTP_E_SPOOL_WRITE', `cannot write the hold list ${this.path}: ${(cause as Error).message}`, cause);
    }
  }

  async #writeTemp(bytes: Buffer): Promise<void> {
    const fd = await openFd(this.#tempPath, 'w');
    try {
      await writevFd(fd, [bytes], 0);
      if (this.#fsync) await fsyncFd(fd);
    } finally {
      await closeFd(fd);
    }
  }
}

/** The first `bytesMax` bytes of a file (all of it when shorter). */
async function readAtMost(path: string, bytesMax: number): Promise<Buffer> {
  const fd = await openFd(path, 'r');
  try {
    return await readExactly(fd, Math.min(await fstatSize(fd), bytesMax), 0);
  } finally {
    await closeFd(fd);
  }
}
