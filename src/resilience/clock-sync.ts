import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Wakeup } from './wakeup.js';

/** systemd-timesyncd creates this file once it has synchronised the clock (and its directory while it runs). */
export const TIMESYNCD_FLAG = '/run/systemd/timesync/synchronized';
export const TIMESYNCD_DIR = '/run/systemd/timesync';

/** Where `clockSynced` came from: the first source that answers wins; `plausibility` when none does. */
export type ClockSyncSource = 'pending' | 'timesyncd' | 'timedatectl' | 'plausibility';

export interface ClockSyncState {
  /** The wall clock can be trusted for timestamps, certificate checks and downtime. */
  synced: boolean;
  source: ClockSyncSource;
  /** Why, in words (`GET /v2/connection`, the status view). */
  detail: string;
  /** Wall-clock ms when it was first seen synced in this process (null: not yet). */
  since: number | null;
}

export interface ClockSyncOptions {
  clock: Pick<Clock, 'now' | 'sleep'>;
  logger: Logger;
  /** Wall-clock ms this agent was built: a wall clock before it cannot be right. */
  notBefore: number;
  /** Whether a path exists (default: fs.existsSync). */
  exists?: (path: string) => boolean;
  /** `timedatectl show -p NTPSynchronized --value`'s output; rejects when it cannot run (default: execFile, no shell, 2 s timeout). */
  timedatectl?: () => Promise<string>;
  /** Checks this often until synced (default 10 s) ... */
  unsyncedIntervalMs?: number;
  /** ... and this often after (default 5 min). */
  syncedIntervalMs?: number;
}

/** The default `timedatectl`: no shell, a timeout, only stdout kept. */
export function runTimedatectl(timeoutMs = 2_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('timedatectl', ['show', '-p', 'NTPSynchronized', '--value'], { timeout: timeoutMs, windowsHide: true }, (err, stdout) => (err ? reject(err) : resolve(String(stdout))));
  });
}

/**
 * Whether the wall clock is synced: from systemd-timesyncd's flag file where timesyncd runs, else
 * from `timedatectl` (any NTP client systemd knows of), else by plausibility (a wall clock not
 * before this agent's build date). Whatever a source says, a wall clock before the build date is
 * not synced. Until the first check ends the state is `pending` (not synced).
 */
export class ClockSync {
  private current: ClockSyncState = { synced: false, source: 'pending', detail: 'not checked yet', since: null };
  /** timedatectl is not installed (ENOENT): not asked again. */
  private noTimedatectl = false;
  private readonly listeners = new Set<(s: ClockSyncState) => void>();

  constructor(private readonly o: ClockSyncOptions) {}

  get state(): ClockSyncState {
    return { ...this.current };
  }

  get synced(): boolean {
    return this.current.synced;
  }

  /** Called with the new state whenever `synced` changes. Returns the function that unsubscribes. */
  onChange(fn: (s: ClockSyncState) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Asks the sources now and updates the state. */
  async check(): Promise<ClockSyncState> {
    const found = await this.ask();
    const wall = this.o.clock.now();
    if (found.synced && wall < this.o.notBefore) {
      found.synced = false;
      found.detail = `${found.detail}, but the wall clock (${iso(wall)}) is before this agent was built (${iso(this.o.notBefore)})`;
    }
    const was = this.current;
    this.current = { ...found, since: was.since ?? (found.synced ? wall : null) };
    if (was.synced !== found.synced || was.source === 'pending') this.changed(was);
    return this.state;
  }

  /** Checks until `signal` aborts: often while not synced, seldom after. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.check();
      const ms = this.current.synced ? (this.o.syncedIntervalMs ?? 300_000) : (this.o.unsyncedIntervalMs ?? 10_000);
      await this.o.clock.sleep(ms, signal).catch(() => undefined);
    }
  }

  private async ask(): Promise<Omit<ClockSyncState, 'since'>> {
    const exists = this.o.exists ?? existsSync;
    if (exists(TIMESYNCD_FLAG)) return { synced: true, source: 'timesyncd', detail: `systemd-timesyncd has synchronised the clock (${TIMESYNCD_FLAG})` };
    if (exists(TIMESYNCD_DIR)) return { synced: false, source: 'timesyncd', detail: `systemd-timesyncd runs and has not synchronised the clock yet (no ${TIMESYNCD_FLAG})` };
    if (!this.noTimedatectl) {
      try {
        const out = (await (this.o.timedatectl ?? runTimedatectl)()).trim();
        if (out === 'yes' || out === 'no') {
          return { synced: out === 'yes', source: 'timedatectl', detail: `timedatectl says NTPSynchronized=${out}` };
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') this.noTimedatectl = true;
        else this.o.logger.debug({ err: errorMessage(err) }, 'clock sync: timedatectl did not answer; judging by plausibility');
      }
    }
    // Only plausibility is left: the build-date rule in `check` decides.
    return { synced: true, source: 'plausibility', detail: 'no sync status available, judged by the build date' };
  }

  private changed(was: ClockSyncState): void {
    const s = this.state;
    if (s.synced) this.o.logger.info({ source: s.source }, `clock: synced (${s.detail})`);
    else if (was.synced || was.source === 'pending') this.o.logger.warn({ source: s.source }, `clock: not synced (${s.detail}); certificate checks and timestamps may be wrong until it is`);
    for (const fn of this.listeners) {
      try {
        fn(s);
      } catch (err) {
        this.o.logger.warn({ err: errorMessage(err) }, 'clock sync: a listener failed');
      }
    }
  }
}

/**
 * Once the clock is synced, the loops sleeping on these wakeups try again (each after its own
 * stagger): a request refused for a certificate "not yet valid" by the unsynced clock need not wait out its backoff.
 */
export function wakeOnClockSync(sync: Pick<ClockSync, 'onChange'>, wakeups: readonly Pick<Wakeup, 'wake'>[]): () => void {
  return sync.onChange((s) => {
    if (s.synced) for (const w of wakeups) w.wake('the clock got synced');
  });
}

function iso(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString() : String(ms);
}
