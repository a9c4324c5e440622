import type { Trial } from './release-store.js';

export type TrialVerdict = { action: 'wait' } | { action: 'restart' } | { action: 'confirm' } | { action: 'rollback'; reason: string };

export interface TrialRules {
  /** After reporting healthy, it must keep running this long (ms). */
  probationMs: number;
  /** Exits during the trial before it is rolled back. */
  attempts: number;
}

const WORDS = ['no', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten'];
const times = (n: number): string => (n === 1 ? 'once' : `${WORDS[n] ?? n} times`);

/**
 * Judges a version or config on trial from what its process does, on the wall clock the launcher
 * gives it: healthy by the deadline and still up after the probation confirms it; missing the
 * deadline, or exiting `attempts` times, rolls it back. Pure: tested on a fake clock.
 */
export class TrialWatch {
  private healthyAt: number | undefined;
  private lastExit = '';

  constructor(
    private readonly trial: Trial,
    private readonly rules: TrialRules,
  ) {}

  /** What is on trial, in words for the reasons: "version 0.2.0", "the config of job j1". */
  get subject(): string {
    return this.trial.kind === 'agent' ? `version ${this.trial.to.version}` : `the config of job ${this.trial.jobId}`;
  }

  /** Before a start: the attempts already made (counted in state.json) may have used it up. */
  beforeStart(now: number): TrialVerdict {
    if (this.trial.attempts > this.rules.attempts) return { action: 'rollback', reason: `${this.subject} was started ${times(this.rules.attempts)} during its trial without being confirmed` };
    return this.tick(now);
  }

  healthy(now: number): void {
    this.healthyAt ??= now;
  }

  get isHealthy(): boolean {
    return this.healthyAt !== undefined;
  }

  exited(code: number | null, signal: string | null): TrialVerdict {
    this.healthyAt = undefined;
    this.lastExit = code !== null ? `exited with code ${code}` : `was killed by ${String(signal)}`;
    if (this.trial.attempts >= this.rules.attempts) return { action: 'rollback', reason: `${this.subject} ${this.lastExit} ${times(this.trial.attempts)} during its trial` };
    return { action: 'restart' };
  }

  tick(now: number): TrialVerdict {
    if (this.healthyAt !== undefined) return now >= this.healthyAt + this.rules.probationMs ? { action: 'confirm' } : { action: 'wait' };
    if (now >= this.trial.deadline) {
      const secs = Math.round((this.trial.deadline - this.trial.startedAt) / 1000);
      return { action: 'rollback', reason: `${this.subject} did not become healthy within ${secs} s` };
    }
    return { action: 'wait' };
  }

  /** When `tick` may next change its answer (wall-clock ms). */
  wakeAt(): number {
    return this.healthyAt !== undefined ? this.healthyAt + this.rules.probationMs : this.trial.deadline;
  }
}
