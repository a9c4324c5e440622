import { appendFileSync } from 'node:fs';
import { FaultProxy } from '../devcloud/fault-proxy.js';
import { startMosquitto, type Mosquitto } from '../devcloud/mosquitto.js';
import { DEVICE_PREFIX } from '../devcloud/device-api.js';
import { startDevCloud, type DevCloud, type DeviceRequestEvent } from '../devcloud/server.js';

/**
 * The world a real fleet runs in (bench/fleet-real.ts): the devcloud's device API behind one TCP
 * fault proxy, a private Mosquitto behind one fault proxy per device (so the broker side sees which
 * device a connection is), and the clock on the cloud side: every device request as it arrives and
 * as it is answered, every CONNACK each device receives. Outages of three kinds, on either channel:
 * - `refused`: connections refused by the kernel (the endpoint's host is up, nothing listens);
 * - `hang`: connections accepted and never answered, current ones go silent (a proxy whose backend
 *   hangs; a userspace proxy cannot drop SYNs, so this is the model's `hang`, not its `blackhole`):
 *   each attempt costs the agent its timeout, and what is still open at the end is reset;
 * - `503`: a load balancer in front accepts while its backend is down: HTTP requests are answered
 *   503 at once; MQTT connections are accepted and closed (the broker behind is stopped).
 */

export type OutageKind = 'refused' | 'hang' | '503';
export type Channel = 'http' | 'mqtt';
export const OUTAGE_KINDS: readonly OutageKind[] = ['refused', 'hang', '503'];

export interface FleetWorld {
  devcloud: DevCloud;
  /** The device API's URL through the proxy (the agents' `cloud.apiUrl`). */
  apiUrl: string;
  /** The broker URL of device `i` (its own proxy). */
  mqttUrl(i: number): string;
  start(kind: OutageKind, channels: readonly Channel[]): Promise<void>;
  /**
   * Ends the outage; resolves with the `performance.now()` at which each channel's endpoint began to
   * come back (taken before it is restored: an answer while the rest is restored counts as back).
   */
  end(): Promise<Record<Channel, number>>;
  /**
   * Device requests per second at the cloud, per whole second of `performance.now()`: all of them, or
   * only the target-state polls, which is what the model's poll loop stands for.
   */
  requestsPerSecond(fromMs: number, toMs: number, only?: 'polls'): number[];
  /**
   * The first instant ≥ `sinceMs` each device was answered below 500 (HTTP: any request, or with
   * `polls` its target-state poll only) or got a CONNACK (MQTT).
   */
  backOnline(channel: Channel, sinceMs: number, only?: 'polls'): Map<number, number>;
  close(): Promise<void>;
}

/** The route of the target-state poll (src/cloud/target-state.ts), the model's poll loop. */
const POLL_ROUTE = `${DEVICE_PREFIX}/state`;

interface Seen {
  /** performance.now() of each request arrival, and of each target-state poll's. */
  arrivals: number[];
  polls: number[];
  /** Per device index: instants of answers below 500, to any request and to the polls. */
  httpOk: Map<number, number[]>;
  pollOk: Map<number, number[]>;
  /** Per device index: instants of CONNACKs. */
  connacks: Map<number, number[]>;
}

function push(m: Map<number, number[]>, k: number, v: number): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/** Starts the devcloud, the broker and the proxies for `devices` devices named by `uuidOf(i)`. */
export async function startFleetWorld(devices: number, uuidOf: (i: number) => string): Promise<FleetWorld> {
  const seen: Seen = { arrivals: [], polls: [], httpOk: new Map(), pollOk: new Map(), connacks: new Map() };
  const index = new Map<string, number>();
  for (let i = 0; i < devices; i++) index.set(uuidOf(i), i);
  // IOTISTIC_FLEET_TRACE=FILE writes every device request (arrival and answer) and outage edge there, one JSON line each, on the wall clock of the agents' logs.
  const traceFile = process.env.IOTISTIC_FLEET_TRACE;
  const trace = (line: Record<string, unknown>): void => {
    if (traceFile) appendFileSync(traceFile, `${JSON.stringify({ time: Date.now(), ...line })}\n`);
  };
  const observe = (e: DeviceRequestEvent): void => {
    const at = performance.now();
    const poll = e.method === 'GET' && e.route === POLL_ROUTE;
    trace({ device: e.uuid === undefined ? null : (index.get(e.uuid) ?? null), method: e.method, route: e.route, phase: e.phase, ...(e.status !== undefined ? { status: e.status } : {}) });
    if (e.phase === 'request') {
      seen.arrivals.push(at);
      if (poll) seen.polls.push(at);
    } else if (e.uuid !== undefined && (e.status ?? 500) < 500) {
      const i = index.get(e.uuid);
      if (i === undefined) return;
      push(seen.httpOk, i, at);
      if (poll) push(seen.pollOk, i, at);
    }
  };
  const devcloud = await startDevCloud({ observe });
  const broker = await startMosquitto({ maxQueued: 10_000 });
  const http = await FaultProxy.start({ target: { host: '127.0.0.1', port: devcloud.port } });
  const mqtt: FaultProxy[] = [];
  for (let i = 0; i < devices; i++) {
    mqtt.push(await FaultProxy.start({ target: { host: broker.host, port: broker.port }, onFrame: (f) => f.direction === 'down' && f.type === 2 && push(seen.connacks, i, performance.now()) }));
  }
  let active: { kind: OutageKind; channels: readonly Channel[] } | undefined;
  return {
    devcloud,
    apiUrl: `http://127.0.0.1:${http.port}`,
    mqttUrl: (i) => `mqtt://127.0.0.1:${(mqtt[i] as FaultProxy).port}`,
    async start(kind, channels) {
      if (active) throw new Error('an outage is already under way');
      active = { kind, channels };
      trace({ outage: 'start', kind, channels });
      if (channels.includes('http')) await startHttp(kind, http, devcloud);
      if (channels.includes('mqtt')) await startMqtt(kind, mqtt, broker);
    },
    async end() {
      const back: Record<Channel, number> = { http: performance.now(), mqtt: performance.now() };
      if (!active) return back;
      const { kind, channels } = active;
      active = undefined;
      // A connection that hung is reset when the way returns (the proxy that held it has no backend for it).
      if (channels.includes('http')) {
        back.http = performance.now();
        if (kind === 'hang') http.cut();
        http.pass();
        await http.listenAgain();
        if (kind === '503') await devcloud.admin.setFaults({ throttle: null });
      }
      if (channels.includes('mqtt')) {
        back.mqtt = performance.now();
        for (const p of mqtt) {
          if (kind === 'hang') p.cut();
          p.pass();
          await p.listenAgain();
        }
        if (kind === '503') await broker.start();
      }
      trace({ outage: 'end', kind, channels });
      return back;
    },
    requestsPerSecond(fromMs, toMs, only) {
      const buckets = new Array<number>(Math.max(0, Math.ceil((toMs - fromMs) / 1000))).fill(0);
      for (const at of only === 'polls' ? seen.polls : seen.arrivals) {
        const b = Math.floor((at - fromMs) / 1000);
        if (at >= fromMs && at < toMs) buckets[b] = (buckets[b] ?? 0) + 1;
      }
      return buckets;
    },
    backOnline(channel, sinceMs, only) {
      const out = new Map<number, number>();
      for (const [i, list] of channel === 'mqtt' ? seen.connacks : only === 'polls' ? seen.pollOk : seen.httpOk) {
        const first = list.find((t) => t >= sinceMs);
        if (first !== undefined) out.set(i, first);
      }
      return out;
    },
    async close() {
      await http.close();
      for (const p of mqtt) await p.close();
      await broker.dispose();
      await devcloud.close();
    },
  };
}

async function startHttp(kind: OutageKind, http: FaultProxy, devcloud: DevCloud): Promise<void> {
  if (kind === 'refused') {
    await http.stopListening();
    http.cut();
  } else if (kind === 'hang') http.blackhole('both', { newConnections: true });
  else await devcloud.admin.setFaults({ throttle: { status: 503 } });
}

async function startMqtt(kind: OutageKind, proxies: FaultProxy[], broker: Mosquitto): Promise<void> {
  if (kind === '503') {
    // The proxies stay up (the load balancer); the broker behind them goes.
    await broker.kill();
    for (const p of proxies) p.cut();
    return;
  }
  for (const p of proxies) {
    if (kind === 'refused') {
      await p.stopListening();
      p.cut();
    } else p.blackhole('both', { newConnections: true });
  }
}
