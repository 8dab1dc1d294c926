/**
 * The spool's previous layout, two files per message in the spool
 * directory: <id>.eml (the bytes) and <id>.json (envelope, progress). At
 * open, every readable pair is adopted into the segment log without loss;
 * and large/ is swept of files no live message references.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { errorCode, renamePath, unlinkIfPresent } from './fs-raw.js';
import type { Envelope } from './incoming.js';
import { ID_PATTERN } from './message-id.js';
import { BodyKind, encodeStore } from './record.js';
import type { Entry } from './recovery.js';
import type { Position, SegmentLog } from './segment-log.js';

/** Temp files of the old layout were dot files: `.tmp-<id>.<nonce>.<ext>`. */
const OLD_TEMP_PREFIX = '.tmp-';

/** What adoption needs from the spool. */
export interface Adoption {
  readonly dir: string;
  readonly largeDir: string;
  readonly logger: Logger;
  readonly log: SegmentLog;
  isLive(id: string): boolean;
  largePath(id: string): string;
  makeLargeDir(): Promise<void>;
  /** Puts an adopted message in the index once its STORE is durable (an AppendHooks.onWritten). */
  makeLive(entry: Entry, position: Position): void;
}

/** What <id>.json held in the previous layout (two files per message). */
export interface OldRecord {
  readonly id: string;
  readonly envelope: Envelope;
  readonly size: number;
  readonly receivedAt: string;
  readonly extra: Record<string, string>;
  readonly delivered: string[];
}

export function isOldRecord(value: unknown): value is OldRecord {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Partial<OldRecord>;
  const strings = (list: unknown): boolean => Array.isArray(list) && list.every((item) => typeof item === 'string');
  const stringMap = (map: unknown): boolean => typeof map === 'object' && map !== null && Object.values(map).every((v) => typeof v === 'string');
  return (
    typeof record.id === 'string' &&
    typeof record.envelope === 'object' &&
    record.envelope !== null &&
    typeof record.envelope.from === 'string' &&
    strings(record.envelope.to) &&
    typeof record.size === 'number' &&
    typeof record.receivedAt === 'string' &&
    stringMap(record.extra) &&
    strings(record.delivered)
  );
}

/** The record in an old <id>.json; throws with the reason when it is not one. */
export async function readOldRecord(path: string, id: string): Promise<OldRecord> {
  const text = await readFile(path, 'utf8');
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch {
    throw new Error('it is not JSON');
  }
  if (!isOldRecord(record) || record.id !== id) throw new Error('it is not a spool record');
  return record;
}

/**
 * Adopts <id>.eml + <id>.json pairs of the previous layout: the .eml is
 * renamed into large/, a STORE record referencing it is written durably,
 * then the .json is removed. A crash between the steps is picked up at
 * the next open: a .json whose id is already live is only removed. An
 * entry that cannot be read is skipped but left in place, since it may
 * hold acknowledged mail; leftovers of an interrupted old store (temp
 * files, an .eml without its .json) are removed.
 */
export async function adoptOldLayout(context: Adoption, names: readonly string[]): Promise<{ adopted: number; kept: Set<string> }> {
  const { dir, log, logger } = context;
  const jsons = new Set<string>();
  const emls = new Set<string>();
  const leftovers: string[] = [];
  for (const name of names) {
    if (name.startsWith(OLD_TEMP_PREFIX)) leftovers.push(name);
    else if (name.endsWith('.json') && ID_PATTERN.test(name.slice(0, -5))) jsons.add(name.slice(0, -5));
    else if (name.endsWith('.eml') && ID_PATTERN.test(name.slice(0, -4))) emls.add(name.slice(0, -4));
  }
  for (const id of emls) if (!jsons.has(id)) leftovers.push(`${id}.eml`);
  const kept = new Set<string>();
  const done: string[] = [];
  const stores: Promise<Position>[] = [];
  for (const id of jsons) {
    const jsonPath = join(dir, `${id}.json`);
    if (context.isLive(id)) {
      done.push(id);
      continue;
    }
    let record: OldRecord;
    let emlPath = join(dir, `${id}.eml`);
    try {
      record = await readOldRecord(jsonPath, id);
      if (!emls.has(id)) emlPath = context.largePath(id);
      const { size } = await stat(emlPath);
      if (size !== record.size) throw new Error(`${emlPath} holds ${size} bytes, its record says ${record.size}`);
    } catch (error) {
      kept.add(id);
      logger.warn({ code: 'SMTP_E_SPOOL_READ', id, path: jsonPath, err: error }, 'skipping a spool entry of the previous layout that cannot be read; it is left in place');
      continue;
    }
    if (emlPath !== context.largePath(id)) {
      await context.makeLargeDir();
      await renamePath(emlPath, context.largePath(id));
      log.dirChanged();
      log.largeChanged();
    }
    const entry: Entry = {
      id,
      envelope: { from: record.envelope.from, to: [...record.envelope.to] },
      size: record.size,
      receivedAt: record.receivedAt,
      extra: { ...record.extra },
      delivered: [...record.delivered],
      path: context.largePath(id),
      sequence: 0,
      offset: 0,
      bytes: 0,
    };
    const storeRecord = encodeStore({ id, receivedAt: entry.receivedAt, from: entry.envelope.from, to: entry.envelope.to, delivered: entry.delivered, extra: entry.extra, size: entry.size, bodyKind: BodyKind.FILE }, []);
    stores.push(log.append(storeRecord, true, { onWritten: (position) => context.makeLive(entry, position) }));
    done.push(id);
  }
  // Every STORE in one batch and one fsync; only then may the .json files go.
  await Promise.all(stores);
  const removals = [...done.map((id) => `${id}.json`), ...leftovers];
  await Promise.all(removals.map((name) => unlinkIfPresent(join(dir, name))));
  if (removals.length > 0) {
    log.dirChanged();
    await log.syncDirectory();
  }
  if (stores.length > 0 || leftovers.length > 0) logger.info({ adopted: stores.length, leftovers_removed: leftovers.length, kept: kept.size }, 'spool entries of the previous layout adopted');
  return { adopted: stores.length, kept };
}

/** Unlinks large/<id>.eml files that no live message references (a store cut short, a removal whose unlink did not happen). */
export async function removeOrphans(context: Adoption, kept: ReadonlySet<string>): Promise<number> {
  const { largeDir, logger } = context;
  let names: string[];
  try {
    names = await readdir(largeDir);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return 0;
    throw error;
  }
  let removed = 0;
  for (const name of names) {
    const id = name.endsWith('.eml') ? name.slice(0, -4) : '';
    if (!ID_PATTERN.test(id)) {
      logger.warn({ code: 'SMTP_E_SPOOL_READ', path: join(largeDir, name) }, 'unexpected file in the spool; left in place');
      continue;
    }
    if (context.isLive(id) || kept.has(id)) continue;
    await unlinkIfPresent(join(largeDir, name));
    removed++;
  }
  if (removed > 0) logger.info({ code: 'SMTP_E_SPOOL_READ', files: removed }, 'removed message files no live record references');
  return removed;
}
