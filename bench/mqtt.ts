import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PassThrough } from 'node:stream';
import { connect, type IConnackPacket } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { RetryPolicy } from '../src/resilience/retry-policy.js';
import { defaultConfig } from '../src/config/schema.js';
import { MqttSession, type PublishOutcome, type PublishRequest } from '../src/mqtt/session.js';
import { MqttSink } from '../src/mqtt/sink.js';
import { deviceTopics } from '../src/mqtt/topics.js';
import { Flusher } from '../src/outbox/flusher.js';
import { flusherSettings } from '../src/outbox/policy.js';
import type { Outbox } from '../src/outbox/outbox.js';
import { backoffFromSettings } from '../src/resilience/backoff.js';
import { ConnectionMonitor } from '../src/resilience/connection-monitor.js';
import { Wakeup } from '../src/resilience/wakeup.js';
import { MIGRATIONS } from '../src/database-schema.js';
import { Store } from '../src/store/store.js';
import { systemClock } from '../src/util/clock.js';
import { IdGenerator } from '../src/util/ids.js';
import type { Json } from '../src/util/json-diff.js';
import { createLogger } from '../src/util/logger.js';
import { systemRandom } from '../src/util/random.js';
import { AckCounter, deadline, defaultOutbox, fillOutbox } from './drain.js';
import { startBroker, type BenchBroker } from './mosquitto.js';
import { benchArgs, cell, jsonLine, machine, median, ratio, table, target, type BenchReport, type BenchResult } from './report.js';
import { procCpuMs } from './proc.js';
import { publishWindowed } from './mqtt-window.js';

/**
 * npm run bench:mqtt [-- --messages N --runs R --backlog B --reconnects K --json]
 *
 * A private Mosquitto (/usr/sbin/mosquitto) on a free port of 127.0.0.1, persistence off,
 * max_inflight_messages = mqtt.maxInflight (100), which it announces to MQTT 5 clients as its
 * Receive Maximum, so both sides below publish with the same window of 100 unacknowledged QoS 1
 * PUBLISHes. Messages are the agent's telemetry: `iot/{uuid}/telemetry/{stream}` (4 streams), body
 * `{ id, ts, payload }` of exactly 200 bytes.
 *
 *  - raw (the limit): mqtt.js 5 (MQTT 5, clean: false, its default in-memory store, every other
 *    option at its default) publishes N pre-built messages from memory at QoS 1, keeping the window
 *    full; timed from the first PUBLISH to the last PUBACK.
 *  - ours: the same N messages enqueued in the agent's Outbox on disk first (not timed), then the
 *    agent's own parts, wired as agent.ts wires them with every default: Flusher (batches of
 *    settings.offline.flushBatchMessages/flushBatchBytes, flushMaxInflight batches) + MqttSink +
 *    MqttSession (the sink publishes with heldByCaller: the outbox, synchronous=FULL, holds each
 *    message until its PUBACK, so the session writes no in-flight rows of its own; WAL checkpoints
 *    on a worker thread as store.checkpoint defaults to). Timed from the
 *    flusher's start (the session already connected, birth acknowledged) until the outbox is empty
 *    (the last ack committed).
 *  - session alone (informational, to split the gap): MqttSession.publish of the pre-built messages
 *    from memory, no outbox and no flusher, as many publishes outstanding as the flusher keeps; not
 *    held by the caller, so each goes through the session's SQLite in-flight table (`process`
 *    durability, the session's default).
 *  Each round runs all three, raw first in even rounds and ours first in odd ones, so that load from
 *  elsewhere on the machine hits every side; medians of R rounds, and the target's ratio is the
 *  median of the per-round ours/raw ratios. CPU per message (this process; the broker from /proc)
 *  is reported beside each rate: on a loaded machine it moves less than the rate does.
 *
 *  - reconnect: B messages queued, the broker stopped; the session and flusher start and fail to
 *    connect (the session then sleeps its backoff on the Wakeup). The broker is started; the
 *    instant its port first accepts a TCP connection, the bench calls Wakeup.wake(), as the
 *    agent's ConnectivityProbe does when its TCP probe connects. The probe itself is not run: in
 *    the agent it probes only once the channel is offline (settings.offline.offlineAfterFailures
 *    failures in a row), on its own schedule (the first probe 0.5..1 s into the offline stretch,
 *    doubling up to probeMaxIntervalSeconds), and the agent's Wakeup staggers each wake-up by a
 *    random 0..10 s on purpose; this Wakeup has no stagger. So this measures the session's part:
 *    from the port accepting to the session's CONNACK and to the first PUBACK of a queued message.
 *    Median of K.
 */

const USAGE = 'usage: node dist/bench/mqtt.js [--messages N] [--runs R] [--backlog B] [--reconnects K] [--json]';
const BODY_BYTES = 200;
const UUID = 'bench-device-0001';
const STREAMS = ['temperature', 'humidity', 'pressure', 'vibration'] as const;
/** Longest a single drain may take before the run is reported as unmeasured. */
const RUN_TIMEOUT_MS = 90_000;

interface Args {
  messages: number;
  runs: number;
  backlog: number;
  reconnects: number;
  json: boolean;
}

function parse(argv: string[]): Args {
  // The agent's outbox holds settings.offline.maxQueueSize (100,000) messages by default.
  const maxQueue = defaultConfig().settings.offline.maxQueueSize;
  return benchArgs(argv, USAGE, {
    messages: { default: 100_000, min: 1000, max: maxQueue },
    runs: { default: 3, min: 1 },
    backlog: { default: 5000, min: 1, max: maxQueue },
    reconnects: { default: 5, min: 1 },
  });
}

const silent = createLogger({ level: 'silent', format: 'json', destination: new PassThrough() });
const config = defaultConfig();
const offline = config.settings.offline;
const topics = deviceTopics(UUID);

// ---- the messages ----

const SAMPLE_ID = '0'.repeat(36);
const SAMPLE_TS = 1_700_000_000_000;

/** The outbox payload of telemetry message `i`: what MqttSink turns into a 200-byte body. */
function telemetry(i: number): { stream: string; payload: Json } {
  const head = JSON.stringify({ id: SAMPLE_ID, ts: SAMPLE_TS, payload: { seq: i, v: '' } }).length;
  return { stream: STREAMS[i % STREAMS.length] as string, payload: { seq: i, v: 'x'.repeat(BODY_BYTES - head) } };
}

interface Prebuilt {
  id: string;
  topic: string;
  payload: Buffer;
}

/** Raw side: the same topics and bodies, built in memory before the clock starts. */
export function prebuild(n: number): Prebuilt[] {
  const ids = new IdGenerator();
  const out: Prebuilt[] = [];
  for (let i = 0; i < n; i++) {
    const t = telemetry(i);
    const id = ids.next();
    const body = JSON.stringify({ id, ts: Date.now(), payload: t.payload });
    if (body.length !== BODY_BYTES) throw new Error(`body of ${body.length} bytes, expected ${BODY_BYTES}`);
    out.push({ id, topic: topics.telemetry(t.stream), payload: Buffer.from(body) });
  }
  return out;
}

// ---- measuring ----

interface DrainRun {
  /** msg/s; null when the run did not finish. */
  rate: number | null;
  ms: number | null;
  /** CPU of this (node) process per message, µs. */
  cpuUsPerMsg: number | null;
  /** CPU of the broker per message, µs. */
  brokerCpuUsPerMsg: number | null;
  window?: number;
  enqueueMs?: number;
  commits?: number;
}

class CpuMeter {
  private readonly node = process.cpuUsage();
  private readonly broker: number | null;
  private readonly t0 = performance.now();
  constructor(private readonly b: BenchBroker) {
    this.broker = procCpuMs(b.pid());
  }
  finish(n: number): Pick<DrainRun, 'rate' | 'ms' | 'cpuUsPerMsg' | 'brokerCpuUsPerMsg'> {
    const ms = performance.now() - this.t0;
    const cpu = process.cpuUsage(this.node);
    const b1 = procCpuMs(this.b.pid());
    return {
      rate: (n / ms) * 1000,
      ms,
      cpuUsPerMsg: (cpu.user + cpu.system) / n,
      brokerCpuUsPerMsg: this.broker !== null && b1 !== null ? ((b1 - this.broker) * 1000) / n : null,
    };
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 15_000, everyMs = 2): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** (a) The limit: raw mqtt.js, messages from memory, a window of min(maxInflight, Receive Maximum). */
export async function rawRun(broker: BenchBroker, messages: Prebuilt[], clientId: string): Promise<DrainRun> {
  // mqtt-packet's number cache is one switch for the whole process, and the agent's session turns it
  // off (src/util/mqtt-packet-cache.ts; our client's writeCache: false turns it off again when it is
  // built). The baseline runs as mqtt.js does by default: with it (measured: 28-30k msg/s without it,
  // 44k with it, in this bench's rounds).
  mqttPacket.writeToStream.cacheNumbers = true;
  const client = connect(broker.url, {
    protocolVersion: 5,
    clientId,
    clean: false,
    properties: { sessionExpiryInterval: config.mqtt.sessionExpirySeconds },
    keepalive: config.mqtt.keepAliveSeconds,
    reconnectPeriod: 0,
  });
  try {
    const connack = await deadline(
      new Promise<IConnackPacket>((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
      }),
      10_000,
      'raw connect',
    );
    const window = Math.min(config.mqtt.maxInflight, connack.properties?.receiveMaximum ?? config.mqtt.maxInflight);
    const n = messages.length;
    const meter = new CpuMeter(broker);
    await deadline(publishWindowed(client, messages, window), RUN_TIMEOUT_MS, 'raw publish');
    return { ...meter.finish(n), window };
  } finally {
    await client.endAsync().catch(() => undefined);
  }
}

/** The agent's parts on one database, wired as agent.ts wires them. */
interface Agentish {
  store: Store;
  outbox: Outbox;
  session: MqttSession;
  flusher: Flusher;
  wakeup: Wakeup;
  /** Counts the messages the flusher's acks delete. */
  acks: AckCounter;
  /** Resolves with performance.now() of the first PUBACK of a queued (outbox) message. */
  firstPuback: Promise<number>;
  startSession(): void;
  startFlusher(): void;
  close(): Promise<void>;
}

function agentish(dbPath: string, broker: BenchBroker, clientId: string, opts: { tapPublish?: boolean } = {}): Agentish {
  const store = Store.open({ path: dbPath, logger: silent, clock: systemClock, migrations: MIGRATIONS, synchronous: config.store.synchronous, checkpoint: config.store.checkpoint });
  const flushers: Flusher[] = [];
  const outbox = defaultOutbox(store, silent, flushers);
  const monitor = new ConnectionMonitor({ clock: systemClock, offlineAfterFailures: offline.offlineAfterFailures, channels: ['mqtt'] });
  // No stagger: the wake-up is driven by the bench at the instant the broker's port opens (see the file comment).
  const wakeup = new Wakeup({ clock: systemClock, random: systemRandom, staggerMaxMs: 0 });
  const session = new MqttSession({
    config: { mqtt: { ...config.mqtt, url: broker.url, clientId }, uuid: UUID },
    store,
    monitor,
    backoff: backoffFromSettings(offline, { clock: systemClock, random: systemRandom }),
    wakeup,
    clock: systemClock,
    logger: silent,
  });
  // The first PUBACK of an outbox message, seen where MqttSink hears it (only when asked: it adds a
  // promise reaction per publish, which the throughput runs do without).
  let onFirst: (at: number) => void = () => undefined;
  const firstPuback = new Promise<number>((resolve) => (onFirst = resolve));
  const publisher = opts.tapPublish
    ? {
        topics: session.topics,
        publishMany: (reqs: readonly PublishRequest[]): Promise<PublishOutcome[]> =>
          Promise.all(
            reqs.map(async (req) => {
              const o = await session.publish(req);
              if (o.ok) onFirst(performance.now());
              return o;
            }),
          ),
      }
    : session;
  const acks = new AckCounter(outbox);
  const flusher = new Flusher({
    outbox: acks.view,
    sink: new MqttSink(publisher),
    monitor,
    retry: new RetryPolicy({ backoff: backoffFromSettings(offline, { clock: systemClock, random: systemRandom }), sleeper: wakeup, clock: systemClock }),
    clock: systemClock,
    logger: silent,
    ...flusherSettings(offline),
  });
  flushers.push(flusher);
  const controller = new AbortController();
  let sessionDone: Promise<void> | undefined;
  let flusherDone: Promise<void> | undefined;
  return {
    store,
    outbox,
    session,
    flusher,
    wakeup,
    firstPuback,
    acks,
    startSession() {
      sessionDone = session.start(controller.signal);
    },
    startFlusher() {
      flusherDone = flusher.run(controller.signal);
    },
    async close() {
      controller.abort();
      await flusherDone;
      await session.stop();
      await sessionDone;
      await outbox.close();
      store.close();
    },
  };
}

/** The outbox message of telemetry `i` (channel telemetry, `{ stream, payload }`). */
function queued(i: number): { channel: string; payload: Json } {
  return { channel: 'telemetry', payload: telemetry(i) as unknown as Json };
}

/** Called around the timed part of a run (a profiler started and stopped there sees only the drain). */
export interface TimedHooks {
  before?: () => Promise<void> | void;
  after?: () => Promise<void> | void;
}

/** (b) Ours: the outbox drained through Flusher + MqttSink + MqttSession. */
export async function oursRun(dir: string, broker: BenchBroker, n: number, tag: string, timed: TimedHooks = {}): Promise<DrainRun> {
  const a = agentish(join(dir, `ours-${tag}.db`), broker, `bench-ours-${tag}`);
  try {
    const c0 = a.outbox.stats().commits;
    const enqueueMs = await fillOutbox(a.outbox, n, queued);
    const commits = a.outbox.stats().commits - c0;
    if (a.outbox.stats().depth !== n) throw new Error(`the outbox holds ${a.outbox.stats().depth} messages, expected ${n}`);
    a.startSession();
    // Connected, and the birth message (sent first on every connect) acknowledged.
    await until('the session to connect', () => a.session.connected && a.session.stats().acknowledged >= 1 && a.session.stats().inflight === 0);
    const done = a.acks.all(n);
    await timed.before?.();
    const meter = new CpuMeter(broker);
    a.startFlusher();
    await deadline(done, RUN_TIMEOUT_MS, 'the drain');
    const measured = meter.finish(n);
    await timed.after?.();
    const st = a.flusher.stats();
    const depth = a.outbox.stats().depth;
    if (depth !== 0 || st.parked !== 0) throw new Error(`after the drain: depth ${depth}, parked ${st.parked}`);
    return { ...measured, enqueueMs, commits };
  } finally {
    await a.close();
  }
}

/**
 * Informational, to split the gap: MqttSession.publish of the pre-built messages from memory, no
 * outbox and no flusher, keeping as many publishes outstanding as the flusher does (flushMaxInflight
 * batches of flushBatchMessages) and passing no abort signal (the sink passes the flusher's).
 */
export async function sessionRun(dir: string, broker: BenchBroker, messages: Prebuilt[], tag: string): Promise<DrainRun> {
  const a = agentish(join(dir, `session-${tag}.db`), broker, `bench-session-${tag}`);
  try {
    a.startSession();
    await until('the session to connect', () => a.session.connected && a.session.stats().acknowledged >= 1 && a.session.stats().inflight === 0);
    const n = messages.length;
    const outstanding = offline.flushBatchMessages * offline.flushMaxInflight;
    const meter = new CpuMeter(broker);
    await deadline(
      new Promise<void>((resolve, reject) => {
        let next = 0;
        let done = 0;
        const sendOne = (): void => {
          const m = messages[next++] as Prebuilt;
          a.session.publish({ topic: m.topic, payload: m.payload, id: m.id }).then((o) => {
            if (!o.ok) return reject(new Error(`publish ${m.id}: ${o.reason}`));
            if (++done === n) return resolve();
            if (next < n) sendOne();
          }, reject);
        };
        for (let k = 0; k < Math.min(outstanding, n); k++) sendOne();
      }),
      RUN_TIMEOUT_MS,
      'session publish',
    );
    return meter.finish(n);
  } finally {
    await a.close();
  }
}

interface ReconnectRun {
  /** From the port accepting a TCP connection to the CONNACK ('connected'). */
  connectMs: number;
  /** From the port accepting to the first PUBACK of a queued message. */
  firstPubackMs: number;
  /** Sleepers the wake found (1: the session was in its backoff wait, as intended). */
  woken: number;
  /** Failed connection attempts before the broker came back. */
  failedAttempts: number;
}

/** (c) Broker down, messages queued; the broker comes back and the bench wakes the session as the probe would. */
async function reconnectRun(dir: string, broker: BenchBroker, backlog: number, tag: string): Promise<ReconnectRun> {
  await broker.stop();
  const a = agentish(join(dir, `reconnect-${tag}.db`), broker, `bench-reconnect-${tag}`, { tapPublish: true });
  try {
    await fillOutbox(a.outbox, backlog, queued);
    let connectedAt = NaN;
    a.session.once('connected', () => (connectedAt = performance.now()));
    a.startSession();
    a.startFlusher();
    // The first attempt is refused at once; the session then sleeps out its backoff on the Wakeup.
    await until('the session to wait out its backoff', () => a.session.stats().connectionFailures >= 1 && a.wakeup.sleeping >= 1);
    const failedAttempts = a.session.stats().connectionFailures;
    const backAt = await broker.start();
    // What the ConnectivityProbe does when its TCP connect succeeds.
    const woken = a.wakeup.wake('bench: broker port accepted a connection');
    const firstAt = await deadline(a.firstPuback, 30_000, 'the first PUBACK after the broker came back');
    return { connectMs: connectedAt - backAt, firstPubackMs: firstAt - backAt, woken, failedAttempts };
  } finally {
    await a.close();
    if (!broker.pid()) await broker.start();
  }
}

const UNMEASURED: DrainRun = { rate: null, ms: null, cpuUsPerMsg: null, brokerCpuUsPerMsg: null };

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const dir = mkdtempSync(join(tmpdir(), 'iotistic-bench-mqtt-'));
  const log = (line: string): void => console.error(line);
  const started = performance.now();
  log(`mqtt benchmark in ${dir}`);
  const broker = await startBroker({ maxInflight: config.mqtt.maxInflight });
  log(`mosquitto on ${broker.url} (max_inflight_messages ${config.mqtt.maxInflight}, persistence off)`);
  // A run that fails is reported as unmeasured (and so cannot meet a target), not retried.
  const attempt = async <T>(what: string, run: () => Promise<T>, failed: T): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      log(`  ${what} FAILED: ${err instanceof Error ? err.message : String(err)}`);
      return failed;
    }
  };
  try {
    log('warm-up: 5,000 messages each way ...');
    const warm = prebuild(5_000);
    await rawRun(broker, warm, 'bench-raw-warmup');
    await sessionRun(dir, broker, warm, 'warmup');
    await oursRun(dir, broker, 5_000, 'warmup');

    const raws: DrainRun[] = [];
    const sessions: DrainRun[] = [];
    const ours: DrainRun[] = [];
    const pairRatios: number[] = [];
    const cpuRatios: number[] = [];
    for (let r = 0; r < a.runs; r++) {
      const messages = prebuild(a.messages);
      const cases = {
        raw: () => attempt('raw', () => rawRun(broker, messages, `bench-raw-${r}`), UNMEASURED),
        session: () => attempt('session', () => sessionRun(dir, broker, messages, String(r)), UNMEASURED),
        ours: () => attempt('ours', () => oursRun(dir, broker, a.messages, String(r)), UNMEASURED),
      };
      // Alternating order: raw first in even rounds, ours first in odd ones.
      const order = r % 2 === 0 ? (['raw', 'session', 'ours'] as const) : (['ours', 'session', 'raw'] as const);
      const got: Partial<Record<keyof typeof cases, DrainRun>> = {};
      for (const k of order) {
        log(`round ${r + 1}/${a.runs}: ${k}, ${cell(a.messages)} messages ...`);
        got[k] = await cases[k]();
      }
      const raw = got.raw ?? UNMEASURED;
      const our = got.ours ?? UNMEASURED;
      raws.push(raw);
      sessions.push(got.session ?? UNMEASURED);
      ours.push(our);
      if (raw.rate !== null && our.rate !== null) pairRatios.push(our.rate / raw.rate);
      if (raw.cpuUsPerMsg !== null && our.cpuUsPerMsg !== null) cpuRatios.push(our.cpuUsPerMsg / raw.cpuUsPerMsg);
      log(`  raw ${cell(raw.rate)} msg/s, session alone ${cell(got.session?.rate)} msg/s, ours ${cell(our.rate)} msg/s`);
    }

    const reconnects: ReconnectRun[] = [];
    for (let k = 0; k < a.reconnects; k++) {
      log(`reconnect ${k + 1}/${a.reconnects}: ${cell(a.backlog)} queued, broker stopped, then started ...`);
      const r = await attempt('reconnect', () => reconnectRun(dir, broker, a.backlog, String(k)), null);
      if (r) reconnects.push(r);
    }

    const med = (runs: DrainRun[], key: 'rate' | 'cpuUsPerMsg' | 'brokerCpuUsPerMsg' | 'enqueueMs'): number | null =>
      runs.some((x) => x[key] === null || x[key] === undefined) ? null : median(runs.map((x) => x[key] as number));
    const rawRate = med(raws, 'rate');
    const sessionRate = med(sessions, 'rate');
    const ourRate = med(ours, 'rate');
    // Every round must have both sides for the ratio to count.
    const pair = pairRatios.length === a.runs ? median(pairRatios) : null;
    const cpuPair = cpuRatios.length === a.runs ? median(cpuRatios) : null;
    const reconnected = reconnects.length === a.reconnects;
    const connectMs = reconnected ? median(reconnects.map((x) => x.connectMs)) : null;
    const firstMs = reconnected ? median(reconnects.map((x) => x.firstPubackMs)) : null;
    const unwoken = reconnects.filter((x) => x.woken < 1).length;
    const window = raws.find((x) => x.window !== undefined)?.window ?? null;
    const two = (v: number | null): number | null => (v === null ? null : Math.round(v * 100) / 100);
    const results: BenchResult[] = [
      { name: 'raw_mqtt_publish_qos1', value: rawRate === null ? null : Math.round(rawRate), unit: 'msg/s' },
      { name: 'session_publish_qos1', value: sessionRate === null ? null : Math.round(sessionRate), unit: 'msg/s' },
      { name: 'drain_mqtt_qos1', value: ourRate === null ? null : Math.round(ourRate), unit: 'msg/s' },
      { name: 'raw_mqtt_cpu_per_msg', value: two(med(raws, 'cpuUsPerMsg')), unit: 'us' },
      { name: 'session_cpu_per_msg', value: two(med(sessions, 'cpuUsPerMsg')), unit: 'us' },
      { name: 'drain_mqtt_cpu_per_msg', value: two(med(ours, 'cpuUsPerMsg')), unit: 'us' },
      { name: 'raw_mqtt_broker_cpu_per_msg', value: two(med(raws, 'brokerCpuUsPerMsg')), unit: 'us' },
      { name: 'drain_mqtt_broker_cpu_per_msg', value: two(med(ours, 'brokerCpuUsPerMsg')), unit: 'us' },
      { name: 'reconnect_to_connack', value: two(connectMs), unit: 'ms' },
      { name: 'reconnect_to_first_puback', value: two(firstMs), unit: 'ms' },
    ];
    const ratios = {
      drain_vs_raw_mqtt: ratio(pair, 1),
      drain_cpu_per_msg_vs_raw_mqtt: ratio(cpuPair, 1),
      session_vs_raw_mqtt: ratio(sessionRate, rawRate),
      drain_vs_session: ratio(ourRate, sessionRate),
    };
    const report: BenchReport = {
      benchmark: 'mqtt',
      machine: machine(),
      config: {
        messages: a.messages,
        runs: a.runs,
        bodyBytes: BODY_BYTES,
        topics: `iot/${UUID}/telemetry/{${STREAMS.join(',')}}`,
        qos: 1,
        protocolVersion: config.mqtt.protocolVersion,
        window,
        brokerMaxInflight: config.mqtt.maxInflight,
        flushBatchMessages: offline.flushBatchMessages,
        flushBatchBytes: offline.flushBatchBytes,
        flushMaxInflight: offline.flushMaxInflight,
        storeSynchronous: config.store.synchronous,
        inflightDurability: 'process',
        sinkHeldByCaller: true,
        storeCheckpoint: config.store.checkpoint,
        reconnectBacklog: a.backlog,
        reconnects: a.reconnects,
        reconnectWake: 'the bench calls Wakeup.wake() when the broker port first accepts a TCP connection, as the ConnectivityProbe does on a successful probe; the probe is not run (no probe schedule) and the Wakeup has no stagger',
        broker: broker.url,
        dir,
      },
      results,
      ratios,
      // Issue 22's targets (issue 5 asked 0.7 of the raw rate).
      targets: {
        drain_vs_raw_mqtt: target('>=', 0.9, ratios.drain_vs_raw_mqtt),
        drain_cpu_per_msg_vs_raw_mqtt: target('<=', 1.2, ratios.drain_cpu_per_msg_vs_raw_mqtt),
      },
    };
    const perRound = (runs: DrainRun[]): string => runs.map((x) => cell(x.rate)).join(', ');
    const cpu = (runs: DrainRun[]): string => `node CPU ${cell(med(runs, 'cpuUsPerMsg'), 1)} µs/msg`;
    const rows = [
      [
        'raw mqtt.js QoS 1 (the limit)',
        cell(rawRate),
        'msg/s',
        `median of ${a.runs} (${perRound(raws)}); window ${window ?? '-'}; ${cpu(raws)}, broker ${cell(med(raws, 'brokerCpuUsPerMsg'), 1)} µs/msg`,
      ],
      [
        'session alone (informational)',
        cell(sessionRate),
        'msg/s',
        `median of ${a.runs} (${perRound(sessions)}); MqttSession.publish from memory, SQLite in-flight store; ${cpu(sessions)}`,
      ],
      [
        'ours: outbox -> flusher -> session',
        cell(ourRate),
        'msg/s',
        `median of ${a.runs} (${perRound(ours)}); ${cpu(ours)}, broker ${cell(med(ours, 'brokerCpuUsPerMsg'), 1)} µs/msg; enqueue before (untimed) ${cell(med(ours, 'enqueueMs'))} ms`,
      ],
      ['ours / raw', cell(pair, 3), '', `median of the per-round ratios (${pairRatios.map((x) => cell(x, 3)).join(', ')})`],
      ['ours / raw, node CPU per message', cell(cpuPair, 3), '', `median of the per-round ratios (${cpuRatios.map((x) => cell(x, 3)).join(', ')})`],
      ['session alone / raw', cell(ratios.session_vs_raw_mqtt, 3), '', 'medians; informational'],
      [
        'broker back -> CONNACK',
        cell(connectMs, 1),
        'ms',
        `median of ${a.reconnects} (${reconnects.map((x) => cell(x.connectMs, 1)).join(', ')})`,
      ],
      [
        'broker back -> first PUBACK',
        cell(firstMs, 1),
        'ms',
        `median of ${a.reconnects} (${reconnects.map((x) => cell(x.firstPubackMs, 1)).join(', ')}); ${cell(a.backlog)} queued; wake at port open, no stagger${unwoken ? `; ${unwoken} wake(s) found the session not sleeping` : ''}`,
      ],
    ];
    console.log(
      [
        table(['case', 'value', 'unit', 'notes'], rows),
        '',
        table(
          ['target', 'want', 'value', 'met'],
          Object.entries(report.targets).map(([k, t]) => [k, t.want, cell(t.value, 3), t.met ? 'yes' : 'NO']),
        ),
      ].join('\n'),
    );
    log(`done in ${cell((performance.now() - started) / 1000, 1)} s`);
    if (a.json) console.log(jsonLine(report));
  } finally {
    await broker.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

// Run as a program (not when imported, e.g. by a profiling script).
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
