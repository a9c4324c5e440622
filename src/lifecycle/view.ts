import type { Json } from '../util/json-diff.js';
import { ReleaseStore } from './release-store.js';

/** What `/v2/state` and `status` show of self-update: the version running, the release in force, a trial, the last outcome. */
export interface LifecycleView {
  version: string;
  /** Running under `iotistic-agent launch` (self-update and config updates need it). */
  launched: boolean;
  /** The release in force (`releases/<name>`), or null for the installed version. */
  release: string | null;
  /** The release a rollback would go back to. */
  previous: string | null;
  trial: { kind: 'agent' | 'config'; jobId: string; from: string; to: string; startedAt: number; deadline: number; attempts: number } | null;
  lastOutcome: { jobId: string; status: 'SUCCEEDED' | 'FAILED'; at: number; reason: string | null } | null;
}

/** Read from releases/state.json at each call: the launcher writes it, not this process. */
export function lifecycleView(dataDir: string, version: string, launched: boolean): LifecycleView {
  const s = new ReleaseStore(dataDir).read();
  const t = s.trial;
  const last = s.outcomes.at(-1);
  const reason = (details: Record<string, Json>): string | null => (typeof details.reason === 'string' ? details.reason : null);
  return {
    version,
    launched,
    release: s.current,
    previous: s.previous,
    trial: t ? { kind: t.kind, jobId: t.jobId, from: t.from.version, to: t.to.version, startedAt: t.startedAt, deadline: t.deadline, attempts: t.attempts } : null,
    lastOutcome: last ? { jobId: last.jobId, status: last.status, at: last.at, reason: reason(last.details) } : null,
  };
}
