import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Backoff } from '../resilience/backoff.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { CHILD_RECORD_FILE, ChildRecord } from './child-record.js';
import { openableBy, restoreDatabase } from './db-copy.js';
import { isChildMessage, LAUNCHED_ENV, type LauncherMessage, type SwitchRequest } from './ipc.js';
import { ReleaseStore, type Outcome, type ReleaseName, type ReleaseState, type Trial } from './release-store.js';
import { TrialWatch, type TrialVerdict } from './trial.js';

export interface LauncherOptions {
  configFile: string;
  dataDir: string;
  /** --data-dir as given, passed on to the agent. */
  dataDirFlag?: string;
  /** The launcher's own install (the tree /opt/iotistic-agent holds): run when no release is current. */
  ownRoot: string;
  nodePath: string;
  /** Node's own flags for the agent (the launcher's: the bin's small-device settings, docs/performance.md). */
  nodeArgs: readonly string[];
  /**
   * The `update` settings, read again when used (a config update may have changed them); from `file`
   * when given: a config on trial is judged by the settings of the config it replaces, not by its own.
   */
  update: (file?: string) => { healthTimeoutSeconds: number; probationSeconds: number; trialAttempts: number };
  logger: Logger;
  clock: Clock;
  random: Random;
  env: NodeJS.ProcessEnv;
}

/** How one run of the agent ended. */
type End = { kind: 'stopped' } | { kind: 'switch'; request: SwitchRequest } | { kind: 'exited'; code: number | null; signal: string | null; verdict?: TrialVerdict } | { kind: 'rollback'; reason: string };

/** The agent gets this long to stop after SIGTERM (its own deadline is 8 s) before SIGKILL. */
const STOP_GRACE_MS = 15_000;

/**
 * `iotistic-agent launch`: runs the agent (`run`) of the release in force as its child, restarts it
 * after a crash with the one backoff, and switches it to a version or config on trial when the agent
 * asks, confirming it once it stayed healthy through its probation and rolling back when it does
 * not (docs/lifecycle.md). The launcher never updates itself: it is the version install.sh put in place.
 */
export class Launcher {
  private readonly store: ReleaseStore;
  private readonly backoff: Backoff;
  private readonly children: ChildRecord;
  private child: ChildProcess | undefined;

  constructor(private readonly o: LauncherOptions) {
    this.store = new ReleaseStore(o.dataDir);
    this.children = new ChildRecord(join(this.store.dir, CHILD_RECORD_FILE), o.clock, o.logger);
    this.backoff = new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'full', resetAfterMs: 60_000, clock: o.clock, random: o.random });
  }

  async run(signal: AbortSignal): Promise<void> {
    this.store.ensure();
    await this.children.reap(STOP_GRACE_MS);
    while (!signal.aborted) {
      const state = this.store.read();
      let watch: TrialWatch | undefined;
      if (state.trial) {
        const trial = { ...state.trial, attempts: state.trial.attempts + 1 };
        this.store.write({ ...state, trial });
        watch = this.watch(trial);
        const verdict = watch.beforeStart(this.o.clock.now());
        if (verdict.action === 'rollback') {
          this.rollback(trial, verdict.reason);
          continue;
        }
      }
      const release = state.trial?.kind === 'agent' ? state.trial.to.release : state.current;
      const cli = this.cliOf(release, state);
      if (!cli) continue;
      const end = await this.supervise(cli, watch, signal);
      if (end.kind === 'stopped') return;
      if (end.kind === 'switch') {
        this.startTrial(end.request);
        continue;
      }
      if (end.kind === 'rollback') {
        this.rollback(this.store.read().trial, end.reason);
        continue;
      }
      if (end.verdict?.action === 'rollback') {
        this.rollback(this.store.read().trial, end.verdict.reason);
        continue;
      }
      const wait = this.backoff.failure();
      this.o.logger.warn({ code: end.code, signal: end.signal, retryInMs: wait }, `the agent exited (${end.code ?? end.signal}); starting it again in ${Math.round(wait)} ms`);
      await this.o.clock.sleep(wait, signal).catch(() => undefined);
    }
  }

  private watch(trial: Trial): TrialWatch {
    const u = this.o.update(trial.configBackup);
    return new TrialWatch(trial, { probationMs: u.probationSeconds * 1000, attempts: u.trialAttempts });
  }

  /** The agent's entry point in `release`; a current release gone missing falls back to the own install. */
  private cliOf(release: ReleaseName, state: ReleaseState): string | undefined {
    const cli = join(this.store.root(release, this.o.ownRoot), 'dist/bundle/cli.js');
    if (existsSync(cli)) return cli;
    if (state.trial?.kind === 'agent') {
      this.rollback(state.trial, `version ${state.trial.to.version} is missing its dist/bundle/cli.js`);
      return undefined;
    }
    this.o.logger.error({ release }, `release ${String(release)} is missing its dist/bundle/cli.js; running the installed version`);
    this.store.write({ ...state, current: null });
    return join(this.o.ownRoot, 'dist/bundle/cli.js');
  }

  private startTrial(r: SwitchRequest): void {
    const now = this.o.clock.now();
    const trial: Trial = { ...r, startedAt: now, deadline: now + this.o.update(r.configBackup).healthTimeoutSeconds * 1000, attempts: 0 };
    this.store.update((s) => ({ ...s, trial }));
    this.o.logger.info({ jobId: r.jobId, kind: r.kind, from: r.from.version, to: r.to.version }, `switching to ${r.kind === 'agent' ? `version ${r.to.version}` : 'a new config'} on trial`);
    this.backoff.reset();
  }

  /** Runs the agent until it exits, the launcher stops, it asks for a switch, or its trial is decided. */
  private supervise(cli: string, watch: TrialWatch | undefined, signal: AbortSignal): Promise<End> {
    const args = [...this.o.nodeArgs, cli, 'run', '--config', this.o.configFile, ...(this.o.dataDirFlag ? ['--data-dir', this.o.dataDirFlag] : [])];
    const child = spawn(this.o.nodePath, args, { stdio: ['inherit', 'inherit', 'inherit', 'ipc'], env: { ...this.o.env, [LAUNCHED_ENV]: '1' } });
    this.child = child;
    if (child.pid !== undefined) this.children.record(child.pid);
    const timer = new AbortController();
    return new Promise<End>((resolve) => {
      let ending: End | undefined;
      const finish = (end: End): void => {
        if (ending) return;
        ending = end;
        timer.abort();
        this.stopChild(child);
      };
      const judge = (verdict: TrialVerdict): void => {
        if (verdict.action === 'confirm') this.confirm(child);
        else if (verdict.action === 'rollback') finish({ kind: 'rollback', reason: verdict.reason });
        else if (verdict.action === 'wait') arm();
      };
      const arm = (): void => {
        if (!watch || this.store.read().trial === undefined) return;
        const w = watch;
        void this.o.clock.sleep(Math.max(0, w.wakeAt() - this.o.clock.now()) + 1, timer.signal).then(
          () => judge(w.tick(this.o.clock.now())),
          () => undefined,
        );
      };
      child.on('message', (m: unknown) => {
        if (!isChildMessage(m) || ending) return;
        if (m.type === 'switch') finish({ kind: 'switch', request: m.request });
        else if (watch && this.store.read().trial) {
          watch.healthy(this.o.clock.now());
          this.o.logger.info(`${watch.subject} reports healthy; on probation`);
          judge(watch.tick(this.o.clock.now()));
        }
      });
      child.once('exit', (code, sig) => {
        this.child = undefined;
        this.children.clear();
        timer.abort();
        signal.removeEventListener('abort', onStop);
        if (ending) return resolve(ending);
        const onTrial = watch && this.store.read().trial ? watch : undefined;
        resolve({ kind: 'exited', code, signal: sig, ...(onTrial ? { verdict: onTrial.exited(code, sig) } : {}) });
      });
      const onStop = (): void => finish({ kind: 'stopped' });
      signal.addEventListener('abort', onStop, { once: true });
      if (signal.aborted) onStop();
      if (watch) judge(watch.tick(this.o.clock.now()));
    });
  }

  private stopChild(child: ChildProcess): void {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const kill = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    child.once('exit', () => clearTimeout(kill));
  }

  /** The trial passed: it becomes current (agent) or last-known-good (config), and the agent hears so. */
  private confirm(child: ChildProcess): void {
    const state = this.store.read();
    const trial = state.trial;
    if (!trial) return;
    const details: Record<string, Json> =
      trial.kind === 'agent' ? { from: trial.from.version, to: trial.to.version } : { changed: trial.changed ?? null };
    const next: ReleaseState = {
      ...(trial.kind === 'agent' ? { current: trial.to.release, previous: trial.from.release } : { current: state.current, previous: state.previous }),
      outcomes: [...state.outcomes, { jobId: trial.jobId, status: 'SUCCEEDED', details, at: this.o.clock.now() }],
    };
    this.store.write(next);
    for (const f of [trial.dbCopy, trial.configBackup]) if (f) rmSync(f, { force: true });
    const pruned = this.store.prune(next);
    this.o.logger.info({ jobId: trial.jobId, pruned }, `${this.watch(trial).subject} confirmed`);
    const msg: LauncherMessage = { type: 'confirmed', jobId: trial.jobId };
    if (child.connected) child.send(msg);
  }

  /** Back to what ran before the trial: the release (and the database if it cannot open it) or the config file. */
  private rollback(trial: Trial | undefined, reason: string): void {
    if (!trial) return;
    const details: Record<string, Json> = { reason, from: trial.from.version, to: trial.to.version };
    try {
      if (trial.kind === 'config' && trial.configFile && trial.configBackup) {
        writeFileAtomic(trial.configFile, readFileSync(trial.configBackup, 'utf8'));
        details.configRestored = true;
      }
      const db = join(this.o.dataDir, 'agent.db');
      if (trial.kind === 'agent' && trial.dbCopy && existsSync(trial.dbCopy) && !openableBy(db, trial.from.schemaVersion)) {
        restoreDatabase(trial.dbCopy, db);
        details.databaseRestored = true;
        details.lost = `version ${trial.to.version} changed the database beyond what version ${trial.from.version} can read; the copy taken before the switch was put back and what was queued during the trial is lost`;
        this.o.logger.error({ jobId: trial.jobId }, String(details.lost));
      }
    } catch (err) {
      details.restoreError = errorMessage(err);
      this.o.logger.error({ jobId: trial.jobId, err: errorMessage(err) }, `rolling back: ${errorMessage(err)}`);
    }
    const outcome: Outcome = { jobId: trial.jobId, status: 'FAILED', details, at: this.o.clock.now() };
    const next = this.store.update((s) => ({ current: s.current, previous: s.previous, outcomes: [...s.outcomes, outcome] }));
    for (const f of [trial.dbCopy, trial.configBackup]) if (f) rmSync(f, { force: true });
    this.store.prune(next);
    this.o.logger.error({ jobId: trial.jobId, reason }, `rolled back: ${reason}`);
    this.backoff.reset();
  }
}
