import { SMTPServer } from 'smtp-server';

/** One SMTP transaction as the smarthost saw it. */
export interface Transaction {
  readonly helo: string;
  readonly from: string;
  readonly to: string[];
  /** The message bytes after the DATA dot-unstuffing, as the smarthost received them. */
  readonly data: Buffer;
}

/** What a smarthost answers to RCPT TO: accept, 5xx (as `smtp-sink -f RCPT`), or 4xx (as `smtp-sink -r RCPT`). */
export type RcptAnswer = 'accept' | 'permanent' | 'temporary';

export interface Smarthost {
  readonly port: number;
  readonly transactions: Transaction[];
  close(): Promise<void>;
}

/**
 * A Node smarthost on 127.0.0.1:`port` (0: any free port), built on
 * smtp-server like the server itself, so relay tests need no Postfix:
 * records each transaction's HELO name, envelope and bytes, and answers
 * RCPT TO as `rcpt` says.
 */
export async function startSmarthost(port = 0, rcpt: RcptAnswer = 'accept'): Promise<Smarthost> {
  const transactions: Transaction[] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onRcptTo: (_address, _session, callback) => {
      if (rcpt === 'permanent') return callback(Object.assign(new Error('5.1.1 Recipient rejected'), { responseCode: 550 }));
      if (rcpt === 'temporary') return callback(Object.assign(new Error('4.2.0 Try again later'), { responseCode: 450 }));
      callback();
    },
    onData: (stream, session, callback) => {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', () => {
        const mailFrom = session.envelope.mailFrom;
        transactions.push({
          helo: session.hostNameAppearsAs,
          from: mailFrom === false ? '' : mailFrom.address,
          to: session.envelope.rcptTo.map((r) => r.address),
          data: Buffer.concat(chunks),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const bound = (server.server.address() as { port: number }).port;
  return { port: bound, transactions, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}
