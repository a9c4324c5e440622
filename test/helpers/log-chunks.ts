import type { ChunkCommit } from '../../src/logs/log-store.js';
import type { LogLine, StoredLine } from '../../src/logs/types.js';

/** What ServiceLog hands LogStore.commit for these lines of one service (a chunk stamped `ts`). */
export function chunkCommit(service: string, nextSeq: number, lines: readonly LogLine[], ts = lines[0]?.ts ?? 0): ChunkCommit {
  const stored: StoredLine[] = lines.map((l) => (l.stream === 'marker' ? [l.seq, l.ts - ts, 'marker', l.line, l.dropped ?? 0, l.reason ?? 'outbox'] : [l.seq, l.ts - ts, l.stream, l.line]));
  return { service, nextSeq, cursors: new Map(), firstSeq: lines[0]?.seq ?? nextSeq, ts, json: lines.length > 0 ? JSON.stringify({ service, lines: stored }) : '' };
}
