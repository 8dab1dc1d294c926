import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { afterAll, describe, expect, it } from 'vitest';
import { DeliveryQueue, type DeliveryMode, type DeliveryQueueOptions } from '../../src/delivery/delivery-queue.js';
import { MaildirError, deliverToMaildir } from '../../src/delivery/maildir.js';
import { Spool, type Envelope, type SpooledMessage } from '../../src/storage/spool.js';
import { startSmarthost as startNodeSmarthost, type RcptAnswer, type Smarthost } from '../helpers/smarthost.js';

const MESSAGE = Buffer.from(
  'From: alice@example.org\r\nTo: bob@example.net\r\nSubject: delivery test\r\nMessage-ID: <dq@example.org>\r\n\r\nline one\r\n.leading dot\r\nlast line \xe9\r\n',
  'latin1',
);

function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

async function openSpool(): Promise<Spool> {
  const spool = new Spool({ dir: join(tempDir('dq-spool-'), 'spool'), fsync: true });
  await spool.open();
  return spool;
}

/** Polls `check` until it holds; fails after `timeoutMs`. */
async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A loopback port nothing listens on (just released by the kernel). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Every smarthost started, closed in afterAll. */
const smarthosts: Smarthost[] = [];

async function startSmarthost(port: number, rcpt: RcptAnswer = 'accept'): Promise<Smarthost> {
  const smarthost = await startNodeSmarthost(port, rcpt);
  smarthosts.push(smarthost);
  return smarthost;
}

interface Recorder {
  delivered: { id: string; recipient: string; mode: DeliveryMode; path?: string }[];
  bounced: { id: string; reason: string }[];
}

function queueWith(spool: Spool, options: Partial<DeliveryQueueOptions> & { mode: DeliveryMode }): { queue: DeliveryQueue; seen: Recorder } {
  const seen: Recorder = { delivered: [], bounced: [] };
  const queue = new DeliveryQueue({
    spool,
    fsync: true,
    retryInitialMs: 50,
    retryMaxMs: 200,
    onDelivered: (message, recipient, detail) => {
      seen.delivered.push({ id: message.id, recipient, ...detail });
    },
    onBounced: (message, reason) => {
      seen.bounced.push({ id: message.id, reason });
    },
    ...options,
  });
  return { queue, seen };
}

async function store(spool: Spool, envelope: Envelope): Promise<SpooledMessage> {
  return spool.store(envelope, MESSAGE);
}

afterAll(async () => {
  await Promise.all(smarthosts.map((smarthost) => smarthost.close()));
});

describe('deliverToMaildir', () => {
  it('refuses recipients that are not a plain folder name under the root', async () => {
    const spool = await openSpool();
    const message = await store(spool, { from: 'a@example.org', to: ['x@example.net'] });
    const root = join(tempDir('dq-maildir-'), 'root');
    for (const bad of ['..', '.', '../escape@example.net', 'a/b@example.net', 'a\\b', 'nul\0@example.net', '.hidden@example.net', '', 'x'.repeat(256)]) {
      const error = await deliverToMaildir(root, bad, message, true).catch((e: unknown) => e);
      expect(error, bad).toBeInstanceOf(MaildirError);
      expect((error as MaildirError).code).toBe('SMTP_E_DELIVERY_MAILDIR');
      expect((error as MaildirError).permanent).toBe(true);
    }
    expect(existsSync(root)).toBe(false);
  });
});

describe('DeliveryQueue, mode maildir', () => {
  it('delivers one file per recipient into new/ with the exact bytes, then empties the spool', async () => {
    const spool = await openSpool();
    const root = join(tempDir('dq-maildir-'), 'mail');
    const { queue, seen } = queueWith(spool, { mode: 'maildir', maildirRoot: root });
    const recipients = ['bob@example.net', 'carol@example.net'];
    const message = await store(spool, { from: 'alice@example.org', to: recipients });
    queue.enqueue(message);
    queue.enqueue(message); // queued once only
    await queue.idle();

    for (const recipient of recipients) {
      for (const sub of ['tmp', 'new', 'cur']) expect(existsSync(join(root, recipient, sub))).toBe(true);
      const files = readdirSync(join(root, recipient, 'new'));
      expect(files).toHaveLength(1);
      expect(files[0]).toMatch(new RegExp(`^\\d+\\.${process.pid}_[0-9a-f]+\\.`));
      expect(readFileSync(join(root, recipient, 'new', files[0]!))).toEqual(MESSAGE);
      expect(readdirSync(join(root, recipient, 'tmp'))).toEqual([]);
    }
    expect(seen.delivered.map((d) => [d.recipient, d.mode, d.path])).toEqual(
      recipients.map((r) => [r, 'maildir', join(root, r, 'new', readdirSync(join(root, r, 'new'))[0]!)]),
    );
    expect(queue.stats).toEqual({ delivered: 2, deferred: 0, bounced: 0 });
    expect(await spool.list()).toEqual([]);
    await queue.stop();
  });

  it('bounces a path-escaping recipient with a reason, delivers the others, writes nothing outside the root', async () => {
    const spool = await openSpool();
    const base = tempDir('dq-maildir-');
    const root = join(base, 'mail');
    const { queue, seen } = queueWith(spool, { mode: 'maildir', maildirRoot: root });
    const message = await store(spool, { from: 'alice@example.org', to: ['ok@example.net', '../escaped', '..', 'a/../../b'] });
    queue.enqueue(message);
    await queue.idle();

    expect(readdirSync(base)).toEqual(['mail']);
    expect(readdirSync(root)).toEqual(['ok@example.net']);
    expect(seen.delivered.map((d) => d.recipient)).toEqual(['ok@example.net']);
    expect(seen.bounced).toHaveLength(1);
    expect(seen.bounced[0]!.id).toBe(message.id);
    expect(seen.bounced[0]!.reason).toContain('../escaped');
    expect(seen.bounced[0]!.reason).toContain('a/../../b');
    expect(queue.stats).toEqual({ delivered: 1, deferred: 0, bounced: 1 });

    expect(await spool.list()).toEqual([]);
    const record = JSON.parse(readFileSync(join(spool.dir, 'bounced', `${message.id}.json`), 'utf8')) as { reason: Record<string, string> };
    expect(record.reason.reason).toBe(seen.bounced[0]!.reason);
    expect(record.reason.failed_recipients).toBe('../escaped,..,a/../../b');
    expect(record.reason.delivered_recipients).toBe('ok@example.net');
    expect(readFileSync(join(spool.dir, 'bounced', `${message.id}.eml`))).toEqual(MESSAGE);
    await queue.stop();
  });

  it('delivers a large message (its own file) and an inline one given with its body, byte-exact', async () => {
    const spool = await openSpool();
    const root = join(tempDir('dq-maildir-'), 'mail');
    const { queue } = queueWith(spool, { mode: 'maildir', maildirRoot: root });
    const large = Buffer.concat([Buffer.from('Subject: large\r\n\r\n'), Buffer.alloc(3 * 2 ** 20, 'x')]);
    const big = await spool.store({ from: 'a@example.org', to: ['big@example.net'] }, large);
    expect(big.path).toBeDefined();
    const small = await store(spool, { from: 'a@example.org', to: ['small@example.net'] });
    queue.enqueue(big);
    queue.enqueue(small, MESSAGE);
    await queue.idle();
    const only = (box: string): Buffer => readFileSync(join(root, box, 'new', readdirSync(join(root, box, 'new'))[0]!));
    expect(only('big@example.net').equals(large)).toBe(true);
    expect(only('small@example.net')).toEqual(MESSAGE);
    expect(await spool.list()).toEqual([]);
    await queue.stop();
  });

  it('recover(): a new queue delivers what the spool held, skipping recipients already delivered', async () => {
    const spool = await openSpool();
    const root = join(tempDir('dq-maildir-'), 'mail');
    const stored = [
      await store(spool, { from: 'a@example.org', to: ['one@example.net'] }),
      await store(spool, { from: 'a@example.org', to: ['two@example.net', 'three@example.net'] }),
      await store(spool, { from: '', to: ['one@example.net'] }),
    ];
    // A previous run got as far as two@ for the second message.
    await spool.markDelivered(stored[1]!.id, 'two@example.net');
    await spool.close();

    const restarted = new Spool({ dir: spool.dir, fsync: true });
    await restarted.open();
    const { queue, seen } = queueWith(restarted, { mode: 'maildir', maildirRoot: root });
    expect(await queue.recover()).toBe(3);
    await queue.idle();
    expect(readdirSync(join(root, 'one@example.net', 'new'))).toHaveLength(2);
    expect(readdirSync(join(root, 'three@example.net', 'new'))).toHaveLength(1);
    expect(existsSync(join(root, 'two@example.net'))).toBe(false);
    expect(seen.delivered.map((d) => d.recipient).sort()).toEqual(['one@example.net', 'one@example.net', 'three@example.net']);
    expect(await restarted.list()).toEqual([]);
    expect(await queue.recover()).toBe(0);
    await queue.stop();
  });
});

describe('DeliveryQueue, mode none', () => {
  it('drops the spool entry and delivers nothing', async () => {
    const spool = await openSpool();
    const { queue, seen } = queueWith(spool, { mode: 'none' });
    queue.enqueue(await store(spool, { from: 'a@example.org', to: ['b@example.net'] }));
    await queue.idle();
    expect(await spool.list()).toEqual([]);
    expect(seen.delivered).toEqual([]);
    expect(seen.bounced).toEqual([]);
    await queue.stop();
  });
});

describe('DeliveryQueue, mode relay (a Node smarthost downstream)', () => {
  it('relays the message bytes in one transaction to every recipient', async () => {
    const port = await freePort();
    const sink = await startSmarthost(port);
    const spool = await openSpool();
    const { queue, seen } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port, name: 'relay-test.example' } });
    const message = await store(spool, { from: 'alice@example.org', to: ['bob@example.net', 'carol@example.net'] });
    queue.enqueue(message);
    await queue.idle();

    expect(queue.stats).toEqual({ delivered: 2, deferred: 0, bounced: 0 });
    expect(seen.delivered.map((d) => [d.recipient, d.mode])).toEqual([
      ['bob@example.net', 'relay'],
      ['carol@example.net', 'relay'],
    ]);
    expect(await spool.list()).toEqual([]);
    await waitFor(() => sink.transactions.length === 1, 5000, 'the transaction');
    const [transaction] = sink.transactions;
    expect(transaction!.helo).toBe('relay-test.example');
    expect(transaction!.from).toBe('alice@example.org');
    expect(transaction!.to).toEqual(['bob@example.net', 'carol@example.net']);
    expect(transaction!.data).toEqual(MESSAGE);
    await queue.stop();
    await sink.close();
  });

  it('relays a 20 MB message streamed from its file, byte-exact', async () => {
    const port = await freePort();
    const sink = await startSmarthost(port);
    const spool = await openSpool();
    const { queue } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port } });
    const line = Buffer.from('a line of a large message, long enough to be a line\r\n');
    const body = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), ...Array.from({ length: Math.ceil((20 * 2 ** 20) / line.length) }, () => line)]);
    const chunks = async function* (): AsyncGenerator<Buffer> {
      for (let at = 0; at < body.length; at += 64 * 1024) yield body.subarray(at, at + 64 * 1024);
    };
    const message = await spool.store({ from: 'alice@example.org', to: ['bob@example.net'] }, chunks());
    expect(message.path).toBeDefined();
    queue.enqueue(message);
    await queue.idle();
    expect(queue.stats).toEqual({ delivered: 1, deferred: 0, bounced: 0 });
    expect(sink.transactions).toHaveLength(1);
    expect(sink.transactions[0]!.data.equals(body)).toBe(true);
    // Removed from the spool; its file goes once the DONE is durable (at the latest when the spool closes).
    await spool.close();
    expect(existsSync(message.path!)).toBe(false);
    await queue.stop();
    await sink.close();
  });

  it('defers while the smarthost is down, keeps the entry, and delivers once it is up', async () => {
    const port = await freePort();
    const spool = await openSpool();
    const { queue, seen } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port } });
    const message = await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] });
    queue.enqueue(message);
    await waitFor(() => queue.stats.deferred >= 2, 5000, 'two deferrals');
    expect((await spool.list()).map((m) => m.id)).toEqual([message.id]);
    expect(seen.delivered).toEqual([]);

    const sink = await startSmarthost(port);
    await waitFor(() => queue.stats.delivered === 1, 10_000, 'delivery after the smarthost came up');
    await queue.idle();
    expect(await spool.list()).toEqual([]);
    expect(queue.stats.bounced).toBe(0);
    await waitFor(() => sink.transactions.length === 1, 5000, 'the transaction');
    expect(sink.transactions[0]!.data).toEqual(MESSAGE);
    await queue.stop();
    await sink.close();
  });

  it('bounces at once when the smarthost answers 5xx to RCPT (as smtp-sink -f RCPT did)', async () => {
    const port = await freePort();
    const sink = await startSmarthost(port, 'permanent');
    const spool = await openSpool();
    const { queue, seen } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port } });
    const message = await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] });
    queue.enqueue(message);
    await queue.idle();
    expect(queue.stats).toEqual({ delivered: 0, deferred: 0, bounced: 1 });
    expect(seen.bounced).toHaveLength(1);
    expect(seen.bounced[0]!.reason).toMatch(/bob@example\.net: 5\d\d /);
    expect(await spool.list()).toEqual([]);
    expect(existsSync(join(spool.dir, 'bounced', `${message.id}.json`))).toBe(true);
    expect(sink.transactions).toEqual([]);
    await queue.stop();
    await sink.close();
  });

  it('retries 4xx answers and bounces after maxAttempts (as smtp-sink -r RCPT did)', async () => {
    const port = await freePort();
    const sink = await startSmarthost(port, 'temporary');
    const spool = await openSpool();
    const { queue, seen } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port }, retryInitialMs: 20, maxAttempts: 3 });
    const message = await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] });
    queue.enqueue(message);
    await queue.idle();
    expect(queue.stats).toEqual({ delivered: 0, deferred: 2, bounced: 1 });
    expect(seen.bounced[0]!.reason).toMatch(/bob@example\.net: 4\d\d .*gave up after 3 attempts/);
    const record = JSON.parse(readFileSync(join(spool.dir, 'bounced', `${message.id}.json`), 'utf8')) as { reason: Record<string, string> };
    expect(record.reason.attempts).toBe('3');
    await queue.stop();
    await sink.close();
  });

  it('limits concurrent relay connections', async () => {
    const port = await freePort();
    let open = 0;
    let peak = 0;
    const received: string[] = [];
    const server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onConnect: (_session, callback) => {
        open++;
        peak = Math.max(peak, open);
        callback();
      },
      onClose: () => {
        open--;
      },
      onData: (stream, session, callback) => {
        stream.resume();
        // Slow enough that the queue would open more connections if it could.
        stream.on('end', () => setTimeout(() => (received.push(session.envelope.rcptTo[0]!.address), callback()), 30));
      },
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    try {
      const spool = await openSpool();
      const { queue } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port }, concurrency: 2 });
      const messages = await Promise.all(Array.from({ length: 8 }, (_, i) => store(spool, { from: 'a@example.org', to: [`r${i}@example.net`] })));
      for (const message of messages) queue.enqueue(message);
      await queue.idle();
      expect(received.sort()).toEqual(messages.map((_, i) => `r${i}@example.net`).sort());
      expect(peak).toBeLessThanOrEqual(2);
      expect(queue.stats.delivered).toBe(8);
      await queue.stop();
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('records recipients a smarthost took when it refused others, and never sends to them again', async () => {
    const port = await freePort();
    const transactions: string[][] = [];
    let deferCarol = true;
    const server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onRcptTo: (address, _session, callback) => {
        if (address.address.startsWith('dave@')) return callback(Object.assign(new Error('no such user'), { responseCode: 550 }));
        if (address.address.startsWith('carol@') && deferCarol) return callback(Object.assign(new Error('try later'), { responseCode: 451 }));
        callback();
      },
      onData: (stream, session, callback) => {
        stream.resume();
        stream.on('end', () => {
          transactions.push(session.envelope.rcptTo.map((r) => r.address));
          callback();
        });
      },
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    try {
      const spool = await openSpool();
      const { queue, seen } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port } });
      const message = await store(spool, { from: 'a@example.org', to: ['bob@example.net', 'carol@example.net', 'dave@example.net'] });
      queue.enqueue(message);
      await waitFor(() => queue.stats.deferred >= 1, 5000, 'a deferral');
      expect(transactions).toEqual([['bob@example.net']]);
      const [pending] = await spool.list();
      expect(pending!.delivered).toEqual(['bob@example.net']);
      deferCarol = false;
      await queue.idle();
      expect(transactions).toEqual([['bob@example.net'], ['carol@example.net']]);
      expect(seen.delivered.map((d) => d.recipient)).toEqual(['bob@example.net', 'carol@example.net']);
      expect(seen.bounced).toHaveLength(1);
      expect(seen.bounced[0]!.reason).toMatch(/^dave@example\.net: 550 /);
      expect(await spool.list()).toEqual([]);
      await queue.stop();
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('DeliveryQueue, observer', () => {
  it('reports each attempt: deferred while the smarthost is down, then delivered, or bounced, with the time queued and the time taken', async () => {
    const port = await freePort();
    const spool = await openSpool();
    const seen: { outcome: string; queuedSeconds: number; attemptSeconds: number }[] = [];
    const observer = { attempted: (outcome: string, queuedSeconds: number, attemptSeconds: number) => void seen.push({ outcome, queuedSeconds, attemptSeconds }) };
    const { queue } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port }, observer });
    queue.enqueue(await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] }));
    await waitFor(() => seen.length >= 2, 5000, 'two deferrals');
    const sink = await startSmarthost(port);
    await waitFor(() => seen.at(-1)?.outcome === 'delivered', 10_000, 'the delivery');
    await queue.idle();

    expect(seen.slice(0, -1).every((s) => s.outcome === 'deferred')).toBe(true);
    for (const { queuedSeconds, attemptSeconds } of seen) {
      expect(queuedSeconds).toBeGreaterThanOrEqual(0);
      expect(queuedSeconds).toBeLessThan(30);
      expect(attemptSeconds).toBeGreaterThanOrEqual(0);
      expect(attemptSeconds).toBeLessThan(10);
    }
    // Each retry waited its backoff (at least 45 ms here) in the queue.
    expect(seen.at(-1)!.queuedSeconds).toBeGreaterThan(seen[0]!.queuedSeconds + 0.04);
    expect(sink.transactions).toHaveLength(1);
    await queue.stop();

    const refusing = await startSmarthost(await freePort(), 'permanent');
    const bounced: string[] = [];
    const { queue: bouncing } = queueWith(spool, { mode: 'relay', relay: { host: '127.0.0.1', port: refusing.port }, observer: { attempted: (outcome) => void bounced.push(outcome) } });
    bouncing.enqueue(await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] }));
    await bouncing.idle();
    expect(bounced).toEqual(['bounced']);
    await bouncing.stop();
  });

  it('goes on delivering, once, when the observer throws', async () => {
    const spool = await openSpool();
    const root = join(tempDir('dq-maildir-'), 'mail');
    const { queue, seen } = queueWith(spool, {
      mode: 'maildir',
      maildirRoot: root,
      observer: {
        attempted: () => {
          throw new Error('metrics broke');
        },
      },
    });
    queue.enqueue(await store(spool, { from: 'alice@example.org', to: ['bob@example.net'] }));
    await queue.idle();
    expect(seen.delivered.map((d) => d.recipient)).toEqual(['bob@example.net']);
    expect(readdirSync(join(root, 'bob@example.net', 'new'))).toHaveLength(1);
    expect(queue.stats).toEqual({ delivered: 1, deferred: 0, bounced: 0 });
    expect(await spool.list()).toEqual([]);
    await queue.stop();
  });
});
