import type { Outbox } from '../outbox/outbox.js';
import { OutboxError } from '../outbox/types.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { DockerCursor } from './docker-frames.js';
import type { LogStore } from './log-store.js';
import { LogRateLimiter, markerText, type LogRateLimits } from './rate-limit.js';
import { LOGS_CHANNEL, type CollectedLine, type LogDropReason, type LogLine, type StoredLine } from './types.js';

export interface ChunkLimits {
  /** A chunk is queued when it holds this many lines ... */
  maxLines: number;
  /** ... or this many bytes of text ... */
  maxBytes: number;
  /** ... or its first line has waited this long. */
  windowMs: number;
  /** Lines waiting for the outbox, at most (bytes): past it a replayable source is paused, another's lines are dropped (`backlog`). */
  maxPendingBytes: number;
}

export interface ServiceLogOptions {
  service: string;
  store: Pick<LogStore, 'nextSeq' | 'commit'>;
  outbox: Pick<Outbox, 'enqueueMany'>;
  clock: Pick<Clock, 'now' | 'monotonic' | 'sleep'>;
  logger: Logger;
  rate: LogRateLimits;
  chunk: ChunkLimits;
  /** At most one marker line per reason per this many ms while lines are being dropped. */
  markerIntervalMs: number;
  /** Refusals are logged at debug, not warn (the agent's own log: its warning would be a line of it). */
  quiet?: boolean;
  /** Lines committed (for local followers and metrics). */
  onCommitted?: (lines: readonly LogLine[]) => void;
  /** Lines dropped (metrics). */
  onDropped?: (reason: LogDropReason, count: number) => void;
  /**
   * The outbox refused a chunk. Lines of replayable sources (containers: the engine keeps their log)
   * are not counted as dropped: they are read again from the stored cursors (`rewind`).
   */
  onRewind?: () => void;
}

interface Pending {
  lines: LogLine[];
  bytes: number;
  /** Per replayable source, the cursor after its last line in the chunk. */
  cursors: Map<string, DockerCursor>;
  replayable: boolean;
  startedAt: number;
}

/**
 * One service's log on its way to the outbox: rate limits, sequence numbers, marker lines for what
 * was dropped, and chunks (one outbox message of up to `maxLines` lines) committed one at a time
 * with the service's next sequence number, its sources' cursors and the local tail (LogStore.commit,
 * in the enqueue's transaction). What a source hands in after `push` returned false waits for
 * `drained`.
 */
export class ServiceLog {
  private nextSeq: number;
  private pending: Pending;
  private committing: Promise<void> | undefined;
  /** Cancels the pending wake-up (a chunk's window, or the next marker). */
  private timer: AbortController | undefined;
  private readonly limiter: LogRateLimiter;
  private readonly drops = new Map<LogDropReason, number>();
  private lastMarkerAt = -Infinity;
  private closed = false;
  private drainWaiters: Array<() => void> = [];

  constructor(private readonly o: ServiceLogOptions) {
    this.nextSeq = o.store.nextSeq(o.service);
    this.limiter = new LogRateLimiter(o.rate, o.clock);
    this.pending = this.fresh();
  }

  get service(): string {
    return this.o.service;
  }

  /** Lines (bytes of text) waiting for the outbox. */
  get backlogBytes(): number {
    return this.pending.bytes;
  }

  /**
   * Takes a line. `source` and `cursor` name a replayable source (a container) and where its log
   * resumes after this line. Returns false when the backlog is full: a replayable source should
   * pause until `drained()`; a line that is not replayable was then dropped (counted).
   */
  push(line: CollectedLine, source?: string, cursor?: DockerCursor): boolean {
    if (this.closed) return false;
    const now = this.o.clock.monotonic();
    if (this.pending.bytes >= this.o.chunk.maxPendingBytes && this.committing) {
      if (source === undefined) this.drop('backlog', 1);
      return false;
    }
    const reason = this.limiter.admit(Buffer.byteLength(line.text));
    if (reason) this.drop(reason, 1);
    else {
      this.markers(now, false);
      this.add({ service: this.o.service, seq: this.nextSeq++, ts: line.ts, stream: line.stream, line: line.text });
    }
    if (source !== undefined && cursor) {
      // A dropped line moves the cursor too: it was taken, and is counted in a marker.
      this.pending.cursors.set(source, cursor);
      this.pending.replayable = true;
    }
    this.schedule();
    return true;
  }

  /** Counts lines dropped before they got here (a source's own limit). */
  drop(reason: LogDropReason, count: number): void {
    if (count <= 0) return;
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + count);
    this.o.onDropped?.(reason, count);
    this.schedule();
  }

  /** Resolves when the backlog has room again. */
  drained(): Promise<void> {
    if (this.pending.bytes < this.o.chunk.maxPendingBytes || !this.committing) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Queues what is pending now and waits for every chunk so far to be committed (or refused). */
  async flush(): Promise<void> {
    this.markers(this.o.clock.monotonic(), true);
    while (this.committing || this.pending.lines.length > 0 || this.pending.cursors.size > 0) {
      if (this.committing) await this.committing;
      else this.commitNext();
    }
  }

  /** Flushes and stops taking lines. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    this.cancelTimer();
    this.release();
  }

  private fresh(): Pending {
    return { lines: [], bytes: 0, cursors: new Map(), replayable: false, startedAt: this.o.clock.monotonic() };
  }

  private add(l: LogLine): void {
    if (this.pending.lines.length === 0) this.pending.startedAt = this.o.clock.monotonic();
    this.pending.lines.push(l);
    this.pending.bytes += l.line.length + 32;
  }

  /** Marker lines for what was dropped, at most one per reason per interval unless `force`. */
  private markers(now: number, force: boolean): void {
    if (this.drops.size === 0 || (!force && now - this.lastMarkerAt < this.o.markerIntervalMs)) return;
    const ts = this.o.clock.now();
    for (const [reason, count] of this.drops) {
      this.add({ service: this.o.service, seq: this.nextSeq++, ts, stream: 'marker', line: markerText(count, reason, this.o.rate), dropped: count, reason });
    }
    this.drops.clear();
    this.lastMarkerAt = now;
  }

  private schedule(): void {
    const p = this.pending;
    if (this.committing) return; // the commit's end looks again
    if (p.lines.length >= this.o.chunk.maxLines || p.bytes >= this.o.chunk.maxBytes) {
      this.commitNext();
      return;
    }
    if (this.timer || (p.lines.length === 0 && this.drops.size === 0 && p.cursors.size === 0)) return;
    const due = p.lines.length > 0 || p.cursors.size > 0 ? p.startedAt + this.o.chunk.windowMs : this.lastMarkerAt + this.o.markerIntervalMs;
    const timer = (this.timer = new AbortController());
    this.o.clock.sleep(Math.max(0, due - this.o.clock.monotonic()), timer.signal).then(
      () => this.onTimer(),
      () => undefined, // cancelled
    );
  }

  private cancelTimer(): void {
    this.timer?.abort();
    this.timer = undefined;
  }

  private onTimer(): void {
    this.timer = undefined;
    if (this.closed) return;
    this.markers(this.o.clock.monotonic(), false);
    if (this.pending.lines.length > 0 || this.pending.cursors.size > 0) this.commitNext();
    else this.schedule();
  }

  private commitNext(): void {
    this.cancelTimer();
    const chunk = this.pending;
    this.pending = this.fresh();
    if (chunk.lines.length === 0 && chunk.cursors.size === 0) return;
    this.committing = this.commit(chunk).finally(() => {
      this.committing = undefined;
      this.release();
      this.schedule();
    });
  }

  private async commit(chunk: Pending): Promise<void> {
    const createdAt = this.o.clock.now();
    const stored: StoredLine[] = chunk.lines.map((l) => (l.stream === 'marker' ? [l.seq, l.ts - createdAt, 'marker', l.line, l.dropped ?? 0, l.reason ?? 'outbox'] : [l.seq, l.ts - createdAt, l.stream, l.line]));
    const last = chunk.lines[chunk.lines.length - 1];
    // Computed before the first await: a chunk without lines leaves the next number as it is now.
    const nextSeq = last ? last.seq + 1 : this.nextSeq;
    const alongside = (): void => this.o.store.commit({ service: this.o.service, nextSeq, cursors: chunk.cursors, lines: chunk.lines });
    try {
      if (chunk.lines.length > 0) {
        await this.o.outbox.enqueueMany([{ channel: LOGS_CHANNEL, stream: this.o.service, payload: { service: this.o.service, lines: stored } }], { alongside });
      } else {
        // Only dropped lines moved a cursor: nothing to send, the cursor is stored alone.
        alongside();
      }
    } catch (err) {
      this.refused(chunk, err);
      return;
    }
    this.o.onCommitted?.(chunk.lines);
  }

  /**
   * A chunk the outbox refused: its lines and everything after them are renumbered from its first.
   * Replayable sources read them again from their stored cursors; other lines are counted dropped.
   */
  private refused(chunk: Pending, err: unknown): void {
    const first = chunk.lines[0]?.seq ?? this.nextSeq;
    const later = this.pending;
    this.pending = this.fresh();
    this.nextSeq = first;
    const lost = [...chunk.lines, ...later.lines].filter((l) => l.stream !== 'marker');
    const markers = [...chunk.lines, ...later.lines].filter((l) => l.stream === 'marker');
    for (const m of markers) this.drop(m.reason ?? 'outbox', m.dropped ?? 0);
    const code = err instanceof OutboxError ? err.code : undefined;
    this.o.logger[this.o.quiet ? 'debug' : 'warn']({ service: this.o.service, lines: lost.length, code, err: errorMessage(err) }, `logs of ${this.o.service}: the outbox refused ${lost.length} line(s)`);
    if (chunk.replayable || later.replayable) this.o.onRewind?.();
    else this.drop('outbox', lost.length);
  }

  private release(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
