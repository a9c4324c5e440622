import { spawn } from 'node:child_process';
import { connectAsync } from 'mqtt';
import { Pool } from 'undici';
import { deadline } from './drain.js';
import { publishWindowed } from './mqtt-window.js';

/**
 * The producers of the ingest benchmark: what a local app does to hand telemetry over. Each one
 * builds its messages before the clock starts and reports how many were acknowledged and how long
 * that took; the same producer runs against the agent and against Mosquitto.
 */

export const STREAMS = ['temperature', 'humidity', 'pressure', 'vibration'] as const;
export const PAYLOAD_BYTES = 100;
/** Longest one producer run may take before it is reported as unmeasured. */
const RUN_TIMEOUT_MS = 300_000;

export interface ProducerRun {
  /** Messages acknowledged (PUBACK, exit 0 of mosquitto_pub, ids in a 202). */
  acked: number;
  ms: number;
}

/** Telemetry payload `i`: a JSON object of exactly PAYLOAD_BYTES bytes. */
export function payload(i: number): string {
  const head = JSON.stringify({ seq: i, ts: 1_700_000_000_000, v: 21.5, unit: 'C', pad: '' }).length;
  const s = JSON.stringify({ seq: i, ts: 1_700_000_000_000, v: 21.5, unit: 'C', pad: 'x'.repeat(Math.max(0, PAYLOAD_BYTES - head)) });
  if (s.length !== PAYLOAD_BYTES) throw new Error(`payload of ${s.length} bytes, expected ${PAYLOAD_BYTES}`);
  return s;
}

export const streamOf = (i: number): string => STREAMS[i % STREAMS.length] as string;

/** The body of a `POST /v2/telemetry` carrying items `start` .. `start + count - 1`: one object when count is 1, else an array. */
export function telemetryBody(start: number, count: number): string {
  const items = Array.from({ length: count }, (_, k) => `{"stream":"${streamOf(start + k)}","payload":${payload(start + k)}}`);
  return count === 1 ? items[0]! : `[${items.join(',')}]`;
}

/** The headers of a `POST /v2/telemetry` with the local API key. */
export const telemetryHeaders = (key: string) => ({ authorization: `Bearer ${key}`, 'content-type': 'application/json' });

/** The ids a 202 of `POST /v2/telemetry` carries; any other status throws. */
export function acceptedIds(status: number, text: string): number {
  if (status !== 202) throw new Error(`POST /v2/telemetry answered ${status}: ${text.slice(0, 200)}`);
  return (JSON.parse(text) as { ids: unknown[] }).ids.length;
}

/**
 * mqtt.js (MQTT 3.1.1: the agent's aedes speaks nothing newer), QoS 1 on `local/telemetry/{stream}`,
 * keeping `window` publishes unacknowledged; timed from the first PUBLISH to the last PUBACK. A
 * closed connection (the agent refuses by closing) fails the run.
 */
export async function mqttWindow(port: number, n: number, window: number, clientId: string): Promise<ProducerRun> {
  const messages = Array.from({ length: n }, (_, i) => ({ topic: `local/telemetry/${streamOf(i)}`, payload: Buffer.from(payload(i)) }));
  const client = await connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4, clean: true, clientId, reconnectPeriod: 0, connectTimeout: 30_000 });
  try {
    const t0 = performance.now();
    const progress = { acked: 0 };
    const closed = new Promise<never>((_, reject) => client.once('close', () => reject(new Error(`the broker closed the connection after ${progress.acked} PUBACKs`))));
    await deadline(Promise.race([publishWindowed(client, messages, window, progress), closed]), RUN_TIMEOUT_MS, `${n} QoS 1 publishes`);
    const { acked } = progress;
    return { acked, ms: performance.now() - t0 };
  } finally {
    client.removeAllListeners('close');
    await client.endAsync(true).catch(() => undefined);
  }
}

/**
 * `mosquitto_pub -l -q 1`: one message per line of stdin, all on `local/telemetry/x`. It exits (0)
 * once stdin has ended and its last message is acknowledged; timed from the spawn to the exit.
 */
export async function mosquittoPub(port: number, n: number): Promise<ProducerRun> {
  const input = Buffer.from(Array.from({ length: n }, (_, i) => `${payload(i)}\n`).join(''));
  const t0 = performance.now();
  const child = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', 'local/telemetry/x', '-l'], { stdio: ['pipe', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (t: string) => (err += t));
  const exit = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => resolve(code));
  });
  child.stdin.on('error', () => undefined);
  child.stdin.end(input);
  try {
    const code = await deadline(exit, RUN_TIMEOUT_MS, 'mosquitto_pub');
    const ms = performance.now() - t0;
    if (code !== 0) throw new Error(`mosquitto_pub exited with ${code}: ${err.trim()}`);
    return { acked: n, ms };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

/**
 * `POST /v2/telemetry` with the API key, over `inFlight` keep-alive connections, each with one
 * request at a time: `batch` 1 sends one item per POST, more sends JSON arrays of `batch` items.
 * Acknowledged: the ids the 202 answers carry; any other status fails the run.
 */
export async function httpIngest(apiUrl: string, key: string, n: number, batch: number, inFlight: number): Promise<ProducerRun> {
  const bodies: { body: string; count: number }[] = [];
  for (let i = 0; i < n; i += batch) {
    const count = Math.min(batch, n - i);
    bodies.push({ body: telemetryBody(i, count), count });
  }
  const pool = new Pool(apiUrl, { connections: inFlight, pipelining: 1 });
  const headers = telemetryHeaders(key);
  try {
    const t0 = performance.now();
    let acked = 0;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < bodies.length) {
        const b = bodies[next++]!;
        const res = await pool.request({ path: '/v2/telemetry', method: 'POST', headers, body: b.body });
        const ids = acceptedIds(res.statusCode, await res.body.text());
        if (ids !== b.count) throw new Error(`a POST of ${b.count} items answered ${ids} ids`);
        acked += ids;
      }
    };
    await deadline(Promise.all(Array.from({ length: Math.min(inFlight, bodies.length) }, worker)), RUN_TIMEOUT_MS, `${bodies.length} POSTs`);
    return { acked, ms: performance.now() - t0 };
  } finally {
    await pool.close();
  }
}

/**
 * Leaves a persistent session (clean: false) subscribed to `local/telemetry/#` at QoS 1 and
 * disconnects: from then on the broker queues every telemetry message for it, and so stores it.
 */
export async function parkSubscriber(port: number): Promise<void> {
  const client = await connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4, clean: false, clientId: 'bench-ingest-parked', reconnectPeriod: 0, connectTimeout: 30_000 });
  try {
    await client.subscribeAsync('local/telemetry/#', { qos: 1 });
  } finally {
    await client.endAsync();
  }
}
