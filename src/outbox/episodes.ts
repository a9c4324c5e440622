import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { ChannelPolicies } from './channel-policies.js';
import { FreshEpisode, type EpisodeHead } from './episode.js';
import type { Lanes } from './lanes.js';
import type { OutboxStatements } from './outbox-sql.js';
import type { StreamHead, StreamHeads } from './stream-heads.js';

export interface EpisodesOptions {
  q: Pick<OutboxStatements, 'headProbe' | 'maxSeq'>;
  heads: Pick<StreamHeads, 'of' | 'forget'>;
  lanes: Pick<Lanes, 'nonEmpty' | 'channel'>;
  policies: Pick<ChannelPolicies, 'freshFirst'>;
  logger: Logger;
}

/** The channels a flusher carries (its sink's `channels` / `excludeChannels`). */
export interface EpisodeScope {
  channels?: readonly string[];
  excludeChannels?: readonly string[];
}

/**
 * Begins freshness-first drains and keeps the open ones told of every insert (episode.ts: a new
 * row may take a seq the start already counted). One probe by seq per known stream at the start;
 * heads found gone are forgotten.
 */
export class Episodes {
  private readonly open = new Set<FreshEpisode>();

  constructor(private readonly o: EpisodesOptions) {}

  begin(scope: EpisodeScope): FreshEpisode {
    const wanted = scope.channels ? new Set(scope.channels) : undefined;
    const unwanted = new Set(scope.excludeChannels ?? []);
    const orders = (channel: string): boolean => (!wanted || wanted.has(channel)) && !unwanted.has(channel) && this.o.policies.freshFirst(channel);
    const startSeq = (this.o.q.maxSeq.get() as { s: number | null }).s ?? 0;
    const heads: EpisodeHead[] = [];
    const gone: StreamHead[] = [];
    for (const h of this.o.heads.of(orders)) {
      const row = this.o.q.headProbe.get(h.seq) as { channel: string; priority: number; stream: string | null } | undefined;
      if (row && row.channel === h.channel && (row.stream ?? '') === h.stream) heads.push({ seq: h.seq, channel: h.channel, priority: row.priority, stream: h.stream });
      else gone.push(h);
    }
    try {
      this.o.heads.forget(gone);
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

  /** A row was inserted at `seq`. */
  inserted(seq: number): void {
    for (const e of this.open) e.inserted(seq);
  }
}
