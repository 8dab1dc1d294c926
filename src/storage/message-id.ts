/**
 * Message ids: unique, filename-safe and sortable by time. Base-36
 * milliseconds padded to 9 characters, a dash, 16 hex digits of randomness
 * (the format the spool has always used).
 */
import { randomBytes } from 'node:crypto';

export const ID_PATTERN = /^[0-9a-z]+-[0-9a-f]+$/;
/** Random bytes drawn at a time: one getrandom per 512 ids instead of one (and a getpid) per message. */
const ID_RANDOM_POOL_BYTES = 4096;
let pool = Buffer.alloc(0);
let poolOffset = 0;

export function newId(): string {
  if (poolOffset + 8 > pool.length) {
    pool = randomBytes(ID_RANDOM_POOL_BYTES);
    poolOffset = 0;
  }
  const random = pool.toString('hex', poolOffset, poolOffset + 8);
  poolOffset += 8;
  // Padded to a fixed width, base-36 milliseconds sort in time order as strings.
  return `${Date.now().toString(36).padStart(9, '0')}-${random}`;
}
