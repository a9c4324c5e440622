import type { OutcomeSink } from '../resilience/outcome.js';
import { failureKind } from '../resilience/outcome.js';
import type { RetryPolicy } from '../resilience/retry-policy.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { Kick } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import { TokenBucket } from '../util/token-bucket.js';
import type { Outbox } from './outbox.js';
import type { FreshEpisode } from './episode.js';
import type { OutboxMessage } from './types.js';

/** What a sink says of a batch it took: the ids the peer acknowledged and those it refused for good. */
export interface SinkResult {
  accepted: string[];
  rejected: { id: string; reason: string }[];
  /** Set when some messages could not be sent for now (they go back to the queue): the flusher backs off. */
  retryLater?: unknown;
  /** The sink already marked that failure on the monitor (under its own operation). */
  retryLaterMarked?: boolean;
}

/**
 * Where queued messages go: the HTTP device API or the MQTT session. `send` resolves with the peer's
 * per-message answer (ids in neither list go back to the queue) or throws: a `permanent` error
 * (a 4xx other than 408/429, an MQTT reason code that will not change) says the batch as sent will
 * never be taken; anything else is a transient failure.
 */
export interface Sink {
  readonly name: string;
  /** The connection monitor's channel this sink's outcomes are marked on. */
  readonly monitorChannel: string;
  /** Outbox channels it carries; all when absent. */
  readonly channels?: readonly string[];
  /** Outbox channels it does not carry (another sink does). */
  readonly excludeChannels?: readonly string[];
  send(batch: OutboxMessage[], signal: AbortSignal): Promise<SinkResult>;
  isPermanent(err: unknown): boolean;
}

/**
 * What a metered link lets through (src/resilience/link-gate.ts). `window()` undefined: the link is not
 * metered, everything goes. Else only `channels`, at most `maxBytes` stored bytes a batch, and
 * `reserve` takes the batch's share of the budget before it goes (the head of it that fits).
 */
export interface LinkWindow {
  window(): { channels: readonly string[]; maxBytes: number } | undefined;
  reserve(batch: readonly OutboxMessage[]): { count: number; release(): void };
}

export interface FlusherOptions {
  /** `beginEpisode` absent: no freshness-first drain (the outbox's plain order). */
  outbox: Pick<Outbox, 'peekBatch' | 'ack' | 'nack' | 'park'> & Partial<Pick<Outbox, 'beginEpisode'>>;
  sink: Sink;
  monitor: OutcomeSink;
  retry: RetryPolicy;
  clock: Clock;
  logger: Logger;
  batch: { maxCount: number; maxBytes: number };
  /** Batches sent and not yet answered, at most. */
  maxInflight: number;
  /** 0 or absent: unlimited. */
  rate?: { messagesPerSecond?: number; bytesPerSecond?: number };
  /** With nothing to send, look again this often anyway (TTL expiry, a missed kick). */
  idleRecheckMs?: number;
  /** A metered link's filter and budget; absent: every channel, always. Held messages wait for a kick. */
  link?: LinkWindow;
  /**
   * Channels whose messages must reach the peer in queue order (a job's IN_PROGRESS before its final
   * status, state patches in the order they were made): while a batch holding one is in flight, the
   * next batch leaves that channel out. Two batches in flight may land in either order.
   */
  ordered?: ReadonlySet<string>;
}

export interface FlusherStats {
  sink: string;
  inflightBatches: number;
  batchesSent: number;
  delivered: number;
  parked: number;
  lastError: string | null;
  lastSuccessAt: number | null;
}

const noop = (): void => undefined;

type BatchOutcome = { ok: true } | { ok: false; err: unknown };

/**
 * Drains the outbox into one sink: batches by priority (the outbox's order), at most `maxInflight`
 * in flight, within a messages/s and bytes/s budget. A message is deleted only once the sink has
 * acknowledged it. A transient failure puts the batch back and the flusher waits as its retry policy
 * says (the one backoff, woken by the probe or by the sink's channel coming back online). A batch the
 * peer refuses for good is split in halves until the message that causes it is alone, and that one is
 * parked: a poison message never stalls the queue.
 */
export class Flusher {
  private readonly work = new Kick();
  private readonly online = new Kick();
  private readonly messages: TokenBucket;
  private readonly bytes: TokenBucket;
  private readonly inflight = new Set<Promise<BatchOutcome>>();
  /** Ordered channels with a batch in flight, and how many batches hold each. */
  private readonly orderedInFlight = new Map<string, number>();
  private counters = { batchesSent: 0, delivered: 0, parked: 0 };
  private lastError: string | null = null;
  private lastSuccessAt: number | null = null;
  /**
   * A return: the first send, the first after a failure, and the first after the sink's channel came
   * back online (an MQTT session holds its publishes across a disconnect: no send fails). It begins a
   * freshness-first drain.
   */
  private returning = true;

  constructor(private readonly o: FlusherOptions) {
    const mps = o.rate?.messagesPerSecond ?? 0;
    const bps = o.rate?.bytesPerSecond ?? 0;
    this.messages = new TokenBucket(mps, Math.max(mps, o.batch.maxCount), o.clock);
    this.bytes = new TokenBucket(bps, Math.max(bps, o.batch.maxBytes), o.clock);
  }

  /** New messages were queued. */
  kick(): void {
    this.work.kick();
  }

  /** The sink's channel is back online: stop waiting out a backoff; what is sent next begins a freshness-first drain. */
  channelOnline(): void {
    this.returning = true;
    this.online.kick();
  }

  stats(): FlusherStats {
    return { sink: this.o.sink.name, inflightBatches: this.inflight.size, ...this.counters, lastError: this.lastError, lastSuccessAt: this.lastSuccessAt };
  }

  async run(signal: AbortSignal): Promise<void> {
    const { outbox, sink } = this.o;
    const scope = { ...(sink.channels ? { channels: sink.channels } : {}), ...(sink.excludeChannels ? { excludeChannels: sink.excludeChannels } : {}) };
    let failure: unknown;
    let episode: FreshEpisode | undefined;
    try {
      while (!signal.aborted) {
        if (failure !== undefined) {
          // Let what is in flight settle, then back off once for the whole sink.
          await Promise.allSettled([...this.inflight]);
          const delay = this.o.retry.afterFailure(failure);
          failure = undefined;
          this.online.consume();
          await this.o.retry.wait(delay, signal, this.online);
          this.returning = true;
          continue;
        }
        if (this.inflight.size >= this.o.maxInflight) {
          const r = await Promise.race(this.inflight);
          if (!r.ok) failure = r.err;
          continue;
        }
        this.work.consume();
        if (this.returning) {
          episode?.close();
          episode = outbox.beginEpisode?.(scope);
          this.returning = false;
        }
        const { next, release } = this.peek(episode);
        if (next.length === 0) {
          if (this.inflight.size > 0) {
            const r = await Promise.race([...this.inflight, this.work.wait(Infinity, signal, this.o.clock).then(() => ({ ok: true }) as const)]);
            if (!r.ok) failure = r.err;
            continue;
          }
          await this.work.wait(this.o.idleRecheckMs ?? 30_000, signal, this.o.clock);
          continue;
        }
        try {
          await this.messages.take(next.length, signal);
          await this.bytes.take(next.reduce((n, m) => n + m.storedBytes, 0), signal);
        } catch {
          outbox.nack(next.map((m) => m.id));
          release();
          break;
        }
        const held = this.holdOrdered(next);
        const task: Promise<BatchOutcome> = this.deliver(next, signal).finally(() => {
          release();
          held();
        }).then(
          () => ({ ok: true }) as const,
          (err: unknown) => ({ ok: false, err }) as const,
        );
        this.inflight.add(task);
        void task.finally(() => this.inflight.delete(task));
      }
    } finally {
      await Promise.allSettled([...this.inflight]);
      episode?.close();
    }
  }

  /**
   * The next batch, in the outbox's order, of the channels this sink carries and, on a metered link,
   * the link allows, within its budget; empty when nothing may go now (the flusher waits for a kick).
   */
  private peek(episode: FreshEpisode | undefined): { next: OutboxMessage[]; release: () => void } {
    const { outbox, sink, batch, link } = this.o;
    const w = link?.window();
    const channels = w ? (sink.channels ?? w.channels).filter((c) => w.channels.includes(c)) : sink.channels;
    if (w && (channels?.length === 0 || w.maxBytes <= 0)) return { next: [], release: noop };
    const excluded = [...(sink.excludeChannels ?? []), ...this.orderedInFlight.keys()];
    const next = outbox.peekBatch({
      ...(channels ? { channels } : {}),
      ...(excluded.length > 0 ? { excludeChannels: excluded } : {}),
      maxCount: batch.maxCount,
      maxBytes: w ? Math.min(batch.maxBytes, w.maxBytes) : batch.maxBytes,
      ...(episode ? { episode } : {}),
    });
    if (!link || next.length === 0) return { next, release: noop };
    const r = link.reserve(next);
    if (r.count < next.length) outbox.nack(next.slice(r.count).map((m) => m.id));
    return { next: next.slice(0, r.count), release: r.release };
  }

  /** Marks the ordered channels of `batch` in flight; the function returned clears them. */
  private holdOrdered(batch: readonly OutboxMessage[]): () => void {
    const ordered = this.o.ordered;
    if (!ordered || ordered.size === 0) return noop;
    const channels = [...new Set(batch.map((m) => m.channel))].filter((c) => ordered.has(c));
    for (const c of channels) this.orderedInFlight.set(c, (this.orderedInFlight.get(c) ?? 0) + 1);
    return () => {
      for (const c of channels) {
        const n = (this.orderedInFlight.get(c) ?? 1) - 1;
        if (n > 0) this.orderedInFlight.set(c, n);
        else this.orderedInFlight.delete(c);
      }
    };
  }

  /** Sends one batch; resolves when every message in it is acked, parked or back in the queue. */
  private async deliver(batch: OutboxMessage[], signal: AbortSignal): Promise<void> {
    const { outbox, sink, monitor } = this.o;
    const ids = batch.map((m) => m.id);
    let result: SinkResult;
    try {
      this.counters.batchesSent++;
      result = await sink.send(batch, signal);
    } catch (err) {
      if (signal.aborted) {
        outbox.nack(ids);
        return;
      }
      if (sink.isPermanent(err)) {
        // The peer answered: the way is open, but this batch as it is will never be taken.
        monitor.markSuccess(sink.monitorChannel, 'publish');
        if (batch.length === 1) {
          this.parkAll(batch, `refused: ${errorMessage(err)}`);
          return;
        }
        const half = Math.ceil(batch.length / 2);
        await this.deliver(batch.slice(0, half), signal);
        await this.deliver(batch.slice(half), signal);
        return;
      }
      outbox.nack(ids);
      this.lastError = errorMessage(err);
      monitor.markFailure(sink.monitorChannel, 'publish', this.lastError, failureKind(err));
      throw err;
    }
    if (result.retryLater === undefined) {
      monitor.markSuccess(sink.monitorChannel, 'publish');
      this.o.retry.afterSuccess();
      this.lastSuccessAt = this.o.clock.now();
      this.lastError = null;
    } else if (!result.retryLaterMarked) {
      monitor.markFailure(sink.monitorChannel, 'publish', errorMessage(result.retryLater), failureKind(result.retryLater));
    }
    const accepted = new Set(result.accepted);
    const rejected = new Map(result.rejected.map((r) => [r.id, r.reason]));
    const acked = outbox.ack(ids.filter((id) => accepted.has(id)));
    this.counters.delivered += acked;
    const poison = batch.filter((m) => !accepted.has(m.id) && rejected.has(m.id));
    for (const m of poison) this.parkAll([m], `refused: ${rejected.get(m.id) ?? 'no reason'}`);
    // What was acked or parked holds no lease any more: nacking every id puts back only the unanswered.
    outbox.nack(ids);
    if (result.retryLater !== undefined) {
      this.lastError = errorMessage(result.retryLater);
      throw result.retryLater;
    }
  }

  private parkAll(messages: OutboxMessage[], reason: string): void {
    const n = this.o.outbox.park(
      messages.map((m) => m.id),
      reason,
    );
    this.counters.parked += n;
    for (const m of messages) this.o.logger.warn({ id: m.id, channel: m.channel, sink: this.o.sink.name, reason }, 'message parked: the peer refuses it for good');
  }
}
