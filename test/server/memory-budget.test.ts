import { describe, expect, it } from 'vitest';
import { BUFFER_GRANULARITY_BYTES_MIN, BUFFER_SIZES_PER_DOUBLING, MemoryBudget, bufferSize } from '../../src/server/memory-budget.js';

const MIB = 2 ** 20;

describe('MemoryBudget (message bodies held for the body hooks)', () => {
  it('grants what fits at once and makes the rest wait, in arrival order', async () => {
    const budget = new MemoryBudget(64 * MIB);
    const granted: string[] = [];
    const first = await budget.acquire(20 * MIB);
    const second = await budget.acquire(20 * MIB);
    const third = await budget.acquire(20 * MIB);
    expect(budget.held).toBe(60 * MIB);
    const fourth = budget.acquire(20 * MIB).then((release) => (granted.push('fourth'), release));
    // A small one that would fit still waits behind the fourth: no starving a big message.
    const small = budget.acquire(1 * MIB).then((release) => (granted.push('small'), release));
    await new Promise((resolve) => setImmediate(resolve));
    expect(granted).toEqual([]);
    first();
    first(); // a second release is ignored
    (await fourth)();
    (await small)();
    expect(granted).toEqual(['fourth', 'small']);
    second();
    third();
    expect(budget.held).toBe(0);
  });

  it('lets a message larger than the whole budget run, alone', async () => {
    const budget = new MemoryBudget(32 * MIB);
    const other = await budget.acquire(1 * MIB);
    let bigGranted = false;
    const big = budget.acquire(100 * MIB).then((release) => ((bigGranted = true), release));
    await new Promise((resolve) => setImmediate(resolve));
    expect(bigGranted).toBe(false);
    other();
    const release = await big;
    expect(budget.held).toBe(32 * MIB);
    release();
    expect(budget.held).toBe(0);
  });

  // Buffers compared by identity: vitest would render megabytes on a mismatch.
  it('hands back a recycled buffer that fits (the smallest one), and keeps no more than the budget in spares', () => {
    const budget = new MemoryBudget(8 * MIB);
    const a = budget.buffer(3 * MIB);
    const b = budget.buffer(5 * MIB);
    budget.recycle(a);
    budget.recycle(b);
    expect(budget.buffer(2 * MIB) === a).toBe(true);
    expect(budget.buffer(4 * MIB) === b).toBe(true);
    expect(budget.buffer(4 * MIB) === b).toBe(false);
    budget.recycle(Buffer.alloc(6 * MIB));
    budget.recycle(a);
    budget.recycle(b); // 6 + 3 + 5 > 8: the smallest spares go
    expect(budget.buffer(5 * MIB).length).toBe(6 * MIB);
    expect(budget.buffer(5 * MIB) === b).toBe(false);
  });

  it('rounds a new buffer up to a size class, so that a message a few bytes longer reuses the spare', () => {
    const budget = new MemoryBudget(64 * MIB);
    // Two of smtp-source's 20 MiB messages, 4 bytes apart.
    const first = budget.buffer(20_971_646);
    expect(first.length).toBe(21 * MIB);
    budget.recycle(first);
    expect(budget.buffer(20_971_650) === first).toBe(true);
    expect(bufferSize(20 * MIB + 1)).toBe(21 * MIB);
    expect(bufferSize(3 * MIB)).toBe(3 * MIB);
    expect(bufferSize(1000)).toBe(BUFFER_GRANULARITY_BYTES_MIN);
    // Never more than 1/16 over what was asked, past the smallest granularity.
    for (const bytes of [2 * MIB + 1, 7 * MIB - 3, 33 * MIB + 5]) expect(bufferSize(bytes) - bytes).toBeLessThan(bytes / BUFFER_SIZES_PER_DOUBLING);
  });
});
