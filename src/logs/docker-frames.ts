import { cutMark } from './line-splitter.js';

/**
 * Reads the Docker engine's log stream (`GET /containers/{id}/logs?timestamps=1`) of a container
 * without a TTY: frames of an 8-byte header (stream: 1 stdout, 2 stderr; 3 bytes 0; a big-endian
 * length) and a payload `<RFC 3339 time with nanoseconds> <text>\n`. The engine splits a line longer
 * than 16 KiB into entries without the newline, each with a time of its own; they are joined here
 * (up to the line cap) and the line keeps the time of its first entry.
 */

/** One complete line of a container's log. */
export interface DockerLine {
  stream: 'stdout' | 'stderr';
  /** Epoch ms of its (first) entry. */
  ts: number;
  text: string;
  /** The entry time as the engine wrote it (nanoseconds): what a resume's cursor holds. */
  at: string;
  /** The container it was read from, and where its log resumes after this line. */
  source: string;
  cursor: DockerCursor;
}

/** Where a container's log was read up to: the time of the last entry taken, and how many entries with exactly that time were. */
export interface DockerCursor {
  at: string;
  skip: number;
}

const HEADER = 8;

interface Partial {
  parts: string[];
  bytes: number;
  cut: number;
  ts: number;
}

export class DockerFrameReader {
  private rest: Buffer | undefined;
  private readonly partial: [Partial | undefined, Partial | undefined] = [undefined, undefined];
  /** The cursor after the last entry read (complete lines and parts of unfinished ones). */
  private readAt: DockerCursor;
  /** Entries still to skip: those at the resume cursor's time that were taken before. */
  private skipLeft: number;
  private readonly resumeAt: string | undefined;
  private secondKey = '';
  private secondMs = 0;

  constructor(
    private readonly maxLineBytes: number,
    resume?: DockerCursor,
    /** The container, named on every line. */
    private readonly source = '',
  ) {
    this.readAt = resume ? { ...resume } : { at: '', skip: 0 };
    this.resumeAt = resume?.at;
    this.skipLeft = resume?.skip ?? 0;
  }

  /**
   * The complete lines in `chunk` (and what earlier chunks left), each with the cursor that
   * resumes right after it. A line split into entries gets the cursor of its last entry.
   */
  push(chunk: Buffer): DockerLine[] {
    const buf = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    const out: DockerLine[] = [];
    let off = 0;
    while (buf.length - off >= HEADER) {
      const size = buf.readUInt32BE(off + 4);
      if (buf.length - off - HEADER < size) break;
      const kind = buf[off] as number;
      const start = off + HEADER;
      off += HEADER + size;
      if (kind !== 1 && kind !== 2) continue; // stdin (0) or anything unknown: not a log line
      const line = this.entry(kind === 1 ? 'stdout' : 'stderr', buf, start, off);
      if (line) out.push(line);
    }
    this.rest = off < buf.length ? Buffer.from(buf.subarray(off)) : undefined;
    return out;
  }

  /**
   * The entry in `buf[start, end)`. Read by offsets, not through subarrays (no Buffer object per
   * entry); the cursor returned is `readAt` itself, never changed in place (a new one per entry).
   */
  private entry(stream: 'stdout' | 'stderr', buf: Buffer, start: number, end: number): DockerLine | undefined {
    const space = buf.indexOf(0x20, start);
    if (space <= start || space >= end) return undefined;
    const at = buf.toString('latin1', start, space);
    if (this.skipLeft > 0 && at === this.resumeAt) {
      this.skipLeft--;
      return undefined;
    }
    this.skipLeft = 0;
    this.readAt = at === this.readAt.at ? { at, skip: this.readAt.skip + 1 } : { at, skip: 1 };
    const complete = buf[end - 1] === 0x0a;
    const from = space + 1;
    const to = complete ? end - 1 : end;
    const length = to - from;
    const i = stream === 'stdout' ? 0 : 1;
    let p = this.partial[i];
    if (!p && complete) {
      const ts = this.millis(at);
      const text = length > this.maxLineBytes ? cutMark(buf.toString('utf8', from, from + this.maxLineBytes), length - this.maxLineBytes) : buf.toString('utf8', from, to);
      return { stream, ts, text, at, source: this.source, cursor: this.readAt };
    }
    p ??= this.partial[i] = { parts: [], bytes: 0, cut: 0, ts: this.millis(at) };
    const room = Math.max(0, this.maxLineBytes - p.bytes);
    if (length <= room) {
      p.parts.push(buf.toString('utf8', from, to));
      p.bytes += length;
    } else {
      if (room > 0) p.parts.push(buf.toString('utf8', from, from + room));
      p.bytes += room;
      p.cut += length - room;
    }
    if (!complete) return undefined;
    this.partial[i] = undefined;
    const joined = p.parts.join('');
    return { stream, ts: p.ts, text: p.cut > 0 ? cutMark(joined, p.cut) : joined, at, source: this.source, cursor: this.readAt };
  }

  /** Epoch ms of an RFC 3339 time; the date and seconds are parsed once per second of log. */
  private millis(at: string): number {
    const dot = at.indexOf('.');
    const key = dot === -1 ? at : at.slice(0, dot);
    if (key !== this.secondKey) {
      const base = Date.parse(dot === -1 ? at : `${key}Z`);
      this.secondKey = key;
      this.secondMs = Number.isNaN(base) ? 0 : base;
    }
    if (dot === -1) return this.secondMs;
    let ms = 0;
    let k = 0;
    for (let j = dot + 1; k < 3; j++, k++) {
      const c = at.charCodeAt(j) - 48;
      if (!(c >= 0 && c <= 9)) break;
      ms = ms * 10 + c;
    }
    for (; k < 3; k++) ms *= 10;
    return this.secondMs + ms;
  }
}

/**
 * Docker's `since` for a cursor: seconds and nanoseconds since the epoch (`1733470800.123456789`).
 * Entries at exactly that time are sent again (the engine skips only those before it): the
 * cursor's `skip` drops them. Undefined when the time cannot be read (then everything is read).
 */
export function sinceParam(at: string): string | undefined {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(at);
  if (!m) return undefined;
  const seconds = Date.parse(`${m[1]}${m[3]}`) / 1000;
  if (!Number.isFinite(seconds)) return undefined;
  return `${seconds}.${(m[2] ?? '').padEnd(9, '0')}`;
}
