/**
 * Changes a host-side plugin (a milter: src/milter/milter-plugin.ts) made
 * to a message at a message stage, beyond what metadata keys carry: the
 * rewritten message, a new envelope, or "discard". They ride on the stage's
 * HookContext, so they go away with it; the message pipeline takes them
 * after the stage (src/server/message-pipeline.ts).
 */
import type { HookContext } from '../plugin/hook-context.js';

export interface MessageEdits {
  /** The whole message as it is to be stored and delivered (CRLF line ends). */
  readonly raw?: Buffer;
  readonly sender?: string;
  readonly recipients?: readonly string[];
  /** Accept the message (250) and keep nothing of it: not stored, not delivered. */
  readonly discard?: boolean;
}

const edits = new WeakMap<HookContext, MessageEdits>();

/** Records edits on the stage's context; later edits of the same stage win, key by key. */
export function editMessage(context: HookContext, change: MessageEdits): void {
  edits.set(context, { ...edits.get(context), ...change });
}

/** The edits made during the stage, once. */
export function takeMessageEdits(context: HookContext): MessageEdits | undefined {
  const found = edits.get(context);
  edits.delete(context);
  return found;
}
