import { logServices, type LogsView } from './logs-route.js';

/**
 * What the dashboard shows, in one JSON value (`GET /v2/dashboard/stream` sends it): the same views
 * as the API's routes, plus what only the stream keeps: the outbox depth per channel over the last
 * hour (a ring of samples) and the recent events (changes seen between two snapshots).
 */

/** One depth sample: when (epoch ms) and the depth of each channel then. */
export interface DepthSample {
  t: number;
  depths: Record<string, number>;
}

/** A ring of the latest `size` samples, oldest first. */
export class DepthRing {
  private readonly ring: DepthSample[] = [];

  constructor(private readonly size: number) {}

  add(sample: DepthSample): void {
    this.ring.push(sample);
    if (this.ring.length > this.size) this.ring.splice(0, this.ring.length - this.size);
  }

  samples(): DepthSample[] {
    return this.ring.slice();
  }
}

/** A change the stream saw: when, what kind, what it says. */
export interface DashboardEvent {
  at: number;
  kind: 'connection' | 'channel' | 'service' | 'job' | 'config';
  text: string;
}

/** The values the events are diffed from: a small summary, so a clock tick (uptime, ages) is no change. */
export interface Facts {
  status: string;
  channels: Record<string, string>;
  services: Record<string, string>;
  jobs: Record<string, string>;
  fallback: string | null;
  depths: Record<string, number>;
  logLines: number;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string => (typeof v === 'string' ? v : v == null ? '' : JSON.stringify(v));

/** Per channel its depth, from a `/v2/queue` answer. */
export function queueDepths(queue: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, ch] of Object.entries(obj(obj(queue).channels))) {
    const d = obj(ch).depth;
    out[name] = typeof d === 'number' ? d : 0;
  }
  return out;
}

/** The facts of a snapshot, read defensively: the views are typed `unknown` at the API. */
export function factsOf(s: DashboardSnapshot): Facts {
  const conn = obj(s.connection);
  const channels: Record<string, string> = {};
  for (const [n, ch] of Object.entries(obj(conn.channels))) channels[n] = str(obj(ch).status);
  const services: Record<string, string> = {};
  for (const [app, a] of Object.entries(obj(obj(obj(s.state).current).apps))) {
    for (const [svc, st] of Object.entries(obj(obj(a).services))) services[`${app}/${svc}`] = str(obj(st).status);
  }
  const jobs: Record<string, string> = {};
  for (const j of arr(obj(s.jobs).recent)) jobs[`${str(obj(j).type)} ${str(obj(j).id)}`] = str(obj(j).status);
  const fb = obj(obj(obj(s.state).config).fallback);
  const logLines = arr(obj(s.logs).services).reduce<number>((n, x) => n + Number(obj(x).lines ?? 0), 0);
  return { status: str(conn.status), channels, services, jobs, fallback: typeof fb.message === 'string' ? fb.message : null, depths: queueDepths(s.queue), logLines };
}

function changed(kind: DashboardEvent['kind'], label: string, a: Record<string, string>, b: Record<string, string>, at: number): DashboardEvent[] {
  const out: DashboardEvent[] = [];
  for (const [k, v] of Object.entries(b)) {
    const was = a[k];
    if (was === undefined) out.push({ at, kind, text: `${label} ${k}: ${v}` });
    else if (was !== v) out.push({ at, kind, text: `${label} ${k}: ${was} → ${v}` });
  }
  for (const k of Object.keys(a)) if (!(k in b) && kind === 'service') out.push({ at, kind, text: `${label} ${k}: removed` });
  return out;
}

/** What changed from `a` to `b` (none the first time: there is nothing to compare with). */
export function diffFacts(a: Facts | undefined, b: Facts, at: number): DashboardEvent[] {
  if (!a) return [];
  const out: DashboardEvent[] = [];
  if (a.status !== b.status) out.push({ at, kind: 'connection', text: `connection ${a.status} → ${b.status}` });
  out.push(...changed('channel', 'channel', a.channels, b.channels, at));
  out.push(...changed('service', 'service', a.services, b.services, at));
  out.push(...changed('job', 'job', a.jobs, b.jobs, at));
  if (a.fallback !== b.fallback) out.push({ at, kind: 'config', text: b.fallback ? `config fallback: ${b.fallback}` : 'config: the file is in force again' });
  return out;
}

/** Two facts that would render the same page (ages aside). */
export function sameFacts(a: Facts | undefined, b: Facts): boolean {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}

/** What a snapshot reads (the ApiView has it all; named here so that server.ts and this file do not import each other). */
export interface DashboardView {
  version: string;
  uuid: string;
  hasCloud: boolean;
  loops(): unknown;
  connection(): unknown;
  state(): unknown;
  queue(): unknown;
  jobs(): unknown;
  shadow?: { get(): unknown } | undefined;
  logs(): LogsView;
}

export interface DashboardSnapshot {
  at: number;
  device: { uuid: string; version: string };
  /** False in local mode (no cloud.apiUrl): the page says "local mode", not online or offline. */
  hasCloud: boolean;
  connection: unknown;
  state: unknown;
  queue: unknown;
  jobs: unknown;
  shadow: unknown;
  loops: unknown;
  logs: unknown;
  depth: { everyMs: number; samples: DepthSample[] };
  events: DashboardEvent[];
}

/**
 * Reads every view once; the outbox's parked messages (payloads) stay out: the page shows their
 * count. Without `withLogs` the log tail is not read (a sample taken while no page is open).
 */
export function takeSnapshot(view: DashboardView, at: number, depth: DashboardSnapshot['depth'], events: DashboardEvent[], withLogs = true): DashboardSnapshot {
  const { parkedMessages: _parked, ...queue } = obj(view.queue());
  return {
    at,
    device: { uuid: view.uuid, version: view.version },
    hasCloud: view.hasCloud,
    connection: view.connection(),
    state: view.state(),
    queue,
    jobs: view.jobs(),
    shadow: view.shadow ? view.shadow.get() : null,
    loops: view.loops(),
    logs: withLogs ? logServices(view.logs(), 5) : null,
    depth,
    events,
  };
}
