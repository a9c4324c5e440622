import type { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';

export interface FlushOptions {
  channels?: readonly string[];
  /** Messages per `sendFn` call (default 100; 1 gives the seed's one-at-a-time semantics). */
  maxCount?: number;
  maxBytes?: number;
  signal?: AbortSignal;
}

/**
 * The seed's `flush(sendFn)`, on the outbox's public API: sends batches until the queue (or the
 * chosen channels) is empty, acking each batch after `sendFn` resolves. On the first failure the
 * batch is nacked (it stays queued, in order) and the error is rethrown. Resolves with the number
 * delivered. The agent itself delivers through a Flusher; tests use this for a plain drain.
 */
export async function flushOutbox(
  outbox: Pick<Outbox, 'peekBatch' | 'ack' | 'nack'>,
  sendFn: (batch: OutboxMessage[]) => Promise<void>,
  opts: FlushOptions = {},
): Promise<number> {
  let delivered = 0;
  for (;;) {
    opts.signal?.throwIfAborted();
    const batch = outbox.peekBatch({ channels: opts.channels, maxCount: opts.maxCount ?? 100, maxBytes: opts.maxBytes ?? 1_048_576 });
    if (batch.length === 0) return delivered;
    const ids = batch.map((m) => m.id);
    try {
      await sendFn(batch);
    } catch (err) {
      outbox.nack(ids);
      throw err;
    }
    delivered += outbox.ack(ids);
  }
}
