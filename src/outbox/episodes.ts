import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { ChannelPolicies } from './channel-policies.js';
import { FreshEpisode, type EpisodeHead } from './episode.js';
import type { Lanes } from './lanes.js';
import type { OutboxStatements } from './outbox-sql.js';
import { StreamHeads, type StreamHead } from './stream-heads.js';
import type { Transactor } from './transactor.js';
import type { Clock } from '../util/clock.js';

export interface EpisodesOptions {
  q: Pick<OutboxStatements, 'headProbe' | 'maxSeq' | 'headSet' | 'headDelete' | 'headsLoad' | 'headsTail'>;
  lanes: Pick<Lanes, 'nonEmpty' | 'channel'>;
  policies: Pick<ChannelPolicies, 'freshFirst'>;
  logger: Logger;
  clock: Pick<Clock, 'monotonic'>;
}

/** The channels a flusher carries (its sink's `channels` / `excludeChannels`). */
export interface EpisodeScope {
  channels?: readonly string[];
  excludeChannels?: readonly string[];
}

/**
 * Keeps the streams' newest messages (stream-heads.ts, loaded at open), begins freshness-first
 * drains and keeps the open ones told of every insert (episode.ts: a new row may take a seq the
 * start already counted). One probe by seq per known stream at the start; heads found gone are forgotten.
 */
export class Episodes {
  readonly heads: StreamHeads;
  private readonly open = new Set<FreshEpisode>();

  constructor(private readonly o: EpisodesOptions) {
    const { q } = o;
    this.heads = new StreamHeads({
      optIn: (channel) => o.policies.freshFirst(channel),
      store: {
        set: (h) => q.headSet.run(h.channel, h.stream, h.seq),
        delete: (channel, stream) => q.headDelete.run(channel, stream),
        maxSeq: () => (q.maxSeq.get() as { s: number | null }).s ?? 0,
      },
      now: () => o.clock.monotonic(),
    });
    this.heads.load(q.headsLoad.all() as StreamHead[], (after) => q.headsTail.iterate(after) as Iterable<{ seq: number; channel: string; stream: string | null }>);
  }

  begin(scope: EpisodeScope): FreshEpisode {
    const wanted = scope.channels ? new Set(scope.channels) : undefined;
    const unwanted = new Set(scope.excludeChannels ?? []);
    const orders = (channel: string): boolean => (!wanted || wanted.has(channel)) && !unwanted.has(channel) && this.o.policies.freshFirst(channel);
    const startSeq = (this.o.q.maxSeq.get() as { s: number | null }).s ?? 0;
    const heads: EpisodeHead[] = [];
    const gone: StreamHead[] = [];
    for (const h of this.heads.of(orders)) {
      const row = this.o.q.headProbe.get(h.seq) as { channel: string; priority: number; stream: string | null } | undefined;
      if (row && row.channel === h.channel && (row.stream ?? '') === h.stream) heads.push({ seq: h.seq, channel: h.channel, priority: row.priority, stream: h.stream });
      else gone.push(h);
    }
    try {
      this.heads.forget(gone);
    } catch (err) {
      this.o.logger.warn({ err: errorMessage(err) }, 'outbox: delivered stream heads could not be forgotten; they are checked again at the next return');
    }
    const channels = new Set(this.o.lanes.nonEmpty().map((l) => l.channel).filter(orders));
    // Nothing to backfill (no stream holds more than its newest): the plain order, priorities first.
    const backlog = [...channels].some((c) => (this.o.lanes.channel(c)?.count ?? 0) > heads.filter((h) => h.channel === c).length);
    const episode = backlog ? new FreshEpisode(startSeq, heads, channels, (e) => this.open.delete(e)) : new FreshEpisode(startSeq, [], new Set(), (e) => this.open.delete(e));
    this.open.add(episode);
    return episode;
  }

  /** At a clean close: the heads not yet written (a start would otherwise read the rows queued since). */
  close(tx: Pick<Transactor, 'run'>): void {
    if (this.heads.unwrittenCount === 0) return;
    this.heads.writeNext();
    try {
      tx.run('writing the stream heads', () => undefined);
    } catch (err) {
      this.o.logger.warn({ err: errorMessage(err) }, 'outbox: the stream heads could not be written; the next start finds them from the rows');
    }
  }

  /** A row was inserted at `seq`. */
  inserted(seq: number): void {
    for (const e of this.open) e.inserted(seq);
  }
}
