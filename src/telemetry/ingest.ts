import type { Outbox } from '../outbox/outbox.js';
import { OutboxError, type EnqueueMessage, type EnqueueResult } from '../outbox/types.js';
import type { Json } from '../util/json-diff.js';

export interface TelemetryItem {
  stream: string;
  payload: Json;
}

export interface TelemetryIngestOptions {
  outbox: Pick<Outbox, 'enqueueMany'>;
  /** Why the data dir's disk refuses new data now (full); undefined while it takes it. */
  diskRefusal?: () => string | undefined;
}

/**
 * Local ingestion, from `POST /v2/telemetry` and the local broker: each item goes on the telemetry
 * channel, and the promise resolves once every item is on disk.
 */
export class TelemetryIngest {
  constructor(private readonly o: TelemetryIngestOptions) {}

  ingest(items: readonly TelemetryItem[]): Promise<EnqueueResult[]> {
    const full = this.o.diskRefusal?.();
    if (full) return Promise.reject(new OutboxError('OUTBOX_DISK_FULL', full));
    const msgs: EnqueueMessage[] = items.map((i) => ({ channel: 'telemetry', stream: i.stream, payload: { stream: i.stream, payload: i.payload } }));
    return this.o.outbox.enqueueMany(msgs);
  }
}
