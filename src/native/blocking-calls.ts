/**
 * The hook calls of one blocking native plugin (SMTP_PLUGIN_FLAG_BLOCKING),
 * run off the event loop on a thread of koffi's pool. They run one at a
 * time, in the order they came, as before; what changed is the hand-off:
 * every call that queued in the same turn of the event loop, or while the
 * previous batch ran, goes to the pool in one batch (smtp_host_call_batch),
 * each in its own loaded context, so under load a thread hop is shared by
 * many calls instead of paid by each (a koffi async call costs 30 to 35 us
 * of CPU across threads here; docs/benchmarks.md).
 *
 * Each call keeps its own deadline: a call whose session stopped waiting
 * before it started is skipped and never runs; one already running cannot
 * be stopped (a thread cannot be), so it is marked late and, until it
 * returns, the plugin's calls fail at once (NativePlugin#refusal).
 */
import { hostError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HookContext, MetadataLimits } from '../plugin/hook-context.js';
import { BatchCallState, CallBatch, NativeContextSlot, type ContextGrants, type DeniedListener, type NativePointer } from '../runtime/host-runtime.js';
import { callReturned, callStarted, type PoolCall } from './pool-calls.js';

/** The most calls of one plugin handed to a pool thread at once; the rest wait for the next batch. */
export const BATCH_CALLS_MAX = 32;

interface QueuedCall {
  readonly context: HookContext;
  readonly deadlineMs: number;
  readonly timer: NodeJS.Timeout;
  /** waiting: in the queue; batched: in the running batch, at `index`; late: its session was answered. */
  state: 'waiting' | 'batched' | 'late';
  index: number;
  /** The context it is loaded in while batched. */
  slot: NativeContextSlot | null;
  readonly resolve: (code: number) => void;
  readonly reject: (error: unknown) => void;
}

export interface BlockingCallsOptions {
  readonly plugin: string;
  readonly executeHook: NativePointer;
  readonly hookTimeoutMs: number;
  readonly grants: ContextGrants;
  readonly onDenied: DeniedListener;
  readonly logger: Logger;
  /** No call is waiting or running any more: deferred lifecycle calls may run. */
  readonly onIdle: () => void;
}

export class BlockingCalls {
  readonly #options: BlockingCallsOptions;
  readonly #waiting: QueuedCall[] = [];
  /** The calls in the batch on the pool now, by index. */
  #batched: QueuedCall[] = [];
  #batch: CallBatch | null = null;
  /** One context per call of a batch, by metadata limits; all share the first one's connections. */
  readonly #slots = new Map<MetadataLimits, NativeContextSlot[]>();
  #firstSlot: NativeContextSlot | null = null;
  /** The batch on the pool now, if any. */
  #running: PoolCall | null = null;
  /** A #pump is due at the end of this turn of the event loop. */
  #pumpScheduled = false;
  #released = false;

  constructor(options: BlockingCallsOptions) {
    this.#options = options;
  }

  /** Calls waiting or running. */
  get inFlight(): number {
    return this.#waiting.length + this.#batched.length;
  }

  /** The batch on the pool, if any (its `late` flag: a call of it ran past its deadline). */
  get running(): PoolCall | null {
    return this.#running;
  }

  call(context: HookContext): Promise<number> {
    if (this.#released) return Promise.reject(hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.#options.plugin}": its native contexts were released`));
    return new Promise((resolve, reject) => {
      const call: QueuedCall = {
        context,
        deadlineMs: Date.now() + this.#options.hookTimeoutMs,
        timer: setTimeout(() => this.#late(call), this.#options.hookTimeoutMs),
        state: 'waiting',
        index: -1,
        slot: null,
        resolve,
        reject,
      };
      this.#waiting.push(call);
      this.#schedulePump();
    });
  }

  /**
   * Starts a batch once this turn of the event loop has queued what it will
   * (setImmediate): the message_stored calls of one group commit, say, then
   * share one hand-off instead of the first going alone. While a batch runs,
   * the calls wait for it anyway (#pump runs again when it settles).
   */
  #schedulePump(): void {
    if (this.#pumpScheduled || this.#running !== null) return;
    this.#pumpScheduled = true;
    setImmediate(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  /** Frees the contexts and the batch memory (closing the plugin's connections); only when no call is in flight. */
  release(): void {
    if (this.inFlight > 0) throw hostError('SMTP_E_PLUGIN_STATE', `plugin "${this.#options.plugin}": its contexts were released while a call ran`);
    this.#released = true;
    for (const slots of this.#slots.values()) for (const slot of slots) slot.destroy();
    this.#slots.clear();
    this.#firstSlot = null;
    this.#batch?.release();
    this.#batch = null;
  }

  /** Hands every waiting call (up to BATCH_CALLS_MAX) to a pool thread, unless a batch runs. */
  #pump(): void {
    if (this.#running !== null || this.#waiting.length === 0) return;
    const batch = (this.#batch ??= new CallBatch(BATCH_CALLS_MAX));
    const calls = this.#waiting.splice(0, BATCH_CALLS_MAX);
    const batched: QueuedCall[] = [];
    // Contexts used so far, by limits (almost always one set of limits: one entry).
    const slotsUsed = new Map<MetadataLimits, number>();
    for (const call of calls) {
      const used = slotsUsed.get(call.context.limits) ?? 0;
      try {
        const slot = this.#slot(call.context.limits, used);
        slot.load(call.context);
        // A plugin waiting on the network then gets a timeout by the deadline and returns, rather than being left running.
        slot.setCallDeadline(call.deadlineMs);
        call.index = batched.length;
        call.slot = slot;
        call.state = 'batched';
        batch.set(call.index, slot);
        batched.push(call);
        slotsUsed.set(call.context.limits, used + 1);
      } catch (error) {
        clearTimeout(call.timer);
        call.state = 'late';
        call.reject(error);
      }
    }
    if (batched.length === 0) {
      this.#afterSettling();
      return;
    }
    this.#batched = batched;
    const first = batched[0]!.context.hook;
    const hooks = batched.every((call) => call.context.hook === first) ? first : [...new Set(batched.map((call) => call.context.hook))].join('/');
    this.#running = callStarted(this.#options.plugin, hooks);
    batch.run(this.#options.executeHook, batched.length).then(
      () => this.#returned(batch, batched, null),
      (error: unknown) => this.#returned(batch, batched, error),
    );
  }

  /** The pool thread is done with the batch: each call still awaited gets its result; a late one's is dropped. */
  #returned(batch: CallBatch, batched: readonly QueuedCall[], failure: unknown): void {
    for (const call of batched) {
      const slot = call.slot!;
      call.slot = null;
      const ran = batch.state(call.index) === BatchCallState.done;
      if (call.state === 'late') {
        if (ran) slot.forget();
        continue;
      }
      clearTimeout(call.timer);
      if (failure !== null || !ran) {
        slot.forget();
        call.reject(failure ?? hostError('SMTP_E_PLUGIN_HOOK_CODE', `plugin "${this.#options.plugin}": its ${call.context.hook} call did not run`));
        continue;
      }
      try {
        call.resolve(slot.finish(call.context, batch.packed(call.index)));
      } catch (error) {
        call.reject(error);
      }
    }
    const running = this.#running;
    this.#running = null;
    this.#batched = [];
    if (running !== null) {
      callReturned(running);
      if (running.late) this.#options.logger.warn({ hook: running.hook, running_ms: Math.round(performance.now() - running.startedMs) }, 'a hook call that ran past its deadline returned; its result was dropped, and the plugin takes calls again');
    }
    this.#afterSettling();
  }

  /** The deadline passed: the call's session is answered with SMTP_E_PLUGIN_DEADLINE; if it has not started, it never will. */
  #late(call: QueuedCall): void {
    let where = 'waited behind the plugin\'s previous call past';
    if (call.state === 'waiting') {
      this.#waiting.splice(this.#waiting.indexOf(call), 1);
      call.state = 'late';
      call.reject(this.#deadlineError(call, where));
      this.#afterSettling();
      return;
    }
    if (call.state !== 'batched') return;
    call.state = 'late';
    if (this.#batch === null || !this.#batch.skip(call.index)) {
      where = 'ran past';
      if (this.#running !== null) this.#running.late = true;
    }
    call.reject(this.#deadlineError(call, where));
  }

  #deadlineError(call: QueuedCall, where: string): Error {
    return hostError('SMTP_E_PLUGIN_DEADLINE', `plugin "${this.#options.plugin}": ${call.context.hook} ${where} its ${this.#options.hookTimeoutMs} ms deadline; an in-process thread cannot be stopped, so until it returns this plugin's calls fail at once (isolation = "process" would kill it)`);
  }

  #afterSettling(): void {
    if (this.inFlight === 0) this.#options.onIdle();
    this.#pump();
  }

  /** The `index`th context for calls with `limits`, made on first use with the plugin's grants, sharing the first context's connections. */
  #slot(limits: MetadataLimits, index: number): NativeContextSlot {
    let slots = this.#slots.get(limits);
    if (slots === undefined) {
      slots = [];
      this.#slots.set(limits, slots);
    }
    while (slots.length <= index) {
      const slot = new NativeContextSlot(limits, this.#options.grants, this.#options.onDenied);
      this.#firstSlot ??= slot;
      slot.shareNet(this.#firstSlot);
      slots.push(slot);
    }
    return slots[index]!;
  }
}
