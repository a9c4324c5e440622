import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../util/clock.js';
import { AgentError, errorMessage } from '../../util/errors.js';
import type { Logger } from '../../util/logger.js';
import { secretEnv, writeSecretFiles } from './secret-files.js';
import type { Availability, DesiredService, Instance, InstanceState, WorkloadRuntime } from '../types.js';
import { TypedEmitter } from '../../util/typed-emitter.js';
import { RuntimeEventEmitter } from './events.js';
import { ProcessFiles, type PidRecord } from './process-files.js';
import { RotatingLog } from './rotating-log.js';
import { HealthProbes } from '../health-probes.js';
import { dependencies } from '../app-graph.js';
import { groupMembers, processStartTicks, signalGroup } from '../../util/process-group.js';

export { groupMembers, processStartTicks };

/**
 * Native commands (`runtime: "process"`): spawned without a shell from an argv array, each in its
 * own process group (so a stop reaches whatever it forked), with the target's environment on a
 * minimal base (the agent's own environment, which may hold its keys, is never passed on), and
 * stdout and stderr appended to a size-capped rotating log under the data dir.
 *
 * Across agent restarts, processes do NOT survive: they are the agent's children. A graceful stop
 * of the agent (`close()`) stops them (SIGTERM to the group, SIGKILL after `stopTimeoutMs`). If the
 * agent dies without stopping them (kill -9, a crash), the next agent finds them through the pid
 * files it keeps in `<dataDir>/run/` (only files it owns and only it can write: see ProcessFiles),
 * checks each is still the process it started (the start time in /proc, so a reused pid is never
 * killed), and stops their groups before starting fresh copies.
 * So a native service never runs twice, and its output always goes to the agent that runs it
 * (re-adopting would leave it writing into a pipe nobody reads).
 */

export interface ProcessRuntimeOptions {
  /** Where logs (`apps/<app>/<service>/output.log`), working dirs and pid files (`run/`) live: see ProcessFiles. */
  dataDir: string;
  clock: Clock;
  logger: Logger;
  /** Size cap of one log file; 1 MiB unless told. */
  logMaxBytes?: number;
  /** Rotated log files kept besides the current one; 2 unless told. */
  logFiles?: number;
  /** Grace between SIGTERM and SIGKILL when stopping; 10 s unless told. */
  stopTimeoutMs?: number;
  /** The environment every process starts from (the target's `environment` is laid over it). */
  baseEnv?: Record<string, string>;
  /**
   * Who the processes run as (see `resolveProcessUser`). Undefined: as the agent. A string is a
   * reason no process may start (the configured user does not exist): they fail with it.
   */
  user?: { uid: number; gid: number; name: string } | string;
  /** Where file secrets are written (`<dir>/<app>/<service>/<name>`, 0400, owned by the process's user); `<dataDir>/run-secrets` of this runtime unless told. */
  secretsDir?: string;
}

/**
 * Resolves `workloads.processUser` ("name" or "uid:gid") against /etc/passwd. When the agent does
 * not run as root it cannot switch users, and processes run as the agent: undefined is returned.
 * A user that does not exist gives an explanation string, which makes every process service fail
 * with it rather than silently run as root.
 */
export function resolveProcessUser(spec: string, passwd = '/etc/passwd'): ProcessRuntimeOptions['user'] {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined;
  const numeric = /^(\d+):(\d+)$/.exec(spec);
  if (numeric) return { uid: Number(numeric[1]), gid: Number(numeric[2]), name: spec };
  let text = '';
  try {
    text = readFileSync(passwd, 'utf8');
  } catch {
    return `workloads.processUser "${spec}": cannot read ${passwd} to look it up`;
  }
  for (const line of text.split('\n')) {
    const [name, , uid, gid] = line.split(':');
    if (name === spec && uid !== undefined && gid !== undefined) return { uid: Number(uid), gid: Number(gid), name };
  }
  return `workloads.processUser "${spec}" is not a user of this device (not in ${passwd})`;
}

const LOG_NAME = 'output.log';

export interface ProcessOutputEvents {
  output: { app: string; service: string; stream: 'stdout' | 'stderr'; chunk: Buffer };
  /** Its pipes are closed: a last line without a newline is complete. */
  ended: { app: string; service: string };
}

/** The processes' output channel: the runtime reports, the log collector listens. */
export class ProcessOutput extends TypedEmitter<ProcessOutputEvents> {
  printed(e: ProcessOutputEvents['output']): void {
    this.emit('output', e);
  }

  ended(e: ProcessOutputEvents['ended']): void {
    this.emit('ended', e);
  }
}

export const DEFAULT_PROCESS_ENV: Readonly<Record<string, string>> = Object.freeze({ PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' });

interface Proc {
  id: string;
  desired: DesiredService;
  child: ChildProcess | undefined;
  pid: number | undefined;
  state: InstanceState;
  exitCode: number | null;
  error: string | null;
  startedAt: number | null;
  finishedAt: number | null;
  exits: number;
  exited: Promise<void>;
}


export class ProcessRuntime implements WorkloadRuntime {
  readonly kind = 'process' as const;
  readonly events = new RuntimeEventEmitter();
  /** What the processes print, as they print it (the log collector follows it; the rotating file gets the same). */
  readonly output = new ProcessOutput();
  private readonly procs = new Map<string, Proc>();
  private readonly logs = new Map<string, RotatingLog>();
  private readonly files: ProcessFiles;
  private readonly init: Promise<void>;
  private seq = 0;
  private closed = false;
  private readonly probes: HealthProbes;

  constructor(private readonly o: ProcessRuntimeOptions) {
    this.files = new ProcessFiles({ root: o.dataDir, clock: o.clock, logger: o.logger });
    this.probes = new HealthProbes({ clock: o.clock, logger: o.logger, changed: (id) => this.events.notify({ id, action: 'health_status' }) });
    this.init = this.reapLeftovers().catch((err: unknown) => {
      // A start never fails on what the last run left: whatever was not understood was moved aside.
      this.o.logger.error({ err: errorMessage(err) }, 'could not stop what a previous agent left running; going on');
    });
  }

  private get stopTimeoutMs(): number {
    return this.o.stopTimeoutMs ?? 10_000;
  }

  availability(): Promise<Availability> {
    return Promise.resolve({ ok: true });
  }

  async list(): Promise<Instance[]> {
    await this.init;
    return [...this.procs.values()].map((p) => ({
      id: p.id,
      runtime: 'process',
      app: p.desired.app,
      service: p.desired.service,
      configHash: p.desired.configHash,
      image: null,
      state: p.state,
      exitCode: p.exitCode,
      error: p.error,
      startedAt: p.startedAt,
      finishedAt: p.finishedAt,
      exitKey: p.exits > 0 ? `${p.id}:${p.exits}` : null,
      ...(p.state === 'running' ? this.probes.verdict(p.id) : {}),
      dependsOn: dependencies(p.desired.spec.dependsOn).map((d) => d.service),
    }));
  }

  hasImage(): Promise<boolean> {
    return Promise.resolve(true);
  }

  pull(): Promise<void> {
    return Promise.resolve();
  }

  /** The log file a service's output goes to. */
  logPath(app: string, service: string): string {
    return join(this.files.serviceDir(app, service), LOG_NAME);
  }

  async create(desired: DesiredService): Promise<string> {
    await this.init;
    if (this.closed) throw new AgentError('RUNTIME_CLOSED', 'the process runtime is shut down');
    if (!desired.spec.command?.[0]) throw new AgentError('PROCESS_NO_COMMAND', `${desired.app}/${desired.service}: no command to run`);
    const id = `${desired.app}.${desired.service}.${desired.configHash.slice(0, 8)}.${++this.seq}`;
    this.procs.set(id, {
      id,
      desired,
      child: undefined,
      pid: undefined,
      state: 'created',
      exitCode: null,
      error: null,
      startedAt: null,
      finishedAt: null,
      exits: 0,
      exited: Promise.resolve(),
    });
    return id;
  }

  /** Spawns the process; resolves once it runs, rejects if it cannot be started (no such file, not executable). */
  async start(id: string): Promise<void> {
    await this.init;
    const p = this.need(id);
    if (p.state === 'running') return;
    if (this.closed) throw new AgentError('RUNTIME_CLOSED', 'the process runtime is shut down');
    const { spec, app, service } = p.desired;
    const [file, ...args] = spec.command ?? [];
    const { cwd, user } = this.launchPlace(p);
    const secrets = this.secretEnv(p, user);
    const log = this.log(app, service);
    const child = spawn(file as string, args, {
      cwd,
      // The env is never logged: it may hold secrets.
      env: { ...(this.o.baseEnv ?? DEFAULT_PROCESS_ENV), ...spec.environment, ...secrets },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: a stop signals everything it forked, and a Ctrl-C meant for the agent does not reach it.
      detached: true,
      shell: false,
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    const write = (chunk: Buffer): void => {
      try {
        log.write(chunk);
      } catch (err) {
        this.o.logger.warn({ app, service, err: errorMessage(err) }, 'could not write the service log');
      }
    };
    child.stdout?.on('data', (chunk: Buffer) => {
      write(chunk);
      this.output.printed({ app, service, stream: 'stdout', chunk });
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      write(chunk);
      this.output.printed({ app, service, stream: 'stderr', chunk });
    });
    child.once('close', () => this.output.ended({ app, service }));
    p.child = child;
    p.error = null;
    p.exitCode = null;
    await this.follow(p, child, write);
  }

  /** Where and as whom a process starts; what stops it from starting is recorded as a failed start. */
  private launchPlace(p: Proc): { cwd: string; user: { uid: number; gid: number } | undefined } {
    const { spec, app, service } = p.desired;
    const user = this.o.user;
    if (typeof user === 'string') throw this.failedStart(p, user);
    let serviceDir: string;
    try {
      serviceDir = this.files.ensureServiceDir(app, service, this.logNames());
    } catch (err) {
      throw this.failedStart(p, `cannot make its directory: ${errorMessage(err)}`, err);
    }
    // Run as another user, a process cannot enter the agent's private data dir: it starts in "/"
    // unless the target names a working dir.
    const cwd = spec.workingDir ?? (user ? '/' : serviceDir);
    // Node reports a missing cwd as "spawn <program> ENOENT", blaming the program: say which it is.
    if (!existsSync(cwd)) throw this.failedStart(p, `working dir ${cwd} does not exist`);
    return { cwd, user };
  }

  /** Where this runtime writes file secrets (pruned by the assembly when services go). */
  get secretsDir(): string {
    return this.o.secretsDir ?? join(this.o.dataDir, 'run-secrets');
  }

  /** The service's secrets as environment (file secrets written first, their paths in the variables `file` names). */
  private secretEnv(p: Proc, user: { uid: number; gid: number } | undefined): Record<string, string> {
    if (p.desired.spec.secrets.length === 0) return {};
    let files: Map<string, string>;
    try {
      const root = this.secretsDir;
      files = writeSecretFiles(root, p.desired, { mode: 0o400, ...(user ? { owner: user } : {}) });
    } catch (err) {
      throw this.failedStart(p, `cannot write its secret files: ${errorMessage(err)}`, err);
    }
    return secretEnv(p.desired, files);
  }

  /** Records a start that did not happen (it counts as an exit, for the crash loop) and says why. */
  private failedStart(p: Proc, error: string, cause?: unknown): AgentError {
    p.error = error;
    p.finishedAt = this.o.clock.now();
    p.exits++;
    return new AgentError('PROCESS_START_FAILED', error, cause === undefined ? undefined : { cause });
  }

  /** Follows a spawned child: resolves once it runs, rejects if it never does; records its exit. */
  private follow(p: Proc, child: ChildProcess, write: (chunk: Buffer) => void): Promise<void> {
    const { id, desired } = p;
    const { app, service } = desired;
    let resolveExited: () => void = () => undefined;
    p.exited = new Promise<void>((r) => (resolveExited = r));
    return new Promise<void>((resolve, reject) => {
      child.once('spawn', () => {
        p.pid = child.pid;
        p.state = 'running';
        p.startedAt = this.o.clock.now();
        p.finishedAt = null;
        this.writePidFile(p);
        write(Buffer.from(`--- ${new Date(p.startedAt).toISOString()} started ${JSON.stringify(desired.spec.command)} as pid ${child.pid}\n`));
        this.probes.track(id, desired.spec.healthcheck);
        this.events.notify({ id, action: 'start' });
        resolve();
      });
      child.once('error', (err) => {
        if (p.state === 'running') {
          this.o.logger.warn({ app, service, err: errorMessage(err) }, 'process error');
          return;
        }
        // Never started: a missing or non-executable program.
        p.state = 'created';
        p.child = undefined;
        const failure = this.failedStart(p, errorMessage(err), err);
        write(Buffer.from(`--- ${new Date(p.finishedAt ?? 0).toISOString()} could not start: ${p.error}\n`));
        resolveExited();
        reject(failure);
      });
      child.once('exit', (code, signal) => {
        const pid = p.pid;
        p.state = 'exited';
        p.exitCode = code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0);
        p.error = signal ? `killed by ${signal}` : null;
        p.finishedAt = this.o.clock.now();
        p.exits++;
        p.child = undefined;
        this.probes.untrack(id);
        // What the service forked goes with it: a service is its process group.
        if (pid !== undefined) signalGroup(pid, 'SIGKILL');
        this.removePidFile(id);
        write(Buffer.from(`--- ${new Date(p.finishedAt).toISOString()} exited ${signal ? `on ${signal}` : `with code ${code}`}\n`));
        resolveExited();
        this.events.notify({ id, action: 'die' });
      });
    });
  }

  async stop(id: string): Promise<void> {
    await this.init;
    const p = this.procs.get(id);
    if (!p || p.state !== 'running' || p.pid === undefined) return;
    const pid = p.pid;
    signalGroup(pid, 'SIGTERM');
    const ctl = new AbortController();
    const timedOut = await Promise.race([
      p.exited.then(() => false),
      this.o.clock.sleep(this.stopTimeoutMs, ctl.signal).then(
        () => true,
        () => false,
      ),
    ]);
    ctl.abort();
    if (timedOut) {
      this.o.logger.warn({ app: p.desired.app, service: p.desired.service, pid }, `did not stop within ${this.stopTimeoutMs} ms of SIGTERM: killing it`);
      signalGroup(pid, 'SIGKILL');
      await p.exited;
    }
  }

  async remove(id: string): Promise<void> {
    await this.stop(id);
    if (this.procs.delete(id)) this.events.notify({ id, action: 'destroy' });
  }

  /** Stops every process (agent shutdown). Logs are closed; pid files go with the processes. */
  async close(): Promise<void> {
    await this.init;
    this.closed = true;
    this.probes.close();
    await Promise.allSettled([...this.procs.keys()].map((id) => this.stop(id)));
    for (const log of this.logs.values()) log.close();
    this.logs.clear();
  }

  private need(id: string): Proc {
    const p = this.procs.get(id);
    if (!p) throw new AgentError('PROCESS_NOT_FOUND', `no process instance ${id}`);
    return p;
  }

  private log(app: string, service: string): RotatingLog {
    const key = `${app}/${service}`;
    let log = this.logs.get(key);
    if (!log) {
      log = new RotatingLog(this.logPath(app, service), this.o.logMaxBytes ?? 1_048_576, this.o.logFiles ?? 2);
      this.logs.set(key, log);
    }
    return log;
  }

  /** The log and its rotations: plain files, or moved aside. */
  async purgeAppData(app: string): Promise<string[]> {
    await this.init;
    return this.files.purgeApp(app, this.logNames());
  }

  private logNames(): string[] {
    return [LOG_NAME, ...Array.from({ length: this.o.logFiles ?? 2 }, (_, i) => `${LOG_NAME}.${i + 1}`)];
  }

  private writePidFile(p: Proc): void {
    if (p.pid === undefined) return;
    const rec: PidRecord = {
      id: p.id,
      pid: p.pid,
      startTicks: processStartTicks(p.pid),
      app: p.desired.app,
      service: p.desired.service,
      configHash: p.desired.configHash,
      agentPid: process.pid,
    };
    try {
      this.files.writePidFile(rec);
    } catch (err) {
      this.o.logger.warn({ id: p.id, err: errorMessage(err) }, 'could not write the pid file');
    }
  }

  private removePidFile(id: string): void {
    try {
      this.files.removePidFile(id);
    } catch (err) {
      this.o.logger.warn({ id, err: errorMessage(err) }, 'could not remove the pid file');
    }
  }

  /**
   * Stops what a previous agent left running (it died without stopping its children). Only pid files
   * the agent can trust are read (ProcessFiles moves the others aside); one whose pid now belongs to
   * another process (different start time) is only deleted.
   */
  private async reapLeftovers(): Promise<void> {
    this.files.prepare();
    await Promise.all(
      this.files.readPidFiles().map(async ({ path, rec }) => {
        try {
          const ticks = processStartTicks(rec.pid);
          // Leader alive with another start time: the pid was reused, so its old group is gone.
          // Leader gone: its pid cannot be reused while members of its group live, so -pid is still ours.
          const members = ticks === null ? groupMembers(rec.pid) : [];
          const ours = ticks === null ? members.length > 0 && !members.includes(process.pid) : ticks === rec.startTicks;
          if (!ours) return;
          this.o.logger.warn(
            { app: rec.app, service: rec.service, pid: rec.pid },
            `stopping ${rec.app}/${rec.service} (pid ${rec.pid}), left running by an agent that did not shut down; it starts afresh`,
          );
          signalGroup(rec.pid, 'SIGTERM');
          const deadline = this.o.clock.monotonic() + this.stopTimeoutMs;
          while (groupMembers(rec.pid).length > 0 && this.o.clock.monotonic() < deadline) await this.o.clock.sleep(50);
          signalGroup(rec.pid, 'SIGKILL');
          // Not our children: whoever reaps them does; wait until none is left alive.
          const killDeadline = this.o.clock.monotonic() + 5_000;
          while (groupMembers(rec.pid).length > 0 && this.o.clock.monotonic() < killDeadline) await this.o.clock.sleep(20);
        } catch (err) {
          this.o.logger.warn({ file: path, err: errorMessage(err) }, 'could not stop what a pid file names; ignoring it');
        } finally {
          try {
            rmSync(path, { force: true });
          } catch (err) {
            this.files.moveAside(path, `cannot be deleted (${errorMessage(err)})`);
          }
        }
      }),
    );
  }
}
