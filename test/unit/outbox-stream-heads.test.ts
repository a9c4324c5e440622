import { describe, expect, it } from 'vitest';
import { StreamHeads, type StreamHead } from '../../src/outbox/stream-heads.js';

/** The streams' newest messages: taken once committed, written at most every 250 ms with a mark, restored on a rollback. */

function setup() {
  let now = 0;
  let maxSeq = 0;
  const table = new Map<string, number>();
  const heads = new StreamHeads({
    optIn: (channel) => channel === 'telemetry',
    store: {
      set: (h) => void table.set(`${h.channel}/${h.stream}`, h.seq),
      delete: (channel, stream) => void table.delete(`${channel}/${stream}`),
      maxSeq: () => maxSeq,
    },
    now: () => now,
  });
  /** One transaction: `fn`, the end-of-transaction write, then a commit (settle) or a rollback. */
  const tx = (fn: () => void, commit = true): void => {
    const restore = heads.checkpoint();
    fn();
    heads.write();
    if (commit) heads.settle();
    else restore();
  };
  const insert = (channel: string, stream: string | null, seq: number): void => {
    maxSeq = Math.max(maxSeq, seq);
    heads.moved(channel, stream, seq);
  };
  return { heads, table, tx, insert, advance: (ms: number) => (now += ms) };
}

const all = (heads: StreamHeads): StreamHead[] => heads.of(() => true).sort((a, b) => a.stream.localeCompare(b.stream));

describe('stream heads', () => {
  it('keeps the newest seq of each stream of the opt-in channels, a missing stream as the channel\'s own', () => {
    const t = setup();
    t.tx(() => {
      t.insert('telemetry', 'a', 1);
      t.insert('telemetry', 'a', 2);
      t.insert('telemetry', null, 3);
      t.insert('events', null, 4);
    });
    expect(all(t.heads)).toEqual([
      { channel: 'telemetry', stream: '', seq: 3 },
      { channel: 'telemetry', stream: 'a', seq: 2 },
    ]);
    expect(Object.fromEntries(t.table)).toEqual({ 'telemetry/a': 2, 'telemetry/': 3, '/': 4 });
  });

  it('writes at most every 250 ms, everything not yet written at once, and forces a write when asked', () => {
    const t = setup();
    t.tx(() => t.insert('telemetry', 'a', 1));
    t.tx(() => t.insert('telemetry', 'b', 2));
    t.tx(() => t.insert('telemetry', 'a', 3));
    expect(Object.fromEntries(t.table)).toEqual({ 'telemetry/a': 1, '/': 1 });
    expect(t.heads.unwrittenCount).toBe(2);
    t.advance(250);
    t.tx(() => undefined);
    expect(Object.fromEntries(t.table)).toEqual({ 'telemetry/a': 3, 'telemetry/b': 2, '/': 3 });
    t.tx(() => t.insert('telemetry', 'b', 4));
    t.heads.writeNext();
    t.tx(() => undefined);
    expect(t.table.get('telemetry/b')).toBe(4);
    expect(t.heads.unwrittenCount).toBe(0);
  });

  it('a rolled-back transaction moves no head and leaves what it would have written unwritten', () => {
    const t = setup();
    t.tx(() => t.insert('telemetry', 'a', 1));
    t.tx(() => t.insert('telemetry', 'b', 2));
    t.advance(300);
    t.tx(() => t.insert('telemetry', 'a', 3), false);
    expect(all(t.heads).map((h) => h.seq)).toEqual([1, 2]);
    expect(t.heads.unwrittenCount).toBe(1); // b's head: the write rolled back with the transaction
  });

  it('loads the persisted heads, then the rows above the mark newest first', () => {
    const t = setup();
    t.heads.load(
      [
        { channel: '', stream: '', seq: 10 },
        { channel: 'telemetry', stream: 'a', seq: 9 },
      ],
      (after) => {
        expect(after).toBe(10);
        return [
          { seq: 13, channel: 'telemetry', stream: 'a' },
          { seq: 12, channel: 'events', stream: null },
          { seq: 11, channel: 'telemetry', stream: 'a' },
        ];
      },
    );
    expect(all(t.heads)).toEqual([{ channel: 'telemetry', stream: 'a', seq: 13 }]);
    expect(t.heads.unwrittenCount).toBe(1);
  });
});
