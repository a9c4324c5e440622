import { describe, expect, it } from 'vitest';
import { LaneHeads, type KeyRow } from '../../src/outbox/lane-heads.js';

/** A lane's rows in memory, standing for the table, and the reads made of it. */
function lane(seqs: number[]) {
  const rows: KeyRow[] = seqs.map((seq) => ({ seq, bytes: seq * 10 }));
  const reads: [number, number][] = [];
  const read = (_channel: string, _priority: number, after: number, limit: number): KeyRow[] => {
    reads.push([after, limit]);
    return rows.filter((r) => r.seq > after).slice(0, limit);
  };
  const insert = (seq: number): void => {
    rows.push({ seq, bytes: seq * 10 });
    rows.sort((a, b) => a.seq - b.seq);
  };
  const remove = (seq: number): void => {
    rows.splice(rows.findIndex((r) => r.seq === seq), 1);
  };
  return { rows, reads, read, insert, remove };
}

const seqs = (rs: KeyRow[]): number[] => rs.map((r) => r.seq);

describe('lane heads', () => {
  it('read ahead once and serve the next asks from memory, in seq order', () => {
    const l = lane([1, 2, 3, 4, 5]);
    const heads = new LaneHeads(l.read, 3);
    expect(heads.rows('t', 20, 0, 1)).toEqual([{ seq: 1, bytes: 10 }]);
    expect(seqs(heads.rows('t', 20, 1, 2))).toEqual([2, 3]);
    expect(l.reads).toEqual([[0, 3]]);
    // Past what was read: the rest comes from the table, after the last row read.
    expect(seqs(heads.rows('t', 20, 3, 5))).toEqual([4, 5]);
    expect(l.reads).toEqual([[0, 3], [3, 5]]);
    // Another lane is read on its own.
    heads.rows('t', 50, 0, 1);
    expect(l.reads).toHaveLength(3);
  });

  it('never serves a deleted row; serves a row inserted at or below what was read (a reused seq) in its place, and reads one above', () => {
    const l = lane([2, 4, 6]);
    const heads = new LaneHeads(l.read, 10);
    expect(seqs(heads.rows('t', 20, 0, 1))).toEqual([2]);
    for (const seq of [2, 6]) {
      l.remove(seq);
      heads.deleted('t', 20, seq);
    }
    for (const seq of [3, 6, 9]) {
      l.insert(seq);
      heads.inserted('t', 20, seq, seq * 10);
    }
    heads.inserted('t', 50, 1, 10); // another lane, not read: nothing to do
    expect(seqs(heads.rows('t', 20, 0, 10))).toEqual([3, 4, 6, 9]);
    expect(seqs(heads.rows('t', 20, 3, 1))).toEqual([4]);
    expect(l.reads).toEqual([[0, 10], [6, 10]]);
  });

  it('reads again when asked from below where it started, and after clear()', () => {
    const l = lane([1, 2, 3]);
    const heads = new LaneHeads(l.read, 10);
    expect(seqs(heads.rows('t', 20, 1, 1))).toEqual([2]);
    heads.inserted('t', 20, 1, 10); // below where it started: not its to hold
    expect(seqs(heads.rows('t', 20, 0, 1))).toEqual([1]);
    expect(l.reads).toEqual([[1, 10], [0, 10]]);
    l.remove(1); // a savepoint rolled back behind its back
    heads.clear();
    expect(seqs(heads.rows('t', 20, 0, 1))).toEqual([2]);
    expect(l.reads).toHaveLength(3);
  });
});
