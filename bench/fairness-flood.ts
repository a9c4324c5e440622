import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connectAsync, type MqttClient } from 'mqtt';
import { Pool } from 'undici';
import { deadline } from './drain.js';
import { acceptedIds, payload, streamOf, telemetryBody, telemetryHeaders } from './ingest-clients.js';
import { publishStream } from './mqtt-window.js';

/**
 * The flood of the fairness benchmark: local producers handing the agent telemetry as fast as it
 * takes it, through the local broker (mqtt.js, QoS 1, `window` publishes unacknowledged per client)
 * and through `POST /v2/telemetry` (`httpBatch` items per POST, `httpInFlight` POSTs at once). It runs
 * in a child process of its own, so that its CPU is not counted as the agent's nor the bench's, and
 * counts only what was acknowledged (PUBACKs, the ids of 202 answers).
 */

export interface FloodPlan {
  brokerPort: number;
  apiUrl: string;
  key: string;
  mqttClients: number;
  window: number;
  httpInFlight: number;
  httpBatch: number;
}

export interface FloodCounts {
  mqtt: number;
  http: number;
}

type FromChild = { kind: 'progress'; counts: FloodCounts } | { kind: 'done'; counts: FloodCounts; error?: string };

export interface Flood {
  /** Messages acknowledged so far (the latest report, at most 50 ms old). */
  acked(): number;
  counts(): FloodCounts;
  /** Resolves at the first acknowledgement. */
  readonly started: Promise<void>;
  /** Stops sending, waits for what is in flight, resolves with the final counts; rejects when a producer failed. */
  stop(): Promise<FloodCounts>;
}

const SELF = fileURLToPath(import.meta.url);
const CHILD_FLAG = '--flood-child';
const REPORT_MS = 50;
/** Distinct payloads cycled through: the flooder's CPU goes to sending, not to building messages. */
const RING = 1_024;

/** Forks the flooder; it starts at once. */
export function startFlood(plan: FloodPlan): Flood {
  const child: ChildProcess = fork(SELF, [CHILD_FLAG, JSON.stringify(plan)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let counts: FloodCounts = { mqtt: 0, http: 0 };
  let onStarted: () => void = () => undefined;
  const started = new Promise<void>((resolve) => (onStarted = resolve));
  const done = new Promise<FloodCounts>((resolve, reject) => {
    child.on('message', (m: FromChild) => {
      counts = m.counts;
      if (counts.mqtt + counts.http > 0) onStarted();
      if (m.kind !== 'done') return;
      if (m.error) reject(new Error(`the flood failed: ${m.error}`));
      else resolve(m.counts);
    });
    child.once('exit', (code) => reject(new Error(`the flooder exited (${code}) before it reported its counts`)));
  });
  done.catch(() => undefined);
  return {
    acked: () => counts.mqtt + counts.http,
    counts: () => counts,
    started: Promise.race([started, done.then(() => undefined)]),
    async stop() {
      if (child.connected) child.send('stop');
      try {
        return await deadline(done, 60_000, 'the flood stop');
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    },
  };
}

// ---------------------------------------------------------------- the child

async function mqttProducer(plan: FloodPlan, id: number, progress: { acked: number }, stop: AbortSignal): Promise<void> {
  const ring = Array.from({ length: RING }, (_, i) => ({ topic: `local/telemetry/${streamOf(i)}`, payload: Buffer.from(payload(i)) }));
  const client: MqttClient = await connectAsync(`mqtt://127.0.0.1:${plan.brokerPort}`, { protocolVersion: 4, clean: true, clientId: `bench-fairness-${process.pid}-${id}`, reconnectPeriod: 0, connectTimeout: 60_000 });
  try {
    const closed = new Promise<never>((_, reject) => client.once('close', () => reject(new Error('the local broker closed the connection'))));
    await Promise.race([publishStream(client, (i) => ring[i % RING]!, Infinity, plan.window, progress, stop), closed]);
  } finally {
    client.removeAllListeners('close');
    await client.endAsync(true).catch(() => undefined);
  }
}

async function httpProducers(plan: FloodPlan, counts: { acked: number }, stop: AbortSignal): Promise<void> {
  if (plan.httpInFlight === 0) return;
  const bodies = Array.from({ length: 16 }, (_, k) => telemetryBody(k * plan.httpBatch, plan.httpBatch));
  const pool = new Pool(plan.apiUrl, { connections: plan.httpInFlight, pipelining: 1 });
  const headers = telemetryHeaders(plan.key);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (!stop.aborted) {
      const res = await pool.request({ path: '/v2/telemetry', method: 'POST', headers, body: bodies[next++ % bodies.length]! });
      counts.acked += acceptedIds(res.statusCode, await res.body.text());
    }
  };
  try {
    await Promise.all(Array.from({ length: plan.httpInFlight }, worker));
  } finally {
    await pool.close();
  }
}

async function child(plan: FloodPlan): Promise<void> {
  const mqtt = Array.from({ length: plan.mqttClients }, () => ({ acked: 0 }));
  const http = { acked: 0 };
  const counts = (): FloodCounts => ({ mqtt: mqtt.reduce((sum, p) => sum + p.acked, 0), http: http.acked });
  const ac = new AbortController();
  const send = (m: FromChild): void => void process.send?.(m);
  process.on('message', (m) => m === 'stop' && ac.abort());
  process.once('disconnect', () => ac.abort());
  const timer = setInterval(() => send({ kind: 'progress', counts: counts() }), REPORT_MS);
  let error: string | undefined;
  try {
    await Promise.all([...mqtt.map((p, id) => mqttProducer(plan, id, p, ac.signal)), httpProducers(plan, http, ac.signal)]);
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
    ac.abort();
  } finally {
    clearInterval(timer);
  }
  // Disconnected once the last report is out: the parent reads it before the exit.
  process.send?.({ kind: 'done', counts: counts(), ...(error ? { error } : {}) } satisfies FromChild, () => process.disconnect?.());
}

if (process.argv[2] === CHILD_FLAG) await child(JSON.parse(process.argv[3] ?? '{}') as FloodPlan);
