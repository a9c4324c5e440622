import { spawn } from 'node:child_process';
import type { Json } from '../util/json-diff.js';
import { signalGroup } from '../util/process-group.js';
import { DEFAULT_PROCESS_ENV } from '../workloads/runtimes/process.js';
import { JobFailed, JobRejected, type JobContext, type JobHandler } from './types.js';
import { describeValue } from '../config/issues.js';

/** Longest argument list and argument a run-command job may pass. */
const MAX_ARGS = 100;
const MAX_ARG_LENGTH = 4096;
/** After the job's signal aborts, SIGTERM, then SIGKILL this much later. */
const KILL_AFTER_MS = 2_000;

export interface RunCommandOptions {
  /** Absolute paths of the programs jobs may run (`jobs.allowedCommands`); empty: none. */
  allowed: readonly string[];
  /** Bytes kept of stdout and of stderr each (the last ones). */
  maxOutputBytes: number;
  /**
   * Run as this user when the agent is root (`resolveProcessUser(workloads.processUser)`): a string
   * says why the user cannot be used, and the job fails with it rather than run as root.
   */
  user?: { uid: number; gid: number; name: string } | string | undefined;
}


/** Keeps the last `max` bytes written to it. */
class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  truncated = false;
  constructor(private readonly max: number) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.max && this.chunks.length > 0) {
      const first = this.chunks[0] as Buffer;
      const over = this.size - this.max;
      this.truncated = true;
      if (first.length <= over) {
        this.chunks.shift();
        this.size -= first.length;
      } else {
        this.chunks[0] = first.subarray(over);
        this.size -= over;
      }
    }
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/**
 * `run-command` `{ "command": ["/usr/bin/systemctl", "restart", "modem"] }`: runs a program the
 * device's own config allows (`jobs.allowedCommands`, exact absolute paths), with its arguments as
 * given: no shell, so nothing in them is interpreted. It runs with a minimal environment, as
 * `workloads.processUser` when the agent is root. Exit 0 is SUCCEEDED with `{ exitCode, stdout,
 * stderr }` (the last `jobs.maxOutputBytes` of each); anything else FAILED with the same details.
 * On timeout the program gets SIGTERM, then SIGKILL.
 */
export function runCommandHandler(o: RunCommandOptions): JobHandler {
  return (params: Record<string, Json>, ctx: JobContext): Promise<Json> => {
    const command = params.command;
    if (!Array.isArray(command) || command.length === 0 || command.length > MAX_ARGS + 1) {
      throw new JobRejected(`params.command: expected an array of 1 to ${MAX_ARGS + 1} strings (the program and its arguments), got ${describeValue(command)}`);
    }
    command.forEach((a, i) => {
      if (typeof a !== 'string' || a.length > MAX_ARG_LENGTH || a.includes('\u0000')) {
        throw new JobRejected(`params.command[${i}]: expected a string of at most ${MAX_ARG_LENGTH} characters without NUL, got ${describeValue(a)}`);
      }
    });
    const [program, ...args] = command as string[];
    if (!o.allowed.includes(program as string)) {
      const allowed = o.allowed.length > 0 ? o.allowed.join(', ') : 'none; set jobs.allowedCommands in the device config';
      throw new JobRejected(`params.command[0]: ${JSON.stringify(program)} is not in jobs.allowedCommands (allowed: ${allowed})`);
    }
    if (typeof o.user === 'string') return Promise.reject(new JobFailed(`cannot run ${String(program)}: ${o.user}`, {}));
    return runProgram(program as string, args, o.user, o.maxOutputBytes, ctx);
  };
}

function runProgram(program: string, args: string[], user: { uid: number; gid: number } | undefined, maxOutputBytes: number, ctx: JobContext): Promise<Json> {
  return new Promise((resolve, reject) => {
    const stdout = new Tail(maxOutputBytes);
    const stderr = new Tail(maxOutputBytes);
    // A group of its own: the program's children are stopped with it, and the agent's next start can
    // find and stop a group it left running.
    const child = spawn(program, args, {
      shell: false,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...DEFAULT_PROCESS_ENV, LANG: 'C.UTF-8' },
      cwd: '/',
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    if (child.pid !== undefined) ctx.started?.(child.pid);
    let killer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      if (child.pid === undefined) return;
      const pid = child.pid;
      signalGroup(pid, 'SIGTERM');
      killer = setTimeout(() => signalGroup(pid, 'SIGKILL'), KILL_AFTER_MS);
    };
    if (ctx.signal.aborted) onAbort();
    else ctx.signal.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    let spawnError: Error | undefined;
    child.once('error', (err) => (spawnError = err));
    child.once('close', (code, signal) => {
      ctx.signal.removeEventListener('abort', onAbort);
      clearTimeout(killer);
      const details: Record<string, Json> = {
        exitCode: code,
        signal: signal ?? null,
        stdout: stdout.text(),
        stderr: stderr.text(),
        truncated: stdout.truncated || stderr.truncated,
      };
      if (spawnError) reject(new JobFailed(`could not run ${program}: ${spawnError.message}`, details));
      else if (code === 0) resolve(details);
      else reject(new JobFailed(`${program} ${code === null ? `was killed by ${String(signal)}` : `exited with code ${code}`}`, details));
    });
  });
}

/** `poll-target`: asks the cloud for the target state now; details say what came of it. */
export function pollTargetHandler(pollOnce: (signal: AbortSignal) => Promise<string>): JobHandler {
  return async (_params, ctx) => ({ outcome: await pollOnce(ctx.signal) });
}

/**
 * `restart-service` `{ "app": "sensors", "service": "collector" }`: stops the service's instances and
 * starts them again (between reconcile passes, see `Reconciler.restartService`). REJECTED for a
 * service that is not in the target in force (the message names the ones that are) or that has no
 * instance yet; SUCCEEDED with `{ "instances" }`.
 */
export function restartServiceHandler(restart: (app: string, service: string, signal: AbortSignal) => Promise<{ instances: number }>): JobHandler {
  return async (params, ctx) => {
    for (const field of ['app', 'service'] as const) {
      const v = params[field];
      if (typeof v !== 'string' || v === '') throw new JobRejected(`params.${field}: expected the name of a${field === 'app' ? 'n app' : ' service'} of the target, got ${describeValue(v)}`);
    }
    try {
      const r = await restart(params.app as string, params.service as string, ctx.signal);
      return { instances: r.instances };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 'UNKNOWN_SERVICE' || code === 'NO_INSTANCE') throw new JobRejected((err as Error).message);
      throw err;
    }
  };
}
