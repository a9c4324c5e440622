import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { readJsonCopy, writeFileAtomic } from '../util/atomic-file.js';
import type { Json } from '../util/json-diff.js';
import { CHILD_RECORD_FILE } from './child-record.js';

/** A release: a directory name under releases/, or null for the launcher's own install (/opt). */
export type ReleaseName = string | null;

/** A version or config on trial: what it came from, what it goes to, and how it is doing. */
export interface Trial {
  kind: 'agent' | 'config';
  jobId: string;
  from: { release: ReleaseName; version: string; schemaVersion: number };
  to: { release: ReleaseName; version: string };
  /** Wall-clock ms. */
  startedAt: number;
  /** Wall-clock ms by which it must have reported healthy. */
  deadline: number;
  /** Starts of the trial so far (a launcher killed mid-trial counts its start as one). */
  attempts: number;
  /** A copy of the database taken before the switch (agent trials). */
  dbCopy?: string;
  /** Config trials: the file the launcher was given, and the last-known-good copy to restore. */
  configFile?: string;
  configBackup?: string;
  /** Config trials: the changed paths, reported with SUCCEEDED. */
  changed?: Json;
}

/** How a lifecycle job ended, recorded by the launcher for the agent to report (through the outbox). */
export interface Outcome {
  jobId: string;
  status: 'SUCCEEDED' | 'FAILED';
  details: Record<string, Json>;
  at: number;
}

export interface ReleaseState {
  current: ReleaseName;
  previous: ReleaseName;
  trial?: Trial;
  /** The newest last; a few are kept so an agent that restarts before reporting one still finds it. */
  outcomes: Outcome[];
}

const KEEP_OUTCOMES = 10;

/** `<dataDir>/releases/`: unpacked versions, their state (state.json, atomic, 0600) and copies taken for rollbacks. */
export class ReleaseStore {
  readonly dir: string;
  readonly stateFile: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'releases');
    this.stateFile = join(this.dir, 'state.json');
  }

  ensure(): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  read(): ReleaseState {
    const copy = readJsonCopy(this.stateFile);
    const empty: ReleaseState = { current: null, previous: null, outcomes: [] };
    if (!copy.ok || typeof copy.value !== 'object' || copy.value === null) return empty;
    const v = copy.value as Partial<ReleaseState>;
    return {
      current: typeof v.current === 'string' ? v.current : null,
      previous: typeof v.previous === 'string' ? v.previous : null,
      ...(v.trial && typeof v.trial === 'object' ? { trial: v.trial } : {}),
      outcomes: Array.isArray(v.outcomes) ? v.outcomes : [],
    };
  }

  write(state: ReleaseState): void {
    this.ensure();
    writeFileAtomic(this.stateFile, `${JSON.stringify({ ...state, outcomes: state.outcomes.slice(-KEEP_OUTCOMES) }, null, 2)}\n`);
  }

  /** Applies `change` to the state on disk and writes it back. */
  update(change: (s: ReleaseState) => ReleaseState): ReleaseState {
    const next = change(this.read());
    this.write(next);
    return next;
  }

  /** The directory a release lives in; null: the launcher's own install (`ownRoot`). */
  root(release: ReleaseName, ownRoot: string): string {
    return release === null ? ownRoot : join(this.dir, release);
  }

  /** Removes releases other than current and previous, and leftovers of unpacks and downloads. */
  prune(state: ReleaseState): string[] {
    if (!existsSync(this.dir)) return [];
    const keep = new Set([state.current, state.previous, state.trial?.to.release].filter((r): r is string => typeof r === 'string'));
    const removed: string[] = [];
    for (const e of readdirSync(this.dir, { withFileTypes: true })) {
      if (e.name === 'state.json' || e.name === CHILD_RECORD_FILE || keep.has(e.name)) continue;
      if (state.trial && (e.name === basename(state.trial.dbCopy) || e.name === basename(state.trial.configBackup))) continue;
      rmSync(join(this.dir, e.name), { recursive: true, force: true });
      removed.push(e.name);
    }
    return removed;
  }
}

function basename(path: string | undefined): string | undefined {
  return path?.split('/').pop();
}
