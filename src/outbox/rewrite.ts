import type { IdGenerator } from '../util/ids.js';
import type { Json } from '../util/json-diff.js';
import { encodePayload } from './codec.js';
import type { OutboxCounters } from './counters.js';
import type { Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import type { OutboxStatements, RowRef } from './outbox-sql.js';
import type { Transactor } from './transactor.js';

export interface RewriterOptions {
  q: Pick<OutboxStatements, 'findById' | 'updatePayload' | 'deleteSeq'>;
  tx: Pick<Transactor, 'run'>;
  lanes: Pick<Lanes, 'remove' | 'resize'>;
  counters: Pick<OutboxCounters, 'bump'>;
  leases: Pick<Leases, 'isLeased'>;
  ids: Pick<IdGenerator, 'next'>;
  compressAboveBytes: number;
}

/** What downsampling changes in a channel: payloads replaced in place, messages merged away. */
export interface ChannelRewrite {
  replace: { id: string; payload: Json }[];
  remove: string[];
}

/** Rewrites queued messages of a channel in place (metrics downsampling, downsample.ts). */
export class Rewriter {
  constructor(private readonly o: RewriterOptions) {}

  /**
   * In one transaction: each `replace` entry gets a new payload and a new id (a receiver that
   * already stored the old id must not drop the aggregate as a duplicate) but keeps its place in the
   * queue; `remove` entries are deleted and counted as downsampled. In-flight messages are left
   * alone. Returns the new ids of the replaced messages (undefined when skipped).
   */
  rewrite(channel: string, change: ChannelRewrite): (string | undefined)[] {
    const encoded = change.replace.map((r) => ({ id: r.id, enc: encodePayload(r.payload, this.o.compressAboveBytes) }));
    return this.o.tx.run(`downsampling ${channel}`, () => {
      const ids: (string | undefined)[] = [];
      for (const { id, enc } of encoded) {
        const row = this.queued(channel, id);
        if (!row) {
          ids.push(undefined);
          continue;
        }
        const newId = this.o.ids.next();
        this.o.q.updatePayload.run(newId, enc.encoding, enc.bytes, enc.data, row.seq);
        this.o.lanes.resize(row.channel, row.priority, enc.bytes - row.bytes);
        ids.push(newId);
      }
      for (const id of change.remove) {
        const row = this.queued(channel, id);
        if (!row) continue;
        this.o.q.deleteSeq.run(row.seq);
        this.o.lanes.remove(row);
        this.o.counters.bump(channel, 'downsampled');
      }
      return ids;
    });
  }

  /** The row of `id` when it is queued on `channel` and not in flight. */
  private queued(channel: string, id: string): RowRef | undefined {
    const row = this.o.q.findById.get(id) as RowRef | undefined;
    return !row || row.channel !== channel || this.o.leases.isLeased(row.seq) ? undefined : row;
  }
}
