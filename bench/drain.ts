import { defaultConfig } from '../src/config/schema.js';
import type { Flusher } from '../src/outbox/flusher.js';
import { Outbox } from '../src/outbox/outbox.js';
import { outboxSettings } from '../src/outbox/policy.js';
import type { Store } from '../src/store/store.js';
import { systemClock } from '../src/util/clock.js';
import { IdGenerator } from '../src/util/ids.js';
import type { Logger } from '../src/util/logger.js';
import type { EnqueueMessage } from '../src/outbox/types.js';

/**
 * What the drain benchmarks share: filling an outbox before the clock starts, and stopping the
 * clock at the ack that empties it.
 */

/**
 * An outbox with the agent's default settings, kicking `flushers` after each commit, as agent.ts
 * wires it (the flushers are added to the array by the caller once built).
 */
export function defaultOutbox(store: Store, logger: Logger, flushers: Flusher[]): Outbox {
  return new Outbox({
    store,
    clock: systemClock,
    ids: new IdGenerator(),
    logger,
    ...outboxSettings(defaultConfig().settings.offline),
    onCommit: () => flushers.forEach((f) => f.kick()),
  });
}

/** Enqueues `n` messages in chunks of 1,000 (one enqueueMany, one transaction each). Returns ms. */
export async function fillOutbox(outbox: Outbox, n: number, message: (i: number) => EnqueueMessage): Promise<number> {
  const t0 = performance.now();
  const chunk = 1000;
  for (let start = 0; start < n; start += chunk) {
    const k = Math.min(chunk, n - start);
    await outbox.enqueueMany(Array.from({ length: k }, (_, j) => message(start + j)));
  }
  return performance.now() - t0;
}

export type FlusherOutbox = Pick<Outbox, 'peekBatch' | 'ack' | 'nack' | 'park'>;

/**
 * The outbox as the Flusher sees it, counting the messages its acks delete, so the clock stops at
 * the commit of the last ack (no polling). Nothing else is changed or added on the way.
 */
export class AckCounter {
  readonly view: FlusherOutbox;
  private count = 0;
  private want = Infinity;
  private resolveAll: (at: number) => void = () => undefined;

  constructor(outbox: Outbox) {
    this.view = {
      peekBatch: outbox.peekBatch.bind(outbox),
      nack: outbox.nack.bind(outbox),
      park: outbox.park.bind(outbox),
      ack: (ids) => {
        const k = outbox.ack(ids);
        this.count += k;
        if (this.count >= this.want) this.resolveAll(performance.now());
        return k;
      },
    };
  }

  get acked(): number {
    return this.count;
  }

  /** Resolves with performance.now() at the ack that brought the total to `n`. */
  all(n: number): Promise<number> {
    this.want = n;
    return new Promise<number>((resolve) => {
      this.resolveAll = resolve;
      if (this.count >= n) resolve(performance.now());
    });
  }
}

/** Rejects after `ms` unless `p` settled first; the timer never outlives the race. */
export function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
