import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runCommandHandler } from '../../src/jobs/handlers.js';
import { JobPoller, parseJob } from '../../src/jobs/poller.js';
import type { CloudRequest, CloudResponse } from '../../src/cloud/http-client.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { seededRandom } from '../../src/util/random.js';
import { JobRunner } from '../../src/jobs/runner.js';
import { JobFailed, JobRejected, type JobHandler, type JobUpdatePayload } from '../../src/jobs/types.js';
import { Outbox } from '../../src/outbox/outbox.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

// A real database and a real outbox; the clock is fake so timeouts run at once.
const dirs = tempDirs();
const open: { store: Store; outbox: Outbox }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) {
    await o.outbox.close();
    o.store.close();
  }
  dirs.cleanup();
});

function setup(handlers: Record<string, JobHandler>, opts: { path?: string; clock?: FakeClock; history?: number } = {}) {
  const clock = opts.clock ?? new FakeClock();
  const path = opts.path ?? join(dirs.make(), 'agent.db');
  // `normal`: an enqueue resolves at its commit. With `full` it waits for a real fdatasync on the
  // thread pool, which hand-driven time (clock.advance) does not wait for.
  const store = Store.open({ path, logger: silentLogger(), clock, synchronous: 'normal' });
  const outbox = new Outbox({
    store,
    clock,
    ids: new IdGenerator(() => clock.now()),
    logger: silentLogger(),
    limits: { maxCount: 10_000, maxBytes: 64 * 1_048_576 },
    groupCommit: { windowMs: 0 },
    disk: { minFreeBytes: 0 },
  });
  open.push({ store, outbox });
  const runner = new JobRunner({ db: store.db, outbox, handlers, clock, logger: silentLogger(), ...(opts.history ? { history: opts.history } : {}) });
  /** The job updates queued for the cloud, in order. */
  const updates = (): JobUpdatePayload[] => outbox.peekBatch({ channels: ['jobs'], maxCount: 1000, lease: false }).map((m) => m.payload as unknown as JobUpdatePayload);
  return { clock, path, store, outbox, runner, updates };
}

const job = (id: string, type: string, params: Record<string, unknown> = {}, timeoutSeconds = 60) => ({ id, type, params: params as never, timeoutSeconds });

describe('JobRunner', () => {
  it('runs a job, keeps it, and queues IN_PROGRESS then SUCCEEDED with the details', async () => {
    const { runner, updates } = setup({ echo: async (params) => ({ got: params.text ?? null }) });
    const finished: string[] = [];
    runner.on('finished', (j) => finished.push(`${j.id}:${j.status}`));
    const done = await runner.run(job('j1', 'echo', { text: 'hi' }), new AbortController().signal);
    expect(done).toMatchObject({ id: 'j1', status: 'SUCCEEDED', details: { got: 'hi' } });
    expect(updates()).toEqual([
      { jobId: 'j1', status: 'IN_PROGRESS', details: null },
      { jobId: 'j1', status: 'SUCCEEDED', details: { got: 'hi' } },
    ]);
    expect(finished).toEqual(['j1:SUCCEEDED']);
    expect(runner.list()[0]).toMatchObject({ id: 'j1', type: 'echo', params: { text: 'hi' }, status: 'SUCCEEDED' });
    expect(runner.counts()).toMatchObject({ SUCCEEDED: 1, RUNNING: 0 });
  });

  it('rejects an unknown type (naming the types it runs), a refused job, and fails a job that throws', async () => {
    const { runner, updates } = setup({
      refuse: async () => {
        throw new JobRejected('params.x: expected a number, got "a" (a string)');
      },
      broken: async () => {
        throw new JobFailed('it broke', { exitCode: 3 });
      },
      crash: async () => {
        throw new TypeError('boom');
      },
    });
    const signal = new AbortController().signal;
    expect((await runner.run(job('a', 'reboot-the-moon'), signal)).details).toEqual({ error: 'unknown job type "reboot-the-moon"; this agent runs: broken, crash, refuse' });
    expect((await runner.run(job('b', 'refuse'), signal)).status).toBe('REJECTED');
    expect(await runner.run(job('c', 'broken'), signal)).toMatchObject({ status: 'FAILED', details: { error: 'it broke', exitCode: 3 } });
    expect(await runner.run(job('d', 'crash'), signal)).toMatchObject({ status: 'FAILED', details: { error: 'boom' } });
    // The unknown type gets no IN_PROGRESS: it never started.
    expect(updates().map((u) => `${u.jobId}:${u.status}`)).toEqual(['a:REJECTED', 'b:IN_PROGRESS', 'b:REJECTED', 'c:IN_PROGRESS', 'c:FAILED', 'd:IN_PROGRESS', 'd:FAILED']);
  });

  it('times a job out: its signal aborts and it is reported TIMED_OUT', async () => {
    let aborted = false;
    const { runner, clock, updates } = setup({
      wait: (_p, ctx) =>
        new Promise((_resolve, reject) => {
          ctx.signal.addEventListener('abort', () => {
            aborted = true;
            reject(new Error('stopped'));
          });
        }),
    });
    const result = runner.run(job('t', 'wait', {}, 5), new AbortController().signal);
    await clock.advance(4_999);
    expect(runner.running?.id).toBe('t');
    await clock.advance(1);
    expect(await result).toMatchObject({ status: 'TIMED_OUT', details: { error: 'the job ran longer than its timeout of 5 s' } });
    expect(aborted).toBe(true);
    expect(updates().at(-1)).toMatchObject({ status: 'TIMED_OUT' });
  });

  it('does not run a job id twice', async () => {
    let runs = 0;
    const { runner } = setup({ count: async () => ++runs });
    await runner.run(job('x', 'count'), new AbortController().signal);
    expect((await runner.run(job('x', 'count'), new AbortController().signal)).status).toBe('SUCCEEDED');
    expect(runs).toBe(1);
  });

  it('reports a job cut off by a restart as FAILED at the next start, without running it again', async () => {
    const first = setup({ hang: (_p, ctx) => new Promise((_r, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('stopped')))) });
    const agentStop = new AbortController();
    const running = first.runner.run(job('r', 'hang', {}, 600), agentStop.signal);
    await first.clock.advance(10);
    agentStop.abort(); // the agent stops mid-job: the row stays RUNNING
    expect((await running).status).toBe('RUNNING');
    await first.outbox.close();
    first.store.close();
    open.splice(0);

    let ran = false;
    const second = setup({ hang: async () => (ran = true) }, { path: first.path });
    await second.runner.recover();
    expect(ran).toBe(false);
    expect(second.runner.list()[0]).toMatchObject({ id: 'r', status: 'FAILED', details: { error: 'the agent restarted while the job ran; it was not run again' } });
    expect(second.updates().map((u) => u.status)).toEqual(['IN_PROGRESS', 'FAILED']);
  });

  it('keeps the latest `history` finished jobs', async () => {
    const { runner } = setup({ ok: async () => null }, { history: 3 });
    for (let i = 0; i < 6; i++) await runner.run(job(`h${i}`, 'ok'), new AbortController().signal);
    expect(runner.list().map((j) => j.id)).toEqual(['h5', 'h4', 'h3']);
  });
});

describe('JobPoller', () => {
  it('asks again at once after a job, waits the interval when there is none, and never spins on a job handed out twice', async () => {
    const env = setup({ ok: async () => 'done' });
    const random = seededRandom(1);
    // Stands in for the device API (named fake: the loop's timing is what is tested, on fake time;
    // test/integration/agent-jobs.test.ts runs it against the devcloud): j1, j1 again, then nothing.
    const answers: Array<CloudResponse<unknown>> = [
      { status: 200, headers: {}, body: { id: 'j1', type: 'ok', params: {}, timeoutSeconds: 10 } },
      { status: 200, headers: {}, body: { id: 'j1', type: 'ok', params: {}, timeoutSeconds: 10 } },
    ];
    const polls: number[] = [];
    const http = {
      request: async <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
        expect(req.path).toBe('/device/v1/dev-1/jobs/next');
        polls.push(env.clock.monotonic());
        return (answers.shift() ?? { status: 204, headers: {}, body: undefined }) as CloudResponse<T>;
      },
    };
    const poller = new JobPoller({
      http,
      uuid: 'dev-1',
      monitor: { markSuccess: () => undefined, markFailure: () => undefined },
      retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock: env.clock, random }), sleeper: new Wakeup({ clock: env.clock, random }), clock: env.clock }),
      clock: env.clock,
      random: () => 0,
      logger: silentLogger(),
      runner: env.runner,
      pollIntervalMs: () => 60_000,
    });
    const ctl = new AbortController();
    const done = poller.run(ctl.signal);
    await env.clock.advance(0);
    await env.clock.advance(0);
    // j1 ran, then the next poll came at once and got j1 again: not run, and no third poll yet.
    expect(polls).toEqual([0, 0]);
    expect(env.runner.list().map((j) => `${j.id}:${j.status}`)).toEqual(['j1:SUCCEEDED']);
    await env.clock.advance(59_999);
    expect(polls).toHaveLength(2);
    await env.clock.advance(1);
    expect(polls).toEqual([0, 0, 60_000]);
    // Nothing to do (204): the next poll a poll interval later, or at once when notified.
    poller.pollNow();
    await env.clock.advance(0);
    expect(polls).toEqual([0, 0, 60_000, 60_000]);
    ctl.abort();
    await done;
  });
});

describe('parseJob', () => {
  it('takes a job as PROTOCOL.md gives it, with defaults for params and timeout', () => {
    expect(parseJob({ id: 'j', type: 'run-command', params: { command: ['/bin/true'] }, timeoutSeconds: 30 })).toEqual({
      ok: true,
      job: { id: 'j', type: 'run-command', params: { command: ['/bin/true'] }, timeoutSeconds: 30 },
    });
    expect(parseJob({ id: 'j', type: 't' })).toMatchObject({ ok: true, job: { params: {}, timeoutSeconds: 300 } });
  });

  it('names the field, the value and what was expected; keeps the id when it can', () => {
    expect(parseJob([1])).toEqual({ ok: false, problem: 'job: expected an object, got an array ([1])' });
    expect(parseJob({ type: 't' })).toEqual({ ok: false, problem: 'id: expected a string of 1 to 200 characters, got nothing' });
    expect(parseJob({ id: 'j', type: 7 })).toEqual({ ok: false, id: 'j', problem: 'type: expected a non-empty string, got 7 (a number)' });
    expect(parseJob({ id: 'j', type: 't', params: 'x' })).toEqual({ ok: false, id: 'j', problem: 'params: expected an object, got "x" (a string)' });
    expect(parseJob({ id: 'j', type: 't', timeoutSeconds: 0 })).toEqual({ ok: false, id: 'j', problem: 'timeoutSeconds: expected an integer from 1 to 86400, got 0 (a number)' });
  });
});

describe('run-command (real programs)', () => {
  const ctx = (signal = new AbortController().signal) => ({ jobId: 'j1', signal, logger: silentLogger() });
  const run = runCommandHandler({ allowed: ['/bin/echo', '/bin/false', '/usr/bin/seq', '/bin/sleep'], maxOutputBytes: 1024 });

  it('runs an allowed program with its arguments as given, no shell', async () => {
    expect(await run({ command: ['/bin/echo', 'hello', '$HOME; rm -rf /'] }, ctx())).toEqual({
      exitCode: 0,
      signal: null,
      stdout: 'hello $HOME; rm -rf /\n',
      stderr: '',
      truncated: false,
    });
  });

  it('refuses a program not in jobs.allowedCommands, and malformed commands, naming the field', () => {
    expect(() => run({ command: ['/bin/sh', '-c', 'id'] }, ctx())).toThrow(
      'params.command[0]: "/bin/sh" is not in jobs.allowedCommands (allowed: /bin/echo, /bin/false, /usr/bin/seq, /bin/sleep)',
    );
    expect(() => runCommandHandler({ allowed: [], maxOutputBytes: 1024 })({ command: ['/bin/echo'] }, ctx())).toThrow(/allowed: none; set jobs.allowedCommands/);
  });

  it('matches a program by its exact absolute path: same file name elsewhere, a bare name or a path with .. is refused', () => {
    // An allow-list that looked at file names would let a planted /tmp/x/echo, or any echo on PATH, run.
    for (const program of ['/tmp/evil/echo', 'echo', 'bin/echo', '/bin/../tmp/echo', '/bin/echo/', '/usr/local/bin/echo', '/bin/echo ']) {
      expect(() => run({ command: [program, 'hi'] }, ctx()), program).toThrow(`params.command[0]: ${JSON.stringify(program)} is not in jobs.allowedCommands`);
    }
    expect(() => run({ command: '/bin/echo hi' }, ctx())).toThrow('params.command: expected an array of 1 to 101 strings (the program and its arguments), got "/bin/echo hi"');
    expect(() => run({ command: ['/bin/echo', 3] }, ctx())).toThrow('params.command[1]: expected a string of at most 4096 characters without NUL, got 3');
  });

  it('fails on a non-zero exit with the exit code, and keeps only the last maxOutputBytes of output', async () => {
    await expect(run({ command: ['/bin/false'] }, ctx())).rejects.toMatchObject({ message: '/bin/false exited with code 1', details: { exitCode: 1 } });
    const out = (await run({ command: ['/usr/bin/seq', '1', '100000'] }, ctx())) as { stdout: string; truncated: boolean };
    expect(out.truncated).toBe(true);
    expect(Buffer.byteLength(out.stdout)).toBe(1024);
    expect(out.stdout.endsWith('99999\n100000\n')).toBe(true);
  });

  it('stops the program when the job is aborted', async () => {
    const ctl = new AbortController();
    const started = Date.now();
    const p = run({ command: ['/bin/sleep', '30'] }, ctx(ctl.signal));
    setTimeout(() => ctl.abort(), 50);
    await expect(p).rejects.toMatchObject({ message: '/bin/sleep was killed by SIGTERM' });
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});
