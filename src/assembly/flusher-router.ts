import type { Flusher } from '../outbox/flusher.js';

/** The connection monitor's channels a sink's outcomes are marked on (`Sink.monitorChannel`). */
export type SinkChannel = 'api' | 'mqtt';

const SINK_CHANNELS: ReadonlySet<string> = new Set<SinkChannel>(['api', 'mqtt']);

export function isSinkChannel(channel: string): channel is SinkChannel {
  return SINK_CHANNELS.has(channel);
}

type Wakeable = Pick<Flusher, 'kick' | 'channelOnline'>;

/**
 * Wakes the flushers: all of them when new messages are on disk (any may carry them), and, when a
 * channel comes back online, those whose sink uses that channel (they skip the rest of their backoff).
 */
export class FlusherRouter<F extends Wakeable = Flusher> {
  private readonly flushers: F[] = [];
  private readonly byChannel = new Map<SinkChannel, F[]>();

  add(channel: SinkChannel, flusher: F): F {
    this.flushers.push(flusher);
    const list = this.byChannel.get(channel);
    if (list) list.push(flusher);
    else this.byChannel.set(channel, [flusher]);
    return flusher;
  }

  /** Every flusher, in the order they were added (their loops start in it). */
  get all(): readonly F[] {
    return this.flushers;
  }

  /** The outbox committed new messages. */
  committed(): void {
    for (const f of this.flushers) f.kick();
  }

  channelOnline(channel: string): void {
    if (!isSinkChannel(channel)) return;
    for (const f of this.byChannel.get(channel) ?? []) f.channelOnline();
  }
}
