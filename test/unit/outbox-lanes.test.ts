import { describe, expect, it } from 'vitest';
import { Lanes, mergeLanes, type Lane } from '../../src/outbox/lanes.js';

/** The ledger of lanes alone: totals per lane, channel and in total, the leased prefix, rollback, and the merge by seq. */

function ledger(oldest: (channel: string, priority: number) => number | undefined = () => undefined) {
  const probes: string[] = [];
  const lanes = new Lanes((channel, priority) => {
    probes.push(`${channel}/${priority}`);
    return oldest(channel, priority);
  });
  return { lanes, probes };
}

const laneOf = (lanes: Lanes, channel: string, priority: number): Lane | undefined => lanes.nonEmpty().find((l) => l.channel === channel && l.priority === priority);

describe('lanes', () => {
  it('keep count and bytes per lane, per channel and in total as rows come and go', () => {
    const { lanes } = ledger();
    lanes.load([{ channel: 'telemetry', priority: 20, n: 2, b: 30 }]);
    lanes.add('telemetry', 50, 10, 1_000, 7);
    lanes.add('events', 50, 5, 1_000, 8);
    expect(lanes.total).toEqual({ count: 4, bytes: 45 });
    expect(lanes.channel('telemetry')).toEqual({ count: 3, bytes: 40 });
    lanes.remove({ channel: 'telemetry', priority: 20, bytes: 15 });
    lanes.resize('events', 50, 3);
    expect(lanes.total).toEqual({ count: 3, bytes: 33 });
    expect(lanes.channel('telemetry')).toEqual({ count: 2, bytes: 25 });
    expect(lanes.channel('events')).toEqual({ count: 1, bytes: 8 });
    expect(laneOf(lanes, 'telemetry', 20)).toMatchObject({ count: 1, bytes: 15 });
    expect([...lanes.channelNames()].sort()).toEqual(['events', 'telemetry']);
    lanes.remove({ channel: 'events', priority: 50, bytes: 8 });
    expect(lanes.nonEmpty().map((l) => l.channel)).toEqual(['telemetry', 'telemetry']);
  });

  it('keep apart a channel whose name ends in digits from another one at a different priority', () => {
    const { lanes } = ledger();
    // "metrics1" at 0 and "metrics" at 10 must not share a lane (their names and priorities run together).
    lanes.add('metrics1', 0, 7, 1_000, 1);
    lanes.add('metrics', 10, 5, 1_000, 2);
    expect(laneOf(lanes, 'metrics1', 0)).toMatchObject({ count: 1, bytes: 7 });
    expect(laneOf(lanes, 'metrics', 10)).toMatchObject({ count: 1, bytes: 5 });
    expect(lanes.nonEmpty()).toHaveLength(2);
  });

  it('know the oldest of a lane from its first insert, and probe once for it after its first row left', () => {
    const { lanes, probes } = ledger(() => 2_000);
    lanes.add('telemetry', 20, 1, 1_000, 1);
    lanes.add('telemetry', 20, 1, 1_500, 2);
    const lane = laneOf(lanes, 'telemetry', 20) as Lane;
    expect(lanes.oldest(lane)).toBe(1_000);
    expect(probes).toEqual([]);
    lanes.remove({ channel: 'telemetry', priority: 20, bytes: 1 });
    expect(lanes.oldest(lane)).toBe(2_000);
    expect(lanes.oldest(lane)).toBe(2_000);
    expect(probes).toEqual(['telemetry/20']);
  });

  it('move the leased prefix up with peeks, and back down for a requeued row or an insert below it', () => {
    const { lanes } = ledger();
    for (let seq = 1; seq <= 5; seq++) lanes.add('telemetry', 20, 1, 1_000, seq);
    const lane = laneOf(lanes, 'telemetry', 20) as Lane;
    lanes.leasedUpTo(lane, 4);
    lanes.leasedUpTo(lane, 2); // never lowered by a peek
    expect(lane.leasedBelow).toBe(4);
    lanes.requeued('telemetry', 20, 3);
    expect(lane.leasedBelow).toBe(3);
    lanes.requeued('telemetry', 20, 9);
    expect(lane.leasedBelow).toBe(3);
    lanes.add('telemetry', 20, 1, 1_000, 2); // SQLite reused a lower seq
    expect(lane.leasedBelow).toBe(2);
  });

  it('roll back to a checkpoint, as often as asked', () => {
    const { lanes } = ledger();
    lanes.add('telemetry', 20, 10, 1_000, 1);
    const restore = lanes.checkpoint();
    lanes.add('telemetry', 20, 10, 1_000, 2);
    lanes.add('events', 50, 10, 1_000, 3);
    restore();
    expect(lanes.total).toEqual({ count: 1, bytes: 10 });
    expect(lanes.channel('events')).toBeUndefined();
    lanes.remove({ channel: 'telemetry', priority: 20, bytes: 10 });
    restore();
    expect(lanes.channel('telemetry')).toEqual({ count: 1, bytes: 10 });
  });
});

describe('mergeLanes', () => {
  const rows = (seqs: number[]) => seqs.map((seq) => ({ seq }));
  const lane = (channel: string): Lane => ({ channel, priority: 20, count: 1, bytes: 0, oldest: undefined, leasedBelow: 0 });

  it('merges lanes by seq, reading each in growing chunks from where it was told to start', () => {
    const data: Record<string, number[]> = { a: [1, 4, 5, 9, 12], b: [2, 3, 10] };
    const reads: string[] = [];
    const fetch = (l: Lane, after: number, limit: number) => {
      reads.push(`${l.channel}>${after}:${limit}`);
      return rows((data[l.channel] as number[]).filter((s) => s > after).slice(0, limit));
    };
    expect([...mergeLanes([lane('a'), lane('b')], fetch, 2)].map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 9, 10, 12]);
    expect(reads).toEqual(['a>-1:2', 'b>-1:2', 'b>3:4', 'a>4:4']);
    const from = [...mergeLanes([lane('a'), lane('b')], fetch, 2, (l) => (l.channel === 'a' ? 9 : 0))].map((r) => r.seq);
    expect(from).toEqual([2, 3, 9, 10, 12]);
  });

  it('reads no further than the consumer takes', () => {
    let reads = 0;
    const it = mergeLanes([lane('a')], (_l, after, limit) => {
      reads++;
      return rows(Array.from({ length: limit }, (_, i) => after + 1 + i));
    });
    for (const r of it) if (r.seq >= 3) break;
    expect(reads).toBe(1);
  });
});
