import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { afterAll, describe, expect, it } from 'vitest';
import { DeliveryQueue, type DeliveryQueueOptions, type QueueSelector } from '../../src/delivery/delivery-queue.js';
import { HOLD_LIST_NAME, HoldList } from '../../src/delivery/hold-list.js';
import { silentLogger } from '../../src/log.js';
import { Spool, type Envelope, type SpooledMessage } from '../../src/storage/spool.js';
import { freePort } from '../helpers/server.js';
import { startSmarthost as startNodeSmarthost, type Smarthost } from '../helpers/smarthost.js';

const MESSAGE = Buffer.from('From: alice@example.org\r\nTo: bob@example.net\r\nSubject: queue operations\r\n\r\nbody\r\n');
/** Several retries' worth of time at RETRY_INITIAL_MS: long enough for an attempt that should not happen to show. */
const QUIET_MS = 500;
const RETRY_INITIAL_MS = 50;

async function openSpool(dir = join(mkdtempSync(join(tmpdir(), 'qo-spool-')), 'spool')): Promise<Spool> {
  const spool = new Spool({ dir, fsync: true });
  await spool.open();
  return spool;
}

/** Closes the queue and the spool and opens new ones on the same directory, as a restart does. */
async function restart(queue: DeliveryQueue, spool: Spool, port: number): Promise<{ queue: DeliveryQueue; spool: Spool }> {
  await queue.stop();
  await spool.close();
  const reopened = await openSpool(spool.dir);
  return { queue: relayQueue(reopened, port), spool: reopened };
}

function relayQueue(spool: Spool, port: number, options: Partial<DeliveryQueueOptions> = {}): DeliveryQueue {
  return new DeliveryQueue({ spool, mode: 'relay', relay: { host: '127.0.0.1', port }, fsync: true, retryInitialMs: RETRY_INITIAL_MS, retryMaxMs: 200, ...options });
}

async function store(spool: Spool, envelope: Envelope): Promise<SpooledMessage> {
  return spool.store(envelope, MESSAGE);
}

/** Polls `check` until it holds; fails after `timeoutMs`. */
async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}


const smarthosts: Smarthost[] = [];

async function startSmarthost(port: number): Promise<Smarthost> {
  const smarthost = await startNodeSmarthost(port);
  smarthosts.push(smarthost);
  return smarthost;
}

afterAll(async () => {
  await Promise.all(smarthosts.map((smarthost) => smarthost.close()));
});

/** A smarthost that holds each DATA until `open()`, then answers as `answer` says; counts the DATA commands it got. */
async function gatedSmarthost(answer: 'accept' | 'temporary'): Promise<{ port: number; data: string[][]; open(): void; close(): Promise<void> }> {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const data: string[][] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onData: (stream, session, callback) => {
      stream.resume();
      stream.on('end', () => {
        data.push(session.envelope.rcptTo.map((r) => r.address));
        void gate.then(() => (answer === 'accept' ? callback() : callback(Object.assign(new Error('4.3.0 try again later'), { responseCode: 451 }))));
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.server.address() as AddressInfo;
  return { port, data, open, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A queue delivering one at a time to `sink`: one message in its attempt (held at the sink's gate), one waiting behind it. */
async function oneInFlightOneWaiting(sink: { port: number; data: string[][] }): Promise<{ spool: Spool; queue: DeliveryQueue; inFlight: SpooledMessage; waiting: SpooledMessage }> {
  const spool = await openSpool();
  const queue = relayQueue(spool, sink.port, { concurrency: 1 });
  const inFlight = await store(spool, { from: 'alice@example.org', to: ['first@example.net'] });
  const waiting = await store(spool, { from: 'alice@example.org', to: ['second@example.net'] });
  queue.enqueue(inFlight);
  queue.enqueue(waiting);
  await waitFor(() => sink.data.length === 1, 5000, 'the first DATA');
  return { spool, queue, inFlight, waiting };
}

describe('DeliveryQueue operations', () => {
  it('lists a message the relay could not take as deferred, with the reason and the retry time; flush retries it at once, keeping its backoff, and delivers it once the relay is up', async () => {
    const port = await freePort();
    const spool = await openSpool();
    // A first retry about a minute away: only a flush can deliver it within the test's wait.
    const queue = relayQueue(spool, port, { retryInitialMs: 60_000, retryMaxMs: 600_000 });
    const message = await store(spool, { from: 'alice@example.org', to: ['bob@example.net', 'carol@example.net'] });
    queue.enqueue(message);
    await waitFor(() => queue.list()[0]?.state === 'deferred', 5000, 'the deferral');

    const [entry] = queue.list();
    expect(entry).toMatchObject({
      id: message.id,
      receivedAt: message.receivedAt,
      sender: 'alice@example.org',
      recipients: ['bob@example.net', 'carol@example.net'],
      pending: ['bob@example.net', 'carol@example.net'],
      size: MESSAGE.length,
      state: 'deferred',
      attempts: 1,
    });
    expect(entry!.lastError).toMatch(/^bob@example\.net, carol@example\.net: .*ECONNREFUSED/);
    expect(entry!.ageSeconds).toBeGreaterThanOrEqual(0);
    expect(entry!.ageSeconds).toBeLessThan(10);
    const retryInMs = Date.parse(entry!.nextAttemptAt!) - Date.now();
    expect(retryInMs).toBeGreaterThan(45_000);
    expect(retryInMs).toBeLessThanOrEqual(60_000);
    expect(queue.summary()).toEqual({ depth: 1, oldestReceivedAt: message.receivedAt, ready: 0, delivering: 0, deferred: 1, held: 0 });

    // Flushed while the relay is still down: the failure waits the second backoff (twice the first), not the first again.
    expect(queue.flush({ ids: [message.id] })).toEqual({ ids: [message.id], busy: [] });
    await waitFor(() => queue.list()[0]?.attempts === 2 && queue.list()[0]?.state === 'deferred', 5000, 'the flushed attempt');
    expect(Date.parse(queue.list()[0]!.nextAttemptAt!) - Date.now()).toBeGreaterThan(100_000);

    const sink = await startSmarthost(port);
    expect(queue.flush({ all: true })).toEqual({ ids: [message.id], busy: [] });
    await waitFor(() => sink.transactions.length === 1, 5000, 'delivery after the flush');
    await queue.idle();
    expect(sink.transactions[0]!.to).toEqual(['bob@example.net', 'carol@example.net']);
    expect(queue.list()).toEqual([]);
    expect(await spool.list()).toEqual([]);
    expect(queue.summary()).toEqual({ depth: 0, oldestReceivedAt: null, ready: 0, delivering: 0, deferred: 0, held: 0 });
    await queue.stop();
  });

  it('does not deliver a held message, not even when flushed nor after a restart, and delivers it once released', async () => {
    const port = await freePort();
    let spool = await openSpool();
    let queue = relayQueue(spool, port);
    const message = await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] });
    queue.enqueue(message);
    await waitFor(() => queue.list()[0]?.state === 'deferred', 5000, 'the deferral');

    expect(await queue.hold({ ids: [message.id] })).toEqual({ ids: [message.id], busy: [] });
    expect(queue.list()[0]).toMatchObject({ state: 'held', nextAttemptAt: null });
    expect(queue.list()[0]!.attempts).toBeGreaterThanOrEqual(1);
    expect(queue.list()[0]!.lastError).toMatch(/ECONNREFUSED/);
    expect(await queue.hold({ ids: [message.id] })).toEqual({ ids: [], busy: [] });
    const sink = await startSmarthost(port);
    expect(queue.flush({ all: true })).toEqual({ ids: [], busy: [] });
    await sleep(QUIET_MS);
    await queue.idle(); // nothing left to do by itself
    expect(sink.transactions).toEqual([]);
    expect(queue.summary()).toMatchObject({ depth: 1, held: 1 });

    ({ queue, spool } = await restart(queue, spool, port));
    expect(await queue.recover()).toBe(1);
    expect(queue.list()).toEqual([expect.objectContaining({ id: message.id, state: 'held', attempts: 0, lastError: null })]);
    await sleep(QUIET_MS);
    expect(sink.transactions).toEqual([]);
    expect(spool.has(message.id)).toBe(true);

    expect(await queue.release({ all: true })).toEqual({ ids: [message.id], busy: [] });
    await waitFor(() => sink.transactions.length === 1, 5000, 'delivery after the release');
    await queue.idle();
    expect(await spool.list()).toEqual([]);
    expect(existsSync(join(spool.dir, HOLD_LIST_NAME))).toBe(false);
    await queue.stop();
  });

  it('deletes one of two messages: only the other is ever delivered, and the deleted one is not recovered after a restart', async () => {
    const port = await freePort();
    let spool = await openSpool();
    let queue = relayQueue(spool, port);
    const doomed = await store(spool, { from: 'alice@example.org', to: ['doomed@example.net'] });
    const kept = await store(spool, { from: 'alice@example.org', to: ['kept@example.net'] });
    queue.enqueue(doomed);
    queue.enqueue(kept);
    await waitFor(() => queue.summary().deferred === 2, 5000, 'both deferred');

    expect(await queue.delete({ ids: [doomed.id] })).toEqual({ ids: [doomed.id], busy: [] });
    expect(queue.list().map((entry) => entry.id)).toEqual([kept.id]);
    expect(spool.has(doomed.id)).toBe(false);

    const sink = await startSmarthost(port);
    ({ queue, spool } = await restart(queue, spool, port));
    expect(await queue.recover()).toBe(1);
    await queue.idle();
    expect(sink.transactions.map((t) => t.to)).toEqual([['kept@example.net']]);
    expect(await spool.list()).toEqual([]);
    await queue.stop();
  });

  it('selects by id, sender and recipient (an exact address or a domain, case-insensitive); an empty selector selects nothing', async () => {
    const port = await freePort();
    const spool = await openSpool();
    const queue = relayQueue(spool, port, { retryInitialMs: 60_000, retryMaxMs: 60_000 });
    const one = await store(spool, { from: 'Alice@One.example', to: ['x@dest.example'] });
    const two = await store(spool, { from: 'bob@two.example', to: ['y@other.example', 'Z@DEST.EXAMPLE'] });
    const bounce = await store(spool, { from: '', to: ['w@other.example'] });
    for (const message of [one, two, bounce]) queue.enqueue(message);
    await waitFor(() => queue.summary().deferred === 3, 5000, 'all three deferred');

    const ids = (selector: QueueSelector): string[] => queue.list(selector).map((entry) => entry.id);
    expect(queue.list().map((entry) => entry.id)).toEqual([one.id, two.id, bounce.id]);
    expect(ids({ all: true })).toEqual([one.id, two.id, bounce.id]);
    expect(ids({ sender: '@one.example' })).toEqual([one.id]);
    expect(ids({ sender: 'ONE.EXAMPLE' })).toEqual([one.id]);
    expect(ids({ sender: 'alice@one.example' })).toEqual([one.id]);
    expect(ids({ sender: 'example' })).toEqual([]); // a domain, not a suffix
    expect(ids({ recipient: 'dest.example' })).toEqual([one.id, two.id]);
    expect(ids({ recipient: '@other.example' })).toEqual([two.id, bounce.id]);
    expect(ids({ recipient: 'y@other.example' })).toEqual([two.id]);
    expect(ids({ sender: 'two.example', recipient: 'dest.example' })).toEqual([two.id]);
    expect(ids({ ids: [one.id, bounce.id], recipient: 'other.example' })).toEqual([bounce.id]);
    for (const empty of [{}, { all: false }, { sender: '' }, { ids: [] }]) expect(ids(empty), JSON.stringify(empty)).toEqual([]);

    expect(await queue.hold({})).toEqual({ ids: [], busy: [] });
    expect(queue.flush({})).toEqual({ ids: [], busy: [] });
    expect(await queue.delete({})).toEqual({ ids: [], busy: [] });
    expect(await queue.hold({ recipient: 'other.example' })).toEqual({ ids: [two.id, bounce.id], busy: [] });
    expect(queue.summary()).toEqual({ depth: 3, oldestReceivedAt: one.receivedAt, ready: 0, delivering: 0, deferred: 1, held: 2 });
    expect(await queue.release({ sender: 'bob@two.example' })).toEqual({ ids: [two.id], busy: [] });
    expect(await queue.delete({ sender: 'one.example' })).toEqual({ ids: [one.id], busy: [] });
    expect(queue.list().map((entry) => [entry.id, entry.state])).toEqual([
      [two.id, expect.stringMatching(/^(ready|delivering|deferred)$/)],
      [bounce.id, 'held'],
    ]);
    await queue.stop();
  });

  it('leaves an entry being delivered to its attempt: delete names it busy; hold stops its retry after the attempt fails', async () => {
    const sink = await gatedSmarthost('temporary');
    try {
      const { spool, queue, inFlight, waiting } = await oneInFlightOneWaiting(sink);
      expect(queue.list().map((entry) => entry.state)).toEqual(['delivering', 'ready']);
      expect(queue.summary()).toMatchObject({ depth: 2, delivering: 1, ready: 1 });

      expect(await queue.delete({ all: true })).toEqual({ ids: [waiting.id], busy: [inFlight.id] });
      expect(spool.has(inFlight.id)).toBe(true);
      expect(spool.has(waiting.id)).toBe(false);

      expect(await queue.hold({ ids: [inFlight.id] })).toEqual({ ids: [inFlight.id], busy: [] });
      expect(queue.list()[0]!.state).toBe('delivering');
      sink.open();
      await waitFor(() => queue.list()[0]?.state === 'held', 5000, 'the attempt to end');
      expect(queue.list()[0]).toMatchObject({ attempts: 1, nextAttemptAt: null });
      expect(queue.list()[0]!.lastError).toMatch(/first@example\.net: .*451/);
      await sleep(QUIET_MS);
      expect(sink.data).toEqual([['first@example.net']]);
      await queue.idle();
      await queue.stop();
    } finally {
      await sink.close();
    }
  });

  it('forgets a message held during an attempt that delivers it; its id leaves the hold list at the next rewrite', async () => {
    const sink = await gatedSmarthost('accept');
    try {
      const { spool, queue, inFlight, waiting } = await oneInFlightOneWaiting(sink);

      expect(await queue.hold({ all: true })).toEqual({ ids: [inFlight.id, waiting.id], busy: [] });
      expect(queue.list().map((entry) => entry.state)).toEqual(['delivering', 'held']);
      const holdList = join(spool.dir, HOLD_LIST_NAME);
      expect(readFileSync(holdList, 'utf8')).toBe(`${inFlight.id}\n${waiting.id}\n`);

      sink.open();
      await waitFor(() => queue.list().length === 1, 5000, 'the first delivery');
      await queue.idle();
      expect(spool.has(inFlight.id)).toBe(false);
      expect(queue.list().map((entry) => [entry.id, entry.state])).toEqual([[waiting.id, 'held']]);
      await sleep(QUIET_MS);
      expect(sink.data).toEqual([['first@example.net']]);

      expect(await queue.release({ all: true })).toEqual({ ids: [waiting.id], busy: [] });
      // Neither the delivered id nor the released one is listed any more: the file goes.
      expect(existsSync(holdList)).toBe(false);
      await waitFor(() => sink.data.length === 2, 5000, 'the released delivery');
      await queue.idle();
      expect(await spool.list()).toEqual([]);
      await queue.stop();
    } finally {
      await sink.close();
    }
  });

  it('in mode none, drops what is not held and leaves a held message in the spool', async () => {
    const spool = await openSpool();
    const held = await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] });
    await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] });
    await new HoldList({ dir: spool.dir, fsync: true, logger: silentLogger() }).write([held.id]);
    const queue = new DeliveryQueue({ spool, mode: 'none', fsync: true });
    await queue.recover();
    await queue.idle();
    expect((await spool.list()).map((m) => m.id)).toEqual([held.id]);
    expect(queue.list()).toEqual([]);
    await queue.stop();
  });
});
