import type { Outbox } from '../outbox/outbox.js';
import type { Json } from '../util/json-diff.js';
import { OutboxError } from '../outbox/types.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { DockerCursor } from './docker-frames.js';
import type { LogStore } from './log-store.js';
import { LogRateLimiter, markerText, type LogRateLimits } from './rate-limit.js';
import { expandLines, LOGS_CHANNEL, type ChunkPayload, type CollectedLine, type LogDropReason, type LogLine, type StoredLine } from './types.js';

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
  /** A chunk committed, its lines' times relative to `ts` (expandLines): for local followers and metrics. */
  onCommitted?: (chunk: ChunkPayload, ts: number) => void;
  /** Lines dropped (metrics). */
  onDropped?: (reason: LogDropReason, count: number) => void;
  /**
   * The outbox refused a chunk. Lines of replayable sources (containers: the engine keeps their log)
   * are not counted as dropped: they are read again from the stored cursors (`rewind`).
   */
  onRewind?: () => void;
  /** Masks secret values in a line's text before it is kept or sent (secrets/secret-store.ts). */
  mask?: (text: string) => string;
}

/** A line as a source hands it: a replayable one (a container's) names itself and where its log resumes after the line. */
export interface SourcedLine extends CollectedLine {
  source?: string;
  cursor?: DockerCursor;
}

/** Lines dropped (a run of one reason is one entry); it may move a replayable source's cursor. */
interface Drop {
  drop: LogDropReason;
  count: number;
  source?: string;
  cursor?: DockerCursor;
}

/** What was taken, in order: lines (as the sources handed them: no copy per line) and drops. */
type Entry = SourcedLine | Drop;

const isDrop = (e: Entry): e is Drop => (e as Drop).drop !== undefined;

interface Pending {
  entries: Entry[];
  /** Lines among `entries`, and their length in characters (about their bytes). */
  lines: number;
  chars: number;
  /** Whether `entries` counts dropped lines (a marker is due). */
  drops: boolean;
  startedAt: number;
}

/** A chunk on its way to the outbox: stored lines with their absolute times until the commit makes them relative. */
interface Chunk {
  lines: StoredLine[];
  /** Per replayable source, the cursor after its last entry in the chunk. */
  cursors: Map<string, DockerCursor>;
  replayable: boolean;
}

/**
 * One service's log on its way to the outbox: rate limits, sequence numbers, marker lines for what
 * was dropped, and chunks (one outbox message of up to `maxLines` lines) committed one at a time.
 * Sequence numbers are given when a chunk is cut, and a chunk's commit writes the service's next
 * number, its sources' cursors and the local tail in the enqueue's transaction (LogStore.commit):
 * what a crash leaves is always a prefix of what was taken, numbered without a gap, with the
 * markers of the drops in that prefix, so a source read again from its cursor neither repeats nor
 * skips a line, nor counts a drop twice. The drops of one reason in a chunk are one marker line, where
 * the first of them was; while lines are being dropped a chunk waits up to `markerIntervalMs` after
 * the last marker.
 */
export class ServiceLog {
  private nextSeq: number;
  private pending: Pending;
  private committing: Promise<void> | undefined;
  /** Cancels the pending wake-up (a chunk's window). */
  private timer: AbortController | undefined;
  private readonly limiter: LogRateLimiter;
  private readonly countBytes: boolean;
  private lastMarkerAt = -Infinity;
  private refusals = 0;
  private closed = false;
  private drainWaiters: Array<() => void> = [];

  constructor(private readonly o: ServiceLogOptions) {
    this.nextSeq = o.store.nextSeq(o.service);
    this.limiter = new LogRateLimiter(o.rate, o.clock);
    this.countBytes = o.rate.bytesPerSecond > 0;
    this.pending = this.fresh();
  }

  get service(): string {
    return this.o.service;
  }

  /** Characters of line text waiting for the outbox. */
  get backlogBytes(): number {
    return this.pending.chars;
  }

  /**
   * Takes a line. Returns false when the backlog is full: a replayable source (a line with `source`
   * and `cursor`) should pause until `drained()` and hand the line again; another line was dropped (counted).
   */
  push(sourced: SourcedLine): boolean {
    if (this.closed) return false;
    const masked = this.o.mask?.(sourced.text);
    const line = masked === undefined || masked === sourced.text ? sourced : { ...sourced, text: masked };
    const p = this.pending;
    if (p.chars >= this.o.chunk.maxPendingBytes && this.committing) {
      if (line.source === undefined) this.drop('backlog', 1);
      return false;
    }
    const reason = this.limiter.admit(this.countBytes ? Buffer.byteLength(line.text) : line.text.length);
    if (reason) this.drop(reason, 1, line.source, line.cursor);
    else {
      if (p.lines === 0) p.startedAt = this.o.clock.monotonic();
      p.entries.push(line);
      p.lines++;
      p.chars += line.text.length + 32;
      if (p.lines >= this.o.chunk.maxLines || p.chars >= this.o.chunk.maxBytes) this.schedule();
      else if (!this.timer && !this.committing) this.schedule();
    }
    return true;
  }

  /** Counts `count` lines dropped (by a limit here, or a source's own); a marker line will say so. */
  drop(reason: LogDropReason, count: number, source?: string, cursor?: DockerCursor): void {
    if (count <= 0) return;
    const p = this.pending;
    const last = p.entries[p.entries.length - 1];
    // A run of drops of one reason is one entry (a flood must not cost an entry per line).
    if (last && isDrop(last) && last.drop === reason) {
      last.count += count;
      if (source !== undefined) {
        last.source = source;
        last.cursor = cursor;
      }
    } else {
      if (p.entries.length === 0) p.startedAt = this.o.clock.monotonic();
      p.entries.push(source === undefined ? { drop: reason, count } : { drop: reason, count, source, cursor });
    }
    p.drops = true;
    this.o.onDropped?.(reason, count);
    this.schedule();
  }

  /** Resolves when the backlog has room again. */
  drained(): Promise<void> {
    if (this.pending.chars < this.o.chunk.maxPendingBytes || !this.committing) return Promise.resolve();
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
    return { entries: [], lines: 0, chars: 0, drops: false, startedAt: this.o.clock.monotonic() };
  }

  private schedule(): void {
    const p = this.pending;
    if (this.committing) return; // the commit's end looks again
    if (p.lines >= this.o.chunk.maxLines || p.chars >= this.o.chunk.maxBytes) {
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
    const { chunk, taken, chars } = this.cut(p.entries);
    if (taken === p.entries.length) this.pending = this.fresh();
    else {
      p.entries = p.entries.slice(taken);
      p.lines = p.entries.reduce((n, e) => n + (isDrop(e) ? 0 : 1), 0);
      p.chars -= chars;
      p.drops = p.entries.some(isDrop);
      p.startedAt = this.o.clock.monotonic();
    }
    this.committing = this.commit(chunk).finally(() => {
      this.committing = undefined;
      this.release();
      this.schedule();
    });
  }

  /** The chunk of the first entries: their lines numbered, the drops of each reason one marker where the first of them was. */
  private cut(entries: readonly Entry[]): { chunk: Chunk; taken: number; chars: number } {
    const chunk: Chunk = { lines: [], cursors: new Map(), replayable: false };
    const markers = new Map<LogDropReason, StoredLine>();
    let chars = 0;
    let taken = 0;
    let seq = this.nextSeq;
    for (const e of entries) {
      if (!isDrop(e)) {
        if (chunk.lines.length >= this.o.chunk.maxLines || (chunk.lines.length > 0 && chars >= this.o.chunk.maxBytes)) break;
        chunk.lines.push([seq++, e.ts, e.stream, e.text]);
        chars += e.text.length + 32;
      } else {
        const m = markers.get(e.drop);
        if (m) (m as [number, number, 'marker', string, number, LogDropReason])[4] += e.count;
        else {
          const marker: StoredLine = [seq++, this.o.clock.now(), 'marker', '', e.count, e.drop];
          markers.set(e.drop, marker);
          chunk.lines.push(marker);
        }
      }
      if (e.source !== undefined && e.cursor) {
        chunk.cursors.set(e.source, e.cursor);
        chunk.replayable = true;
      }
      taken++;
    }
    for (const m of markers.values()) m[3] = markerText(m[4] as number, m[5] as LogDropReason, this.o.rate);
    if (markers.size > 0) this.lastMarkerAt = this.o.clock.monotonic();
    this.nextSeq = seq;
    return { chunk, taken, chars };
  }

  private async commit(chunk: Chunk): Promise<void> {
    const ts = this.o.clock.now();
    const nextSeq = this.nextSeq;
    const first = chunk.lines[0]?.[0] ?? nextSeq;
    // The lines' times become offsets from the chunk's (the outbox corrects the chunk's: docs/logs.md).
    const absolute = chunk.lines.map((l) => l[1]);
    for (const l of chunk.lines) l[1] -= ts;
    const payload: ChunkPayload = { service: this.o.service, lines: chunk.lines };
    // Serialised once, for the outbox and the local tail.
    const json = chunk.lines.length > 0 ? JSON.stringify(payload) : '';
    const alongside = (): void => this.o.store.commit({ service: this.o.service, nextSeq, cursors: chunk.cursors, firstSeq: first, ts, json });
    try {
      if (chunk.lines.length > 0) {
        await this.o.outbox.enqueueMany([{ channel: LOGS_CHANNEL, stream: this.o.service, payload: payload as unknown as Json, payloadJson: json }], { alongside });
      } else {
        // Only cursors moved (nothing to send): they are stored alone.
        alongside();
      }
    } catch (err) {
      chunk.lines.forEach((l, i) => (l[1] = absolute[i] as number));
      this.refused(chunk, err);
      return;
    }
    this.o.onCommitted?.(payload, ts);
  }

  /**
   * A chunk the outbox refused: numbering starts again at its first line. A replayable source's lines
   * (and what is pending after them) are read again from the stored cursors; other lines are counted
   * dropped, ahead of what is pending.
   */
  private refused(chunk: Chunk, err: unknown): void {
    this.refusals++;
    this.nextSeq = chunk.lines[0]?.[0] ?? this.nextSeq;
    const lost = chunk.lines.filter((l) => l[2] !== 'marker').length;
    const code = err instanceof OutboxError ? err.code : undefined;
    this.o.logger[this.o.quiet ? 'debug' : 'warn']({ service: this.o.service, lines: lost, code, err: errorMessage(err) }, `logs of ${this.o.service}: the outbox refused ${lost} line(s)`);
    if (chunk.replayable || this.pending.entries.some((e) => e.source !== undefined)) {
      this.pending = this.fresh();
      this.o.onRewind?.();
      return;
    }
    const dropped: Drop[] = [];
    if (lost > 0) dropped.push({ drop: 'outbox', count: lost });
    for (const m of chunk.lines) if (m[2] === 'marker') dropped.push({ drop: m[5] as LogDropReason, count: m[4] as number });
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

/** The lines of a committed chunk, as the local API shows them. */
export function committedLines(chunk: ChunkPayload, ts: number): LogLine[] {
  return expandLines(ts, chunk).map((l) => ({ service: chunk.service, ...l }));
}
