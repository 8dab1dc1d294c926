import { PassThrough } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { OUTPUT_LINE_BYTES_MAX, OUTPUT_LINES_PER_SECOND_MAX, logChildOutput } from '../../src/isolation/child-output.js';

function collect(): { logger: pino.Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, records };
}

describe("a plugin process's output", () => {
  it('is logged one record per line, whatever the chunks, with the stream named', () => {
    const { logger, records } = collect();
    const stream = new PassThrough();
    logChildOutput(stream, logger, 'stdout');
    stream.write('first li');
    stream.write('ne\nsecond\r\n\nthi');
    stream.end('rd');
    return new Promise<void>((done) => stream.on('end', () => {
      expect(records.map((r) => r.msg)).toEqual(['first line', 'second', '', 'third']);
      expect(records[0]).toMatchObject({ stream: 'stdout', level: 30 });
      done();
    }));
  });

  it('splits an overlong line and drops lines past the rate, saying how many', async () => {
    const settle = (): Promise<void> => new Promise((r) => setImmediate(r));
    const { logger, records } = collect();
    const stream = new PassThrough();
    let clock = 0;
    logChildOutput(stream, logger, 'stderr', () => clock);
    stream.write(`${'x'.repeat(OUTPUT_LINE_BYTES_MAX + 10)}\n`);
    await settle();
    expect(records.map((r) => (r.msg as string).length)).toEqual([OUTPUT_LINE_BYTES_MAX, 10]);
    stream.write('line\n'.repeat(OUTPUT_LINES_PER_SECOND_MAX + 50));
    await settle();
    expect(records).toHaveLength(OUTPUT_LINES_PER_SECOND_MAX);
    clock = 1000;
    stream.write('later\n');
    await settle();
    expect(records.at(-2)).toMatchObject({ dropped_lines: 52, level: 40 });
    expect(records.at(-1)).toMatchObject({ msg: 'later', stream: 'stderr', level: 40 });
  });
});
