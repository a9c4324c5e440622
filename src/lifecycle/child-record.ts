import { readFileSync, rmSync } from 'node:fs';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';

/** In `<dataDir>/releases/`, beside state.json. */
export const CHILD_RECORD_FILE = 'agent.json';

/**
 * The agent a launcher runs, recorded in the data dir (pid and start time), so that a launcher started
 * after one that was killed (kill -9 outside systemd, whose cgroup kill would have taken the child too)
 * stops the agent it left behind before starting another: two agents on one data dir would fight over
 * its lock, and a hung version on trial would outlive its rollback.
 */
export class ChildRecord {
  constructor(
    private readonly file: string,
    private readonly clock: Clock,
    private readonly logger: Logger,
  ) {}

  record(pid: number): void {
    const proc = readProc(pid);
    if (proc) writeFileAtomic(this.file, `${JSON.stringify({ pid, startTicks: proc.startTicks })}\n`);
  }

  clear(): void {
    rmSync(this.file, { force: true });
  }

  /** Stops the recorded agent if it still runs (SIGTERM, then SIGKILL after `graceMs`); its pid, or undefined. */
  async reap(graceMs: number): Promise<number | undefined> {
    let rec: { pid?: unknown; startTicks?: unknown };
    try {
      rec = JSON.parse(readFileSync(this.file, 'utf8')) as typeof rec;
    } catch {
      return undefined;
    }
    const { pid, startTicks } = rec;
    this.clear();
    if (typeof pid !== 'number' || typeof startTicks !== 'string') return undefined;
    const alive = (): boolean => {
      const p = readProc(pid);
      return p !== undefined && p.startTicks === startTicks && p.state !== 'Z' && p.state !== 'X';
    };
    if (!alive()) return undefined;
    this.logger.warn({ pid }, `the agent a previous launcher started (pid ${pid}) is still running; stopping it before starting another`);
    for (const [signal, waitMs] of [['SIGTERM', graceMs], ['SIGKILL', 5_000]] as const) {
      try {
        process.kill(pid, signal);
      } catch {
        return pid;
      }
      for (const until = this.clock.monotonic() + waitMs; this.clock.monotonic() < until; ) {
        if (!alive()) return pid;
        await this.clock.sleep(100);
      }
    }
    this.logger.error({ pid }, `the agent a previous launcher started (pid ${pid}) did not stop`);
    return pid;
  }
}

/** A process's state letter and start time (clock ticks since boot) from /proc, or undefined when it is gone. */
function readProc(pid: number): { state: string; startTicks: string } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[0] && rest[19] ? { state: rest[0], startTicks: rest[19] } : undefined;
  } catch {
    return undefined;
  }
}
