import type { CollectedLine, LogStream } from './types.js';

/** pino's numeric levels, by name. */
export const LEVELS: Readonly<Record<string, number>> = Object.freeze({ trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 });

const NAMES: Readonly<Record<number, LogStream>> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };

/** Lines kept from before the collector attached (the start logs its warnings before the outbox is open). */
const EARLY_LINES = 500;

/** Fields of a record that are not part of what it says. */
const NOISE = new Set(['level', 'time', 'pid', 'hostname', 'msg']);

/**
 * The agent's own log records on their way to the `agent` log source (docs/logs.md): a stream the
 * logger writes its records at or above the shipped level to (pino.multistream; records are
 * redacted before they get here). Records written before the collector attaches are kept (up to
 * EARLY_LINES; more are counted as dropped); records written while the collector is handling one are
 * not taken, so a warning about shipping logs cannot feed itself.
 */
export class AgentLogTap {
  private sink: ((line: CollectedLine) => void) | undefined;
  private early: CollectedLine[] = [];
  private earlyDropped = 0;
  private busy = false;

  constructor(readonly level: string = 'warn') {}

  /** The stream for pino.multistream: takes one serialized record per write. */
  readonly stream = {
    write: (record: string): void => {
      if (this.busy) return;
      const line = toLine(record);
      if (!line) return;
      if (!this.sink) {
        if (this.early.length < EARLY_LINES) this.early.push(line);
        else this.earlyDropped++;
        return;
      }
      this.busy = true;
      try {
        this.sink(line);
      } finally {
        this.busy = false;
      }
    },
  };

  /** Hands records to `sink` from now on (and those kept from before); returns the detach function. */
  attach(sink: (line: CollectedLine) => void, dropped: (count: number) => void): () => void {
    this.sink = sink;
    const early = this.early;
    this.early = [];
    this.busy = true;
    try {
      for (const line of early) sink(line);
      if (this.earlyDropped > 0) dropped(this.earlyDropped);
    } finally {
      this.busy = false;
    }
    this.earlyDropped = 0;
    return () => {
      if (this.sink === sink) this.sink = undefined;
    };
  }
}

/** A record as a line: its level as the stream, its message followed by its other fields as JSON. */
export function toLine(record: string): CollectedLine | undefined {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(record) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const stream = NAMES[typeof r.level === 'number' ? r.level : 0] ?? 'info';
  const ts = typeof r.time === 'string' ? Date.parse(r.time) : typeof r.time === 'number' ? r.time : NaN;
  const rest: Record<string, unknown> = {};
  let any = false;
  for (const [k, v] of Object.entries(r)) {
    if (NOISE.has(k)) continue;
    rest[k] = v;
    any = true;
  }
  const msg = typeof r.msg === 'string' ? r.msg : '';
  return { stream, ts: Number.isFinite(ts) ? ts : Date.now(), text: any ? `${msg} ${JSON.stringify(rest)}`.trim() : msg };
}
