import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { systemClock } from '../../src/util/clock.js';
import { Reconciler, type ReconcilerOptions } from '../../src/workloads/reconciler.js';
import { DockerRuntime } from '../../src/workloads/runtimes/docker.js';
import { groupMembers, ProcessRuntime, type ProcessRuntimeOptions } from '../../src/workloads/runtimes/process.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import type { CurrentState, ServiceState } from '../../src/workloads/types.js';
import { ROOT, waitFor } from '../helpers/agent-process.js';
import { silentLogger } from '../helpers/logger.js';
import { PlanApplyCheck } from '../helpers/plan-check.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/**
 * The process runtime on real processes: spawned without a shell, environment, output captured and
 * capped, CrashLoopBackOff, changes, removal, and what happens across an agent restart (the agent's
 * children are stopped by a graceful stop, and stopped by the next agent when it was killed).
 */

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

function target(version: number, apps: Record<string, unknown>): TargetState {
  const r = validateTarget({ version, apps });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

interface Agent {
  rec: Reconciler;
  runtime: ProcessRuntime;
  source: MemoryTargetSource;
  states: { at: number; state: CurrentState }[];
  service(app: string, name: string): ServiceState | undefined;
  /** Sets the next target, its plan taken first; `retries`: "app/service" keys that retry by design. */
  apply(t: TargetState, retries?: string[]): Promise<void>;
  /** Stops the loop; with `graceful` also closes the runtime (stops the processes), as the agent's shutdown does. */
  stop(graceful?: boolean): Promise<void>;
}

/** An agent's reconciler on real processes; every target it applies is checked against its plan preview (PlanApplyCheck). */
function agent(dataDir: string, t: TargetState, opts: Partial<ProcessRuntimeOptions> = {}, rOpts: Partial<ReconcilerOptions> = {}, retries: string[] = []): Agent {
  const logger = silentLogger();
  const runtime = new ProcessRuntime({ dataDir, clock: systemClock, logger, stopTimeoutMs: 1_000, ...opts });
  const source = new MemoryTargetSource(t);
  const check = new PlanApplyCheck({ docker: rOpts.docker, process: runtime });
  const rec = new Reconciler({
    source,
    process: check.process,
    clock: systemClock,
    random: Math.random,
    logger,
    reconciliationIntervalMs: 30_000,
    crashBackoff: { minMs: 300, maxMs: 5_000 },
    ...rOpts,
    docker: check.docker,
  });
  const states: Agent['states'] = [];
  rec.on('changed', (state) => states.push({ at: Date.now(), state }));
  const ctl = new AbortController();
  const done = check.run(rec, source, ctl.signal, retries);
  let stopped = false;
  const stop = async (graceful = true): Promise<void> => {
    if (stopped) return;
    stopped = true;
    ctl.abort();
    await done;
    if (graceful) await rec.close();
    check.verify();
  };
  cleanup(() => stop(true));
  return { rec, runtime, source, states, stop, apply: (next, r) => check.apply(next, r), service: (app, name) => rec.currentState().apps[app]?.services[name] };
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Pids of live processes whose argv is exactly `argv`. */
function pidsOf(argv: string[]): number[] {
  const want = `${argv.join('\0')}\0`;
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8') === want && alive(Number(e))) out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

/** A sleep with a duration unique to this test, so its processes can be found in /proc. */
function uniqueSleep(): string[] {
  return ['/bin/sleep', `${1000 + Math.floor(Math.random() * 1e6)}`];
}

describe('process runtime', () => {
  it('runs a command without a shell, with its environment only, and captures its output', async () => {
    const dataDir = dirs.make();
    process.env.IOTISTIC_TEST_SECRET = 'must-not-leak';
    const a = agent(dataDir, target(1, {
      app: {
        services: {
          hello: { runtime: 'process', command: ['/bin/sh', '-c', 'echo "hello $GREETING"; echo to-stderr >&2; env; exec /bin/sleep 300'], environment: { GREETING: 'world' } },
          // No shell: the argument is passed as it is, not expanded.
          literal: { runtime: 'process', command: ['/bin/echo', '$HOME', '*'], restart: 'no' },
          where: { runtime: 'process', command: ['/bin/pwd'], workingDir: dataDir, restart: 'no' },
          nowhere: { runtime: 'process', command: ['/bin/pwd'], workingDir: '/nonexistent-dir', restart: 'no' },
        },
      },
    }), {}, {}, ['app/nowhere']);
    await waitFor('hello running', () => a.service('app', 'hello')?.status === 'running');
    const log = join(dataDir, 'apps', 'app', 'hello', 'output.log');
    const text = await waitFor('output captured', () => {
      const t = existsSync(log) ? readFileSync(log, 'utf8') : '';
      return t.includes('GREETING=') ? t : undefined;
    });
    expect(text).toContain('hello world');
    expect(text).toContain('to-stderr');
    expect(text).toContain('PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
    expect(text).not.toContain('IOTISTIC_TEST_SECRET');
    expect(text).not.toContain('must-not-leak');
    await waitFor('literal exited', () => a.service('app', 'literal')?.status === 'exited');
    expect(readFileSync(join(dataDir, 'apps', 'app', 'literal', 'output.log'), 'utf8')).toContain('$HOME *\n');
    expect(a.service('app', 'literal')).toMatchObject({ status: 'exited', exitCode: 0, restarts: 0, runtime: 'process', image: null });
    await waitFor('where exited', () => a.service('app', 'where')?.status === 'exited');
    expect(readFileSync(join(dataDir, 'apps', 'app', 'where', 'output.log'), 'utf8')).toContain(`\n${dataDir}\n`);
    expect(a.service('app', 'nowhere')?.lastError).toBe('start failed: working dir /nonexistent-dir does not exist');
    delete process.env.IOTISTIC_TEST_SECRET;
  });

  it('caps the output in rotating files', async () => {
    const dataDir = dirs.make();
    const script = 'i=0; while [ $i -lt 3000 ]; do echo "line $i ....................................................."; i=$((i+1)); done; exec /bin/sleep 300';
    const a = agent(dataDir, target(1, { app: { services: { chatty: { runtime: 'process', command: ['/bin/sh', '-c', script] } } } }), { logMaxBytes: 8_192, logFiles: 2 });
    const log = join(dataDir, 'apps', 'app', 'chatty', 'output.log');
    await waitFor('all lines written', () => existsSync(log) && readFileSync(log, 'utf8').includes('line 2999 '));
    const files = readdirSync(join(dataDir, 'apps', 'app', 'chatty')).sort();
    expect(files).toEqual(['output.log', 'output.log.1', 'output.log.2']);
    for (const f of files) expect(statSync(join(dataDir, 'apps', 'app', 'chatty', f)).size).toBeLessThanOrEqual(8_192);
    // The oldest output is gone, the newest kept.
    const all = files.map((f) => readFileSync(join(dataDir, 'apps', 'app', 'chatty', f), 'utf8')).join('');
    expect(all).not.toContain('line 0 ');
    expect(a.service('app', 'chatty')?.status).toBe('running');
  });

  it('restarts a crashing command with growing delays and shows backoff; a missing program backs off too; the others run', async () => {
    const dataDir = dirs.make();
    const calm = uniqueSleep();
    const a = agent(dataDir, target(1, {
      app: {
        services: {
          crash: { runtime: 'process', command: ['/bin/sh', '-c', 'exit 2'] },
          missing: { runtime: 'process', command: ['/nonexistent/program'] },
          calm: { runtime: 'process', command: calm },
          done: { runtime: 'process', command: ['/bin/true'], restart: 'on-failure' },
        },
      },
    }), {}, {}, ['app/crash', 'app/missing']);
    await waitFor('four restarts', () => (a.service('app', 'crash')?.restarts ?? 0) >= 4, 30_000);
    // Start times from the log's markers.
    const log = readFileSync(join(dataDir, 'apps', 'app', 'crash', 'output.log'), 'utf8');
    const starts = [...log.matchAll(/^--- (\S+) started/gm)].map((m) => Date.parse(m[1] as string));
    const gaps = starts.slice(1).map((t, i) => t - (starts[i] as number));
    // 300 ms doubling: at least 300, 600, 1200, 2400 ms apart (plus the time to run, exit and be seen).
    for (let i = 0; i < 4; i++) expect(gaps[i]).toBeGreaterThanOrEqual(300 * 2 ** i - 20);
    expect(gaps[3]).toBeGreaterThan(gaps[0] as number);
    const backoff = a.states.map((s) => s.state.apps.app?.services.crash).find((s) => s?.status === 'backoff');
    expect(backoff).toMatchObject({ lastError: 'exited with code 2', exitCode: 2 });
    expect(backoff?.nextRetryAt).toBeGreaterThan(0);

    const missing = a.service('app', 'missing');
    expect(missing?.lastError).toMatch(/start failed: spawn \/nonexistent\/program ENOENT/);
    expect(['backoff', 'creating']).toContain(missing?.status);
    expect(a.service('app', 'calm')).toMatchObject({ status: 'running', restarts: 0 });
    expect(pidsOf(calm)).toHaveLength(1);
    expect(a.service('app', 'done')).toMatchObject({ status: 'exited', exitCode: 0, restarts: 0 });
  });

  it('restarts only the service whose configuration changed, removes a service that left, and kills one that ignores SIGTERM', async () => {
    const dataDir = dirs.make();
    const one = uniqueSleep();
    const two = uniqueSleep();
    const stubborn = ['/bin/sh', '-c', `trap "" TERM; ${uniqueSleep().join(' ')} & wait`];
    const a = agent(dataDir, target(1, {
      app: {
        services: {
          one: { runtime: 'process', command: one, environment: { V: '1' } },
          two: { runtime: 'process', command: two },
          stubborn: { runtime: 'process', command: stubborn },
        },
      },
    }));
    await waitFor('applied', () => a.rec.currentState().status === 'applied');
    const [onePid] = pidsOf(one);
    const [twoPid] = pidsOf(two);
    expect(onePid).toBeDefined();
    const stubbornChildren = groupMembers(pidsOf(stubborn)[0] as number);
    expect(stubbornChildren.length).toBe(2);

    await a.apply(target(2, { app: { services: { one: { runtime: 'process', command: one, environment: { V: '2' } }, two: { runtime: 'process', command: two } } } }));
    await waitFor('v2 applied', () => {
      const s = a.rec.currentState();
      return s.targetVersion === 2 && s.status === 'applied' && pidsOf(one).length === 1 && pidsOf(one)[0] !== onePid;
    });
    expect(alive(onePid as number)).toBe(false);
    expect(pidsOf(two)).toEqual([twoPid]);
    // The stubborn one ignored SIGTERM and was killed, with what it forked.
    for (const pid of stubbornChildren) expect(alive(pid)).toBe(false);
    expect(Object.keys(a.rec.currentState().apps.app?.services ?? {}).sort()).toEqual(['one', 'two']);
    expect(a.service('app', 'one')?.restarts).toBe(0);
  });

  it('a graceful agent stop stops its processes', async () => {
    const dataDir = dirs.make();
    const cmd = uniqueSleep();
    const a = agent(dataDir, target(1, { app: { services: { s: { runtime: 'process', command: cmd } } } }));
    await waitFor('running', () => pidsOf(cmd).length === 1);
    await a.stop(true);
    expect(pidsOf(cmd)).toEqual([]);
    expect(readdirSync(join(dataDir, 'run'))).toEqual([]);
  });

  it('an agent killed with SIGKILL leaves its processes; the next agent stops them and starts one fresh copy', async () => {
    const dataDir = dirs.make();
    const cmd = uniqueSleep();
    const doc = { version: 1, apps: { app: { services: { s: { runtime: 'process', command: cmd } } } } };
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/fixtures/process-agent.ts'), dataDir, JSON.stringify(doc)], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    cleanup(async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    await waitFor(`the first agent applied (stderr: ${err})`, () => out.includes('applied') && pidsOf(cmd).length === 1, 30_000);
    const [orphan] = pidsOf(cmd);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // The agent is gone; its service is not.
    expect(alive(orphan as number)).toBe(true);

    const b = agent(dataDir, target(1, doc.apps as Record<string, unknown>));
    await waitFor('the second agent applied', () => b.rec.currentState().status === 'applied' && b.service('app', 's')?.status === 'running');
    expect(alive(orphan as number)).toBe(false);
    const now = pidsOf(cmd);
    expect(now).toHaveLength(1);
    expect(now[0]).not.toBe(orphan);
  });

  it('without a container engine: docker services fail with the reason, auto without an image runs as a process', async () => {
    const dataDir = dirs.make();
    const cmd = uniqueSleep();
    const logger = silentLogger();
    const docker = new DockerRuntime({ host: `unix://${join(dataDir, 'no-such-docker.sock')}`, clock: systemClock, random: Math.random, logger });
    const a = agent(
      dataDir,
      target(1, {
        app: {
          services: {
            web: { image: 'busybox:1.36' },
            either: { runtime: 'auto', image: 'busybox:1.36' },
            native: { runtime: 'auto', command: cmd },
          },
        },
      }),
      {},
      { docker },
    );
    await waitFor('native running', () => a.service('app', 'native')?.status === 'running');
    const s = a.rec.currentState();
    expect(s.status).toBe('failed');
    expect(s.apps.app?.services.web).toMatchObject({ status: 'failed', runtime: 'docker', lastError: expect.stringMatching(/no container engine answers: unix:\/\/.*no-such-docker\.sock: .*ENOENT/) });
    expect(s.apps.app?.services.either?.lastError).toMatch(/runtime "auto" with an image needs a container engine/);
    expect(s.apps.app?.services.native).toMatchObject({ status: 'running', runtime: 'process' });
  });
});
