import { describe, expect, it } from 'vitest';
import { Rewriter } from '../../src/outbox/rewrite.js';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** The rewriter alone: payloads replaced in place under new ids, messages merged away, in-flight ones untouched. */

const freshParts = partsPerTest();

function rewriter() {
  const p = freshParts();
  const w = new Rewriter({ ...p, compressAboveBytes: 1024 });
  const insert = (id: string, channel = 'metrics') => {
    const payload = JSON.stringify(id);
    const seq = Number(p.q.insert.run(id, channel, 10, 1, null, null, 0, payload.length, payload, null, null, null).lastInsertRowid);
    p.lanes.add(channel, 10, payload.length, 1, seq);
    return seq;
  };
  return { ...p, w, insert };
}

describe('rewriter', () => {
  it('replaces payloads in place with new ids, removes merged messages, and keeps the ledger exact', () => {
    const { w, insert, rows, lanes, counters, q } = rewriter();
    insert('a');
    insert('b');
    insert('c');
    const ids = w.rewrite('metrics', { replace: [{ id: 'a', payload: 'merged' }], remove: ['b'] });
    expect(ids).toEqual([expect.any(String)]);
    expect(ids[0]).not.toBe('a');
    expect(rows()).toEqual(['metrics:"merged"', 'metrics:"c"']);
    expect(q.findById.get(ids[0] as string)).toMatchObject({ bytes: 8 });
    expect(lanes.total).toEqual({ count: 2, bytes: 8 + 3 });
    expect(counters.of('metrics')?.downsampled).toBe(1);
  });

  it('leaves alone what is in flight, gone, or on another channel', () => {
    const { w, insert, rows, leases } = rewriter();
    const seq = insert('a');
    insert('t', 'telemetry');
    leases.grant('a', { seq, channel: 'metrics', priority: 10, bytes: 3 });
    expect(w.rewrite('metrics', { replace: [{ id: 'a', payload: 1 }, { id: 'gone', payload: 2 }, { id: 't', payload: 3 }], remove: ['a', 't'] })).toEqual([
      undefined,
      undefined,
      undefined,
    ]);
    expect(rows()).toEqual(['metrics:"a"', 'telemetry:"t"']);
  });
});
