import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { processStartTicks } from '../../src/util/process-group.js';
import { validateTarget } from '../../src/workloads/target-schema.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { processTargetArb } from '../helpers/target-arbitraries.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Names from the network become paths (issue 21, fault 4) and pid files others can write (fault 6),
 * on the built agent: whatever target was accepted, the agent restarts healthy after kill -9 and
 * after a clean stop; a pid file it cannot trust is moved aside, never acted on.
 */

const dirs = tempDirs();
const agents: AgentProcess[] = [];
const victims: number[] = [];

beforeAll(() => requireBuilt());
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGTERM');
  for (const pid of victims.splice(0)) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});
afterAll(() => dirs.cleanup());

interface StateView {
  current: { apps: Record<string, { services: Record<string, { status: string }> } | undefined> };
}

async function start(dataDir: string): Promise<AgentProcess> {
  const a = await spawnAgent({ dataDir, config: { workloads: { stopTimeoutSeconds: 5 } } });
  agents.push(a);
  await waitFor('/v1/healthy to answer 200', async () => (await fetch(`${a.apiUrl}/v1/healthy`)).status === 200, 30_000);
  return a;
}

async function apply(a: AgentProcess, doc: unknown): Promise<void> {
  const r = await a.send('POST', '/v2/local/target-state', doc);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
}

/** Waits until every service of `doc` runs (the runtime got past its leftovers). */
async function allRunning(a: AgentProcess, doc: { apps: Record<string, { services: Record<string, unknown> }> }): Promise<void> {
  await waitFor(
    'every service running',
    async () => {
      const v = (await a.get('/v2/state')).body as StateView;
      return Object.entries(doc.apps).every(([app, { services }]) => Object.keys(services).every((s) => v.current.apps[app]?.services[s]?.status === 'running'));
    },
    30_000,
  );
}

/** The pids recorded in the runtime's pid files. */
function recordedPids(dataDir: string): number[] {
  const run = join(dataDir, 'services', 'run');
  return readdirSync(run)
    .filter((f) => f.endsWith('.json') && lstatSync(join(run, f)).isFile())
    .map((f) => (JSON.parse(readFileSync(join(run, f), 'utf8')) as { pid: number }).pid);
}

/** Apply, kill -9, restart healthy with the same services (the old ones stopped), clean stop, restart healthy. */
async function survivesRestarts(doc: { version: number; apps: Record<string, { services: Record<string, unknown> }> }): Promise<void> {
  const dataDir = dirs.make();
  let a = await start(dataDir);
  await apply(a, doc);
  await allRunning(a, doc);
  const before = recordedPids(dataDir);
  await a.stop('SIGKILL');
  a = await start(dataDir);
  await allRunning(a, doc);
  // What the killed agent left was stopped, not run twice beside the new copies.
  await waitFor('the killed agent\'s processes stopped', () => before.every((pid) => processStartTicks(pid) === null || readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')));
  const stopped = await a.stop('SIGTERM');
  expect(stopped.code).toBe(0);
  a = await start(dataDir);
  await allRunning(a, doc);
  // No error anywhere in the last run (a failed reconcile pass, a crash).
  expect(a.records().filter((r) => (r.level as number) >= 50 || String(r.msg).includes('EISDIR'))).toEqual([]);
  await a.stop('SIGTERM');
}

describe('names from the network never brick the agent', () => {
  it('an app "run" with a service "x.json" (a directory among the pid files in the old layout), and names every JS object has: healthy after kill -9 and after a clean stop', async () => {
    const sleep = { runtime: 'process', command: ['/bin/sleep', '30'] };
    const doc = { version: 1, apps: { run: { services: { 'x.json': sleep, x: sleep } }, constructor: { services: { constructor: sleep } } } };
    await survivesRestarts(doc);
  });

  it('for generated accepted targets applied locally, restarts healthy after kill -9 and after a clean stop', async () => {
    await fc.assert(
      fc.asyncProperty(processTargetArb, async (doc) => {
        expect(validateTarget(doc).ok).toBe(true);
        await survivesRestarts(doc as Parameters<typeof survivesRestarts>[0]);
      }),
      { numRuns: 2, endOnFailure: true },
    );
  }, 120_000);

  it('moves the previous layout\'s service directories into apps/ and goes on logging there', async () => {
    const dataDir = dirs.make();
    const old = join(dataDir, 'services');
    mkdirSync(join(old, 'edge', 'ticker'), { recursive: true });
    writeFileSync(join(old, 'edge', 'ticker', 'output.log'), 'a line from the previous version\n');
    mkdirSync(join(old, 'run', 'x.json'), { recursive: true }); // an app "run", service "x.json"
    writeFileSync(join(old, 'run', 'x.json', 'output.log'), 'run/x.json said this\n');
    const a = await start(dataDir);
    const doc = { version: 1, apps: { edge: { services: { ticker: { runtime: 'process', command: ['/bin/sleep', '30'] } } } } };
    await apply(a, doc);
    await allRunning(a, doc);
    const log = join(old, 'apps', 'edge', 'ticker', 'output.log');
    await waitFor('the start line in the moved log', () => existsSync(log) && readFileSync(log, 'utf8').includes('started ["/bin/sleep","30"]'));
    expect(readFileSync(log, 'utf8')).toMatch(/^a line from the previous version\n/);
    expect(readFileSync(join(old, 'apps', 'run', 'x.json', 'output.log'), 'utf8')).toBe('run/x.json said this\n');
    expect(existsSync(join(old, 'edge'))).toBe(false);
    expect(readdirSync(join(old, 'run')).filter((f) => lstatSync(join(old, 'run', f)).isDirectory())).toEqual([]);
  });
});

describe('pid files the agent cannot trust', () => {
  it('never signals what a pid file names when another user owns it, others can write it, or it is a symlink: it is moved aside', async () => {
    const victim = spawn('/bin/sleep', ['300'], { detached: true, stdio: 'ignore' });
    victim.unref();
    const pid = victim.pid as number;
    victims.push(pid);
    const ticks = await waitFor('the victim running', () => processStartTicks(pid) ?? undefined);
    const dataDir = dirs.make();
    const run = join(dataDir, 'services', 'run');
    mkdirSync(run, { recursive: true, mode: 0o700 });
    const rec = (id: string): string => JSON.stringify({ id, pid, startTicks: ticks, app: 'x', service: 'y', configHash: 'h', agentPid: 1 });
    writeFileSync(join(run, 'foreign.json'), rec('foreign'), { mode: 0o600 });
    chownSync(join(run, 'foreign.json'), 65534, 65534);
    writeFileSync(join(run, 'loose.json'), rec('loose'));
    chmodSync(join(run, 'loose.json'), 0o666);
    writeFileSync(join(dataDir, 'elsewhere.json'), rec('link'), { mode: 0o600 });
    symlinkSync(join(dataDir, 'elsewhere.json'), join(run, 'link.json'));

    const a = await start(dataDir);
    const doc = { version: 1, apps: { app: { services: { s: { runtime: 'process', command: ['/bin/sleep', '30'] } } } } };
    await apply(a, doc);
    await allRunning(a, doc); // the runtime has been through its leftovers
    expect(processStartTicks(pid)).toBe(ticks);
    for (const [file, why] of [
      ['foreign.json', 'owned by uid 65534'],
      ['loose.json', 'writable by group or others'],
      ['link.json', 'a symlink'],
    ] as const) {
      expect(existsSync(join(run, file))).toBe(false);
      expect(a.records().some((r) => String(r.msg).includes(`${join(run, file)}: ${why}`)), `a log line for ${file}`).toBe(true);
    }
    expect(readdirSync(join(dataDir, 'services', '.aside')).length).toBe(3);
    expect(readFileSync(join(dataDir, 'elsewhere.json'), 'utf8')).toBe(rec('link')); // a link's target is never touched
  });
});
