/**
 * Device logs (docs/logs.md): what the collectors hand on, what the outbox stores and what the wire
 * carries. A log source is named by its `service`: `<app>/<service>` for a workload, `agent` for the
 * agent's own warnings and errors (no workload name can be one level: `/` is not a name character).
 */

/** The outbox channel log chunks are queued on. */
export const LOGS_CHANNEL = 'logs';

/** The agent's own log source. */
export const AGENT_SERVICE = 'agent';

/** `stdout`/`stderr` of a workload; a level for the agent's own lines; `marker` for a line that stands for dropped ones. */
export type LogStream = 'stdout' | 'stderr' | 'marker' | 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

/** Why lines were dropped (a marker line counts them: never silently). */
export type LogDropReason = 'lines-rate' | 'bytes-rate' | 'backlog' | 'outbox';

/** One line as a collector takes it. */
export interface CollectedLine {
  stream: LogStream;
  /** Wall-clock epoch ms it was printed (Docker's timestamp) or read. */
  ts: number;
  text: string;
}

/** A line with its sequence number, as shown locally and sent. */
export interface LogLine {
  service: string;
  seq: number;
  /** Epoch ms. */
  ts: number;
  stream: LogStream;
  line: string;
  /** Marker lines: how many lines this one stands for, and why they were dropped. */
  dropped?: number;
  reason?: LogDropReason;
}

/**
 * A stored line of a chunk: `[seq, dt, stream, line]` or, for a marker, `[seq, dt, "marker", line,
 * dropped, reason]`. `dt` is the line's time less the chunk's (its outbox message's `createdAt`), so
 * the outbox's correction of a message queued before the clock was synced (docs/outbox.md, "Time")
 * corrects its lines too. Arrays, not objects: a chunk of 1,000 lines is parsed and written at every
 * step of its way.
 */
export type StoredLine = [number, number, LogStream, string] | [number, number, 'marker', string, number, LogDropReason];

/** The payload of a `logs` outbox message. */
export interface ChunkPayload {
  service: string;
  lines: StoredLine[];
}

/** A `logs` outbox message as the wire carries it (docs/protocol.md, "Logs"). */
export interface WireLogMessage {
  id: string;
  ts: number;
  service: string;
  lines: Array<Omit<LogLine, 'service'>>;
  backfill?: true;
}

/** A chunk payload read back from the outbox, checked: undefined when it is not one. */
export function chunkOf(payload: unknown): ChunkPayload | undefined {
  const p = payload as Partial<ChunkPayload> | null;
  if (p === null || typeof p !== 'object' || typeof p.service !== 'string' || !Array.isArray(p.lines)) return undefined;
  return p as ChunkPayload;
}

/** The lines of a stored chunk with their absolute times, `ts` being its message's (corrected) time. */
export function expandLines(ts: number, chunk: ChunkPayload): Array<Omit<LogLine, 'service'>> {
  return chunk.lines.map((l) =>
    l[2] === 'marker' ? { seq: l[0], ts: ts + l[1], stream: 'marker' as const, line: l[3], dropped: l[4] as number, reason: l[5] as LogDropReason } : { seq: l[0], ts: ts + l[1], stream: l[2], line: l[3] },
  );
}

/** The wire form of a `logs` message (HTTP batch item and MQTT body). */
export function wireLogMessage(m: { id: string; createdAt: number; payload: unknown; backfill?: boolean }): WireLogMessage | undefined {
  const chunk = chunkOf(m.payload);
  if (!chunk) return undefined;
  const out: WireLogMessage = { id: m.id, ts: m.createdAt, service: chunk.service, lines: expandLines(m.createdAt, chunk) };
  if (m.backfill) out.backfill = true;
  return out;
}
