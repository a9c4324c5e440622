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
  /** While lines are being dropped, a chunk waits for this long after the last marker (at most one marker per reason per interval, unless chunks fill). */
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

/** What was taken, in order: a line, or lines dropped; either may move a replayable source's cursor. */
interface Entry {
  line?: CollectedLine;
  drop?: LogDropReason;
  count?: number;
  /** A replayable source and where it resumes after this entry. */
  source?: string;
  cursor?: DockerCursor;
}

interface Pending {
  entries: Entry[];
  /** Lines among `entries`, and their bytes of text. */
  lines: number;
  bytes: number;
  /** Whether `entries` counts dropped lines (a marker is due). */
  drops: boolean;
  startedAt: number;
}

/** A chunk on its way to the outbox. */
interface Chunk {
  lines: LogLine[];
  /** Per replayable source, the cursor after its last entry in the chunk. */
  cursors: Map<string, DockerCursor>;
  /** Entries of non-replayable sources' lines, for a refusal to count. */
  replayable: boolean;
}

/**
 * One service's log on its way to the outbox: rate limits, sequence numbers, marker lines for what
 * was dropped, and chunks (one outbox message of up to `maxLines` lines) committed one at a time.
 * Sequence numbers are given when a chunk is cut, and a chunk's commit writes the service's next
 * number, its sources' cursors and the local tail in the enqueue's transaction (LogStore.commit):
 * what a crash leaves is always a prefix of what was taken, numbered without a gap, with the
 * markers of the drops in that prefix, so a source read again from its cursor neither repeats nor
 * skips a line, nor counts a drop twice. The drops of a chunk become one marker line per reason at
 * its end; while lines are being dropped a chunk waits up to `markerIntervalMs` after the last marker.
 */
export class ServiceLog {
  private nextSeq: number;
  private pending: Pending;
  private committing: Promise<void> | undefined;
  /** Cancels the pending wake-up (a chunk's window). */
  private timer: AbortController | undefined;
  private readonly limiter: LogRateLimiter;
  private lastMarkerAt = -Infinity;
  private refusals = 0;
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
   * pause until `drained()` and hand the line again; a line that is not replayable was dropped (counted).
   */
  push(line: CollectedLine, source?: string, cursor?: DockerCursor): boolean {
    if (this.closed) return false;
    const at: Pick<Entry, 'source' | 'cursor'> = source !== undefined && cursor ? { source, cursor } : {};
    if (this.pending.bytes >= this.o.chunk.maxPendingBytes && this.committing) {
      if (source === undefined) this.drop('backlog', 1);
      return false;
    }
    const reason = this.limiter.admit(Buffer.byteLength(line.text));
    if (reason) this.drop(reason, 1, at);
    else {
      if (this.pending.lines === 0) this.pending.startedAt = this.o.clock.monotonic();
      this.pending.entries.push({ line, ...at });
      this.pending.lines++;
      this.pending.bytes += line.text.length + 32;
    }
    this.schedule();
    return true;
  }

  /** Counts `count` lines dropped (by a limit here, or a source's own); a marker line will say so. */
  drop(reason: LogDropReason, count: number, at: Pick<Entry, 'source' | 'cursor'> = {}): void {
    if (count <= 0) return;
    const last = this.pending.entries[this.pending.entries.length - 1];
    // A run of drops of one reason is one entry (a flood must not cost an entry per line).
    if (last && last.drop === reason && last.line === undefined) {
      last.count = (last.count ?? 0) + count;
      if (at.source !== undefined) Object.assign(last, at);
    } else {
      if (this.pending.entries.length === 0) this.pending.startedAt = this.o.clock.monotonic();
      this.pending.entries.push({ drop: reason, count, ...at });
    }
    this.pending.drops = true;
    this.o.onDropped?.(reason, count);
    this.schedule();
  }

  /** Resolves when the backlog has room again. */
  drained(): Promise<void> {
    if (this.pending.bytes < this.o.chunk.maxPendingBytes || !this.committing) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Queues everything pending now and waits until it is committed, or until the outbox refuses a chunk. */
  async flush(): Promise<void> {
    const refusals = this.refusals;
    while (this.refusals === refusals && (this.committing || this.pending.entries.length > 0)) {
      if (!this.committing) this.commitNext();
      await this.committing;
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
    return { entries: [], lines: 0, bytes: 0, drops: false, startedAt: this.o.clock.monotonic() };
  }

  private schedule(): void {
    const p = this.pending;
    if (this.committing) return; // the commit's end looks again
    if (p.lines >= this.o.chunk.maxLines || p.bytes >= this.o.chunk.maxBytes) {
      this.commitNext();
      return;
    }
    if (this.timer || p.entries.length === 0) return;
    let due = p.startedAt + this.o.chunk.windowMs;
    if (p.drops) due = Math.max(due, this.lastMarkerAt + this.o.markerIntervalMs);
    const timer = (this.timer = new AbortController());
    this.o.clock.sleep(Math.max(0, due - this.o.clock.monotonic()), timer.signal).then(
      () => {
        this.timer = undefined;
        if (!this.closed) this.commitNext();
      },
      () => undefined, // cancelled
    );
  }

  private cancelTimer(): void {
    this.timer?.abort();
    this.timer = undefined;
  }

  /** Cuts the next chunk (at most maxLines lines, about maxBytes) off the pending entries and commits it. */
  private commitNext(): void {
    this.cancelTimer();
    const p = this.pending;
    if (p.entries.length === 0 || this.committing) return;
    const { chunk, taken, bytes } = this.cut(p.entries);
    if (taken === p.entries.length) this.pending = this.fresh();
    else {
      p.entries = p.entries.slice(taken);
      p.lines = p.entries.reduce((n, e) => n + (e.line ? 1 : 0), 0);
      p.bytes -= bytes;
      p.drops = p.entries.some((e) => e.drop !== undefined);
      p.startedAt = this.o.clock.monotonic();
    }
    this.committing = this.commit(chunk).finally(() => {
      this.committing = undefined;
      this.release();
      this.schedule();
    });
  }

  /** The chunk of the first entries: their lines numbered, the drops of each reason one marker where the first of them was. */
  private cut(entries: readonly Entry[]): { chunk: Chunk; taken: number; bytes: number } {
    const chunk: Chunk = { lines: [], cursors: new Map(), replayable: false };
    const markers = new Map<LogDropReason, LogLine>();
    let bytes = 0;
    let taken = 0;
    let seq = this.nextSeq;
    for (const e of entries) {
      if (e.line) {
        if (chunk.lines.length >= this.o.chunk.maxLines || (chunk.lines.length > 0 && bytes >= this.o.chunk.maxBytes)) break;
        chunk.lines.push({ service: this.o.service, seq: seq++, ts: e.line.ts, stream: e.line.stream, line: e.line.text });
        bytes += e.line.text.length + 32;
      } else if (e.drop) {
        let m = markers.get(e.drop);
        if (!m) {
          m = { service: this.o.service, seq: seq++, ts: this.o.clock.now(), stream: 'marker', line: '', dropped: 0, reason: e.drop };
          markers.set(e.drop, m);
          chunk.lines.push(m);
        }
        m.dropped = (m.dropped ?? 0) + (e.count ?? 0);
      }
      if (e.source !== undefined && e.cursor) {
        chunk.cursors.set(e.source, e.cursor);
        chunk.replayable = true;
      }
      taken++;
    }
    for (const m of markers.values()) m.line = markerText(m.dropped ?? 0, m.reason ?? 'outbox', this.o.rate);
    if (markers.size > 0) this.lastMarkerAt = this.o.clock.monotonic();
    this.nextSeq = seq;
    return { chunk, taken, bytes };
  }

  private async commit(chunk: Chunk): Promise<void> {
    const createdAt = this.o.clock.now();
    const stored: StoredLine[] = chunk.lines.map((l) => (l.stream === 'marker' ? [l.seq, l.ts - createdAt, 'marker', l.line, l.dropped ?? 0, l.reason ?? 'outbox'] : [l.seq, l.ts - createdAt, l.stream, l.line]));
    const nextSeq = this.nextSeq;
    const alongside = (): void => this.o.store.commit({ service: this.o.service, nextSeq, cursors: chunk.cursors, lines: chunk.lines });
    try {
      if (chunk.lines.length > 0) {
        await this.o.outbox.enqueueMany([{ channel: LOGS_CHANNEL, stream: this.o.service, payload: { service: this.o.service, lines: stored } }], { alongside });
      } else {
        // Only cursors moved (nothing to send): they are stored alone.
        alongside();
      }
    } catch (err) {
      this.refused(chunk, err);
      return;
    }
    this.o.onCommitted?.(chunk.lines);
  }

  /**
   * A chunk the outbox refused: numbering starts again at its first line. A replayable source's lines
   * (and what is pending after them) are read again from the stored cursors; other lines are counted
   * dropped, ahead of what is pending.
   */
  private refused(chunk: Chunk, err: unknown): void {
    this.refusals++;
    this.nextSeq = chunk.lines[0]?.seq ?? this.nextSeq;
    const lost = chunk.lines.filter((l) => l.stream !== 'marker').length;
    const code = err instanceof OutboxError ? err.code : undefined;
    this.o.logger[this.o.quiet ? 'debug' : 'warn']({ service: this.o.service, lines: lost, code, err: errorMessage(err) }, `logs of ${this.o.service}: the outbox refused ${lost} line(s)`);
    if (chunk.replayable || this.pending.entries.some((e) => e.source !== undefined)) {
      this.pending = this.fresh();
      this.o.onRewind?.();
      return;
    }
    const dropped: Entry[] = [];
    if (lost > 0) dropped.push({ drop: 'outbox', count: lost });
    for (const m of chunk.lines) if (m.stream === 'marker' && m.reason && m.dropped) dropped.push({ drop: m.reason, count: m.dropped });
    this.pending.entries.unshift(...dropped);
    this.pending.drops ||= dropped.length > 0;
    if (lost > 0) this.o.onDropped?.('outbox', lost);
  }

  private release(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
