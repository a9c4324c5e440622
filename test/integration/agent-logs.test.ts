import { beforeAll, describe, expect, it } from 'vitest';
import { waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';
import { fileEngine } from '../helpers/docker.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { observe } from '../helpers/mqtt.js';

/**
 * Device logs end to end (docs/logs.md): built agents, a real Docker engine (private), native
 * processes, and the devcloud, which stores every line it is sent (never deduplicating by seq, so an
 * agent that sends a line twice is seen).
 */
const env = agentsWithDevCloud();
const engine = fileEngine();
const IMAGE = 'local/agent-logs:1';

beforeAll(async () => {
  await engine.buildImage(IMAGE);
}, 120_000);

interface StoredLine {
  service: string;
  seq: number;
  ts: number;
  stream: string;
  line: string;
  dropped?: number;
}

/** Every line the devcloud holds for a service, in seq order (all pages). */
function cloudLines(uuid: string, service: string): StoredLine[] {
  const out: StoredLine[] = [];
  for (let afterSeq: number | undefined; ; ) {
    const page = env.cloud.admin.logs(uuid, { service, ...(afterSeq === undefined ? {} : { afterSeq }), limit: 10_000 }) as { lines: StoredLine[]; more: boolean };
    out.push(...page.lines);
    if (!page.more || page.lines.length === 0) return out;
    afterSeq = (page.lines.at(-1) as StoredLine).seq;
  }
}

/** A ticker printing `n=<i>` every 10 ms, forever: for a container (busybox) and for a native process. */
const TICK = 'i=0; while :; do echo "n=$i"; i=$((i+1)); usleep 10000 2>/dev/null || sleep 0.01; done';

async function agentFor(uuid: string, dataDir: string, extra: Record<string, unknown> = {}): Promise<AgentProcess> {
  const dev = { uuid, apiKey: `${uuid}-key-0123456789` };
  return env.spawn({
    dataDir,
    env: { DOCKER_HOST: engine.host },
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      logs: { linesPerSecond: 1_000, ...extra },
      settings: {
        pollIntervalMs: 2_000,
        reconciliationIntervalMs: 2_000,
        offline: { offlineAfterFailures: 1, minBackoffSeconds: 0.2, maxBackoffSeconds: 2, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 },
      },
    },
  });
}

/** Each test's app has a name of its own: agents on one engine share its containers' labels. */
function tickers(uuid: string, app: string): void {
  env.cloud.admin.createDevice({ uuid, apiKey: `${uuid}-key-0123456789` });
  env.cloud.admin.setTarget(uuid, {
    version: 1,
    apps: {
      [app]: {
        services: {
          box: { image: IMAGE, command: ['/bin/sh', '-c', TICK] },
          proc: { runtime: 'process', command: ['/bin/sh', '-c', TICK] },
        },
      },
    },
  });
}

/** The numbers a ticker printed, in seq order, and whether the seqs run 0, 1, 2, ... with none twice. */
function ticks(lines: StoredLine[]): { numbers: number[]; seqsContiguous: boolean } {
  const numbers = lines.filter((l) => l.stream === 'stdout').map((l) => Number(/^n=(\d+)$/.exec(l.line)?.[1] ?? NaN));
  return { numbers, seqsContiguous: lines.every((l, i) => l.seq === i) };
}

/** Whether `numbers` is 0, 1, 2, ... k (runs: several such runs one after another, a restarted process's). */
function runs(numbers: number[]): number[][] {
  const out: number[][] = [];
  for (const n of numbers) {
    if (n === 0 || out.length === 0) out.push([n]);
    else (out.at(-1) as number[]).push(n);
  }
  return out;
}

const contiguous = (run: number[]): boolean => run.every((n, i) => n === i);

describe('logs through an outage', () => {
  it('a container and a process printing every 10 ms through a 60 s devcloud outage: every line arrives once, in order', async () => {
    const uuid = `logs-outage-${process.pid}`;
    tickers(uuid, 'outage');
    await agentFor(uuid, env.dirs.make());
    await waitFor('both services\' lines at the cloud', () => cloudLines(uuid, 'outage/box').length > 50 && cloudLines(uuid, 'outage/proc').length > 50, 90_000);

    await env.cloud.admin.setFaults({ refuse: true });
    const downAt = Date.now();
    await new Promise((r) => setTimeout(r, 60_000));
    const upAt = Date.now();
    await env.cloud.admin.setFaults({ refuse: null });

    for (const service of ['outage/box', 'outage/proc']) {
      // Caught up: lines printed after the return are there, and every one before them. (Two batches
      // are in flight at a time: for a moment a later one may be stored before an earlier one. A line
      // lost or stored twice never becomes contiguous: the wait then fails.)
      await waitFor(`${service} caught up, seq 0..n contiguous`, () => {
        const now = cloudLines(uuid, service);
        return now.some((l) => l.ts > upAt + 2_000) && ticks(now).seqsContiguous;
      }, 60_000);
      const lines = cloudLines(uuid, service);
      const { numbers, seqsContiguous } = ticks(lines);
      expect(seqsContiguous, `${service}: seq 0, 1, 2, ... each once`).toBe(true);
      expect(contiguous(numbers), `${service}: n=0, 1, 2, ... each once`).toBe(true);
      // The outage's lines are among them (about 100 a second for 60 s).
      expect(lines.filter((l) => l.ts > downAt && l.ts < upAt).length).toBeGreaterThan(2_000);
      expect(lines.every((l) => l.stream !== 'marker')).toBe(true);
    }
  }, 240_000);
});

describe('logs across a kill -9 of the agent', () => {
  it('no gap and no duplicate: the container\'s log resumes from its cursor, the process\'s numbering goes on', async () => {
    const uuid = `logs-kill-${process.pid}`;
    tickers(uuid, 'edge');
    const dataDir = env.dirs.make();
    const first = await agentFor(uuid, dataDir);
    await waitFor('lines at the cloud', () => cloudLines(uuid, 'edge/box').length > 100 && cloudLines(uuid, 'edge/proc').length > 100, 90_000);
    await first.stop('SIGKILL');
    const killedAt = Date.now();
    // The container goes on printing while no agent reads it.
    await new Promise((r) => setTimeout(r, 3_000));
    await agentFor(uuid, dataDir);
    await waitFor('lines after the restart', () => cloudLines(uuid, 'edge/box').some((l) => l.ts > killedAt + 5_000) && cloudLines(uuid, 'edge/proc').some((l) => l.ts > killedAt + 5_000), 90_000);

    const box = ticks(cloudLines(uuid, 'edge/box'));
    expect(box.seqsContiguous).toBe(true);
    expect(contiguous(box.numbers), 'the container: n=0, 1, 2, ... each once, across the kill').toBe(true);
    expect(box.numbers.length).toBeGreaterThan(300);

    const proc = ticks(cloudLines(uuid, 'edge/proc'));
    expect(proc.seqsContiguous).toBe(true);
    // The process is stopped and started afresh by the new agent: two runs, each 0, 1, 2, ... once.
    const procRuns = runs(proc.numbers);
    expect(procRuns.length).toBe(2);
    expect(procRuns.every(contiguous)).toBe(true);
  }, 240_000);
});

describe('a flooding service', () => {
  it('its markers count exactly what was dropped, and a quiet service\'s lines and telemetry still arrive on time', async () => {
    const uuid = `logs-flood-${process.pid}`;
    env.cloud.admin.createDevice({ uuid, apiKey: `${uuid}-key-0123456789` });
    // 50 rounds of 200 lines 0.1 s apart: about 2,000 lines a second, 100 times the limit of 20.
    const FLOOD = 'sleep 2; for j in $(seq 1 50); do seq 1 200; sleep 0.1; done; echo flood-done; sleep 3600';
    const QUIET = 'i=0; while :; do echo "q=$i"; i=$((i+1)); sleep 0.2; done';
    env.cloud.admin.setTarget(uuid, {
      version: 1,
      apps: { edge: { services: { flood: { runtime: 'process', command: ['/bin/sh', '-c', FLOOD] }, quiet: { runtime: 'process', command: ['/bin/sh', '-c', QUIET] } } } },
    });
    const agent = await agentFor(uuid, env.dirs.make(), { linesPerSecond: 20, burstSeconds: 2, markerIntervalSeconds: 1 });
    await waitFor('the quiet service\'s lines', () => cloudLines(uuid, 'edge/quiet').length > 5, 60_000);

    // While the flood runs: quiet lines and telemetry are at the cloud within 3 s of being made.
    const lateness: number[] = [];
    const seen = new Set<number>();
    const telemetryLateness: number[] = [];
    const deadline = Date.now() + 6_000;
    while (Date.now() < deadline) {
      const sentAt = Date.now();
      const posted = await agent.send('POST', '/v2/telemetry', { stream: 'probe', payload: { at: sentAt } });
      const [id] = (posted.body as { ids: string[] }).ids;
      await waitFor('the telemetry at the cloud', () => env.storedMessages(uuid).some((m) => m.id === id), 10_000);
      telemetryLateness.push(Date.now() - sentAt);
      for (const l of cloudLines(uuid, 'edge/quiet')) {
        if (!seen.has(l.seq)) {
          seen.add(l.seq);
          lateness.push(Date.now() - l.ts);
        }
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(Math.max(...telemetryLateness)).toBeLessThan(3_000);
    expect(lateness.length).toBeGreaterThan(10);
    expect(Math.max(...lateness)).toBeLessThan(3_000);

    await waitFor('the flood over and counted', () => cloudLines(uuid, 'edge/flood').some((l) => l.line === 'flood-done'), 60_000);
    // The marker of the last drops is committed at most a marker interval after them.
    await waitFor(
      'every flooded line kept or counted',
      () => {
        const lines = cloudLines(uuid, 'edge/flood');
        const kept = lines.filter((l) => l.stream === 'stdout' && /^\d+$/.test(l.line)).length;
        const dropped = lines.filter((l) => l.stream === 'marker').reduce((n, l) => n + (l.dropped ?? 0), 0);
        return kept + dropped === 10_000;
      },
      20_000,
    );
    const lines = cloudLines(uuid, 'edge/flood');
    const markers = lines.filter((l) => l.stream === 'marker');
    expect(markers.length).toBeGreaterThan(3);
    expect(markers.every((m) => /^\d+ lines? dropped \(rate limit: 20 lines\/s\)$/.test(m.line))).toBe(true);
    expect(lines.every((l, i) => l.seq === i)).toBe(true);
    // The quiet service lost nothing.
    expect(cloudLines(uuid, 'edge/quiet').every((l) => l.stream === 'stdout')).toBe(true);
  }, 180_000);
});

describe('logs over MQTT', () => {
  it('each chunk is published on logs/<app>/<service>, the agent\'s own on logs/agent, lines numbered without a gap', async () => {
    const broker = await startMosquitto();
    const uuid = `logs-mqtt-${process.pid}`;
    const sub = await observe(broker.url, `iot/${uuid}/logs/#`);
    try {
      env.cloud.admin.createDevice({ uuid, apiKey: `${uuid}-key-0123456789` });
      env.cloud.admin.setTarget(uuid, { version: 1, apps: { m: { services: { say: { runtime: 'process', command: ['/bin/sh', '-c', 'for i in $(seq 0 199); do echo "n=$i"; done; sleep 3600'] } } } } });
      await env.spawn({
        dataDir: env.dirs.make(),
        config: {
          device: { uuid, apiKey: `${uuid}-key-0123456789` },
          cloud: { apiUrl: env.cloud.url },
          mqtt: { url: broker.url },
          workloads: { dockerHost: 'unix:///nonexistent/docker.sock' },
          features: { metrics: false },
          settings: { pollIntervalMs: 2_000 },
        },
      });
      type Body = { id: string; service: string; lines: Array<{ seq: number; stream: string; line: string }> };
      const bodies = (topic: string): Body[] => sub.received.filter((r) => r.topic === topic).map((r) => JSON.parse(r.payload) as Body);
      await waitFor('every line on the broker', () => bodies(`iot/${uuid}/logs/m/say`).flatMap((b) => b.lines).length >= 200, 60_000);
      const lines = bodies(`iot/${uuid}/logs/m/say`).flatMap((b) => b.lines);
      expect(lines.map((l) => l.seq)).toEqual([...Array(lines.length).keys()]);
      expect(lines.map((l) => l.line)).toEqual([...Array(200).keys()].map((i) => `n=${i}`));
      expect(bodies(`iot/${uuid}/logs/m/say`).every((b) => b.service === 'm/say' && typeof b.id === 'string')).toBe(true);
      // Not over HTTP: the devcloud's device API has none of them.
      expect(cloudLines(uuid, 'm/say')).toEqual([]);
      // The agent warns about what it cannot do (here: the Docker engine it is pointed at is not there): its own log.
      await waitFor('the agent\'s warning on logs/agent', () => bodies(`iot/${uuid}/logs/agent`).some((b) => b.lines.some((l) => l.stream === 'warn' && l.line.includes('ENOENT /nonexistent/docker.sock'))), 60_000);
    } finally {
      await sub.close();
      await broker.dispose();
    }
  }, 120_000);
});

describe('a container that restarts and is replaced', () => {
  it('its restarts are followed from the cursor and its replacement from its first line; the numbers go on', async () => {
    const uuid = `logs-replace-${process.pid}`;
    env.cloud.admin.createDevice({ uuid, apiKey: `${uuid}-key-0123456789` });
    // Prints 5 lines and exits: the agent starts the same container again (restart "always").
    const run = (tag: string) => ['/bin/sh', '-c', `for i in 1 2 3 4 5; do echo "${tag} $i"; done; sleep 1`];
    env.cloud.admin.setTarget(uuid, { version: 1, apps: { rep: { services: { box: { image: IMAGE, command: run('a'), environment: { V: '1' } } } } } });
    await agentFor(uuid, env.dirs.make(), { chunkWindowMs: 50 });
    await waitFor('two runs of the first container', () => cloudLines(uuid, 'rep/box').filter((l) => l.line === 'a 1').length >= 2, 90_000);
    env.cloud.admin.setTarget(uuid, { version: 2, apps: { rep: { services: { box: { image: IMAGE, command: run('b'), environment: { V: '2' } } } } } });
    await waitFor('the replacement\'s lines', () => cloudLines(uuid, 'rep/box').some((l) => l.line === 'b 5'), 90_000);
    const lines = cloudLines(uuid, 'rep/box');
    expect(lines.every((l, i) => l.seq === i)).toBe(true);
    // Runs of 1..5, each whole and once (a restart does not send the earlier runs' lines again).
    const texts = lines.map((l) => l.line);
    const firstB = texts.indexOf('b 1');
    const a = texts.slice(0, firstB);
    const aRuns: string[][] = [];
    for (const t of a) {
      if (t === 'a 1') aRuns.push([t]);
      else aRuns.at(-1)?.push(t);
    }
    expect(aRuns.length).toBeGreaterThanOrEqual(2);
    expect(aRuns.flat()).toEqual(a);
    // Every run whole; the last may have been cut by the replacement's stop.
    for (const r of aRuns.slice(0, -1)) expect(r).toEqual(['a 1', 'a 2', 'a 3', 'a 4', 'a 5']);
    expect(['a 1', 'a 2', 'a 3', 'a 4', 'a 5'].slice(0, aRuns.at(-1)?.length)).toEqual(aRuns.at(-1));
    expect(texts.slice(firstB, firstB + 5)).toEqual(['b 1', 'b 2', 'b 3', 'b 4', 'b 5']);
  }, 180_000);
});
