/** Renders `iotistic-agent status` as a readable table. */
import { formatIssue, type ConfigIssue } from './config/issues.js';

export interface StatusInput {
  device: { uuid: string; version: string };
  connection: {
    status: string;
    uptime: number;
    offlineSince: number | null;
    lastPollSuccess: number;
    lastReportSuccess: number;
    pollFailures: number;
    reportFailures: number;
    channels: Record<string, { status: string; consecutiveFailures: number; lastError: string | null; lastFailureKind?: string | null; offlineSince?: number | null; lastSuccess?: Record<string, number> }>;
    outages: { start: number; end: number | null; durationMs: number | null; cause: string }[];
    degradation?: { mode: string; reason?: string | null; features?: { name: string; order: number; paused: boolean; error?: string }[] };
    clock?: { synced: boolean; source: string; detail: string };
    link?: LinkInput;
    mqtt?: { connected: boolean; broker?: string; brokerIndex?: number; brokers?: number; inflight: number; queued: number; reconnects: number; lastError: string | null; sessionPresent: boolean | null; protocol?: { setting: string | number; version: number; negotiated: boolean } } | null;
  };
  state: {
    config?: ConfigStatusInput;
    mode: string;
    target: { version: number | null; source: string; receivedAt: number } | null;
    lastRejection: { message: string } | null;
    lastPollError: string | null;
    database?: DatabaseInput;
    registration?: { state: string; reason?: string; lastError?: string | null } | null;
    lifecycle?: LifecycleInput | null;
    missingImages?: { image: string; services: string[]; lastError: string | null }[];
    current?: { status?: string; apps?: Record<string, { services: Record<string, { status: string; restarts?: number; lastError?: string }> }> };
  };
  loops: { name: string; state: string; restarts: number; lastError: string | null }[];
  queue?: {
    depth: number;
    bytes: number;
    oldestAgeMs: number;
    channels: Record<
      string,
      { depth: number; bytes: number; oldestAgeMs: number; delivered: number; dropped: number; expired: number; parked: number; drops?: Record<string, number> }
    >;
    dataDisk?: { state: string; dataDir: string; freeBytes: number | null } | null;
    ledger?: { balanced: boolean; channels: Record<string, { accepted: number; unaccounted: number }> };
  };
  jobs?: {
    enabled: boolean;
    reason?: string;
    running: { id: string; type: string } | null;
    counts: Record<string, number> | null;
    recent: { id: string; type: string; status: string; finishedAt: number | null }[];
  };
  shadow?: {
    reportedVersion: number;
    desiredVersion: number | null;
    delta: Record<string, unknown>;
    overrides: Record<string, unknown> | null;
    conflicts: unknown[];
  } | null;
}

interface LinkInput {
  interface: string | null;
  metered: boolean;
  budget: { period: string; limitBytes: number; usedBytes: number; resetsAt: number; exhausted: boolean };
  held: Record<string, number>;
}

/** "wwan0 (metered): 180.2 KiB of 200.0 KiB this month, resets 2027-01-01 00:00:00Z; held: telemetry 812, metrics 3" */
export function linkLine(l: LinkInput): string {
  const b = l.budget;
  const span = b.period === 'day' ? 'today' : `this ${b.period}`;
  const use = b.limitBytes > 0 ? `${bytes(b.usedBytes)} of ${bytes(b.limitBytes)} ${span}${b.exhausted ? ' (spent)' : ''}` : `${bytes(b.usedBytes)} ${span}, no cap`;
  const held = Object.entries(l.held).map(([c, n]) => `${c} ${n}`);
  const where = `${l.interface ?? 'no route'}${l.metered ? ' (metered)' : ''}`;
  return `${where}: ${use}, resets ${when(b.resetsAt)}${held.length > 0 ? `; held: ${held.join(', ')}` : ''}`;
}

interface ConfigStatusInput {
  source: string;
  file: string | null;
  fallback: {
    message: string;
    issues: ConfigIssue[];
    issueCount: number;
    lastKnownGoodAgeMs: number;
  } | null;
}

/** A fallback to the last-known-good config is the first thing shown: what runs is not what the file says. */
function configWarning(c: ConfigStatusInput | undefined): string[] {
  if (!c?.fallback) return [];
  const f = c.fallback;
  const more = f.issueCount > f.issues.length ? [`    ... and ${f.issueCount - f.issues.length} more (GET /v2/config)`] : [];
  return [
    '',
    `!! CONFIG FALLBACK: ${f.message} (${duration(f.lastKnownGoodAgeMs)} ago).`,
    '!! Changes in the file are NOT in force. Fix it (iotistic-agent config check) and restart. Issues:',
    ...f.issues.map((i) => `    - ${formatIssue(i)}`),
    ...more,
  ];
}

interface DatabaseInput {
  quarantine: {
    quarantinedTo: string;
    at: string;
    reason: string;
    recovered: number;
    lost: number;
    unknownLoss: string[];
    salvageError: string | null;
    tables: Record<string, { recovered: number; lost: number | null }>;
  } | null;
  quarantinedThisStart: boolean;
  integrity: { state: string; detail: string | null; ms: number | null };
  salvagePending: string | null;
}

/** The Database block: the integrity check, a pending salvage, and the last quarantine with its counts. */
function databaseSection(d: DatabaseInput): string[] {
  const check = d.integrity.state === 'ok' && d.integrity.ms !== null ? `ok (${(d.integrity.ms / 1000).toFixed(1)}s)` : d.integrity.state;
  const rows: [string, string][] = [['integrity check', `${check}${d.integrity.detail && d.integrity.state !== 'ok' ? `  ${d.integrity.detail}` : ''}`]];
  if (d.salvagePending) rows.push(['CORRUPT', `${d.salvagePending}; quarantined and salvaged at the next start`]);
  const q = d.quarantine;
  if (q) {
    const lost = `${q.lost} lost${q.unknownLoss.length > 0 ? ` (+ unknown in ${q.unknownLoss.join(', ')})` : ''}`;
    rows.push(['quarantined', `${q.at.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}${d.quarantinedThisStart ? ' (this start)' : ''}  ${q.reason}`]);
    rows.push(['moved to', q.quarantinedTo]);
    rows.push(['salvaged', q.salvageError ?? `${q.recovered} rows recovered, ${lost}`]);
    for (const [name, t] of Object.entries(q.tables)) {
      if (t.recovered > 0 || t.lost !== 0) rows.push([`  ${name}`, `${t.recovered} recovered, ${t.lost ?? 'unknown'} lost`]);
    }
  }
  return ['', 'Database', table(rows)];
}

export function when(ms: number | null | undefined): string {
  if (!ms) return '-';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function duration(ms: number | null | undefined): string {
  if (ms == null) return '-';
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${(s / 3600).toFixed(1)}h`;
  return `${(s / 86_400).toFixed(1)}d`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1_048_576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1_048_576).toFixed(1)} MiB`;
}

function table(rows: [string, string][]): string {
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n');
}

export function renderStatus(s: StatusInput, key?: string): string {
  const out: string[] = [`Iotistic Agent ${s.device.version}  device ${s.device.uuid}`, ...configWarning(s.state.config)];
  out.push(...connectionSection(s.connection), ...targetSection(s.state));
  if (s.state.database) out.push(...databaseSection(s.state.database));
  out.push(...servicesSection(s.state));
  if (s.queue) out.push(...outboxSection(s.queue));
  if (s.jobs) out.push(...jobsSection(s.jobs));
  if (s.shadow !== undefined) out.push(...shadowSection(s.shadow));
  out.push('', 'Loops', table(s.loops.map((l) => [l.name, `${l.state}${l.restarts ? ` (${l.restarts} restarts, last: ${l.lastError ?? '?'})` : ''}`])));
  if (key) out.push('', `Local API key: ${key}`);
  return `${out.join('\n')}\n`;
}

/** "degraded: offline for 312 s (threshold 300 s); paused: metrics, jobs, shadow" */
export function degradationLine(d: StatusInput['connection']['degradation']): string {
  if (!d) return 'normal';
  const paused = (d.features ?? []).filter((f) => f.paused).map((f) => `${f.name}${f.error ? ` (${f.error})` : ''}`);
  const reason = d.mode === 'degraded' && d.reason ? `: ${d.reason}` : '';
  return `${d.mode}${reason}${paused.length > 0 ? `; paused: ${paused.join(', ')}` : ''}`;
}

function connectionSection(c: StatusInput['connection']): string[] {
  const out = [
    '',
    'Connection',
    table([
      ['status', c.status],
      ['uptime', duration(c.uptime)],
      ['offline since', when(c.offlineSince)],
      ['last poll', when(c.lastPollSuccess)],
      ['last report', when(c.lastReportSuccess)],
      ['failures', `poll ${c.pollFailures}, report ${c.reportFailures}`],
      ['degradation', degradationLine(c.degradation)],
      ...(c.link ? [['link', linkLine(c.link)] as [string, string]] : []),
      ...(c.clock ? [['clock', `${c.clock.synced ? 'synced' : 'NOT synced'} (${c.clock.detail})`] as [string, string]] : []),
    ]),
  ];
  const channels = Object.entries(c.channels);
  if (channels.length > 0) {
    out.push('', 'Channels');
    out.push(table(channels.map(([n, ch]) => [n, `${ch.status}${ch.consecutiveFailures ? ` (${ch.consecutiveFailures} failures)` : ''}${ch.lastError ? `  ${ch.lastError}` : ''}`])));
  }
  if (c.mqtt) {
    const m = c.mqtt;
    out.push('', 'MQTT session');
    out.push(
      table([
        ['connected', `${m.connected ? 'yes' : 'no'}${m.sessionPresent ? ' (session resumed)' : ''}`],
        ...(m.broker ? [['broker', `${m.broker}${(m.brokers ?? 1) > 1 ? (m.brokerIndex === 0 ? ' (preferred)' : ` (${(m.brokerIndex ?? 0) + 1} of ${m.brokers ?? 1})`) : ''}`] as [string, string]] : []),
        ['in flight', `${m.inflight} unacknowledged, ${m.queued} waiting`],
        ['reconnects', String(m.reconnects)],
        ...(m.protocol ? [['protocol', `MQTT ${m.protocol.version === 5 ? '5' : '3.1.1'}${m.protocol.negotiated ? '' : ' (trying)'}${m.protocol.setting === 'auto' ? ' (auto)' : ' (forced)'}`] as [string, string]] : []),
        ['last error', m.lastError ?? '-'],
      ]),
    );
  }
  if (c.outages.length > 0) {
    out.push('', 'Recent outages');
    out.push(table(c.outages.slice(0, 5).map((o) => [when(o.start), `${o.end ? duration(o.durationMs) : 'ongoing'}  ${o.cause}`])));
  }
  return out;
}

function targetSection(state: StatusInput['state']): string[] {
  const t = state.target;
  return [
    '',
    'Target state',
    table([
      ['config', state.config ? `${state.config.source}${state.config.file ? ` (${state.config.file})` : ''}` : '-'],
      ['mode', state.mode],
      ['version', t?.version != null ? String(t.version) : '-'],
      ['source', t?.source ?? '-'],
      ['received', when(t?.receivedAt)],
      ['last rejection', state.lastRejection?.message ?? '-'],
      ['last poll error', state.lastPollError ?? '-'],
      ...(state.registration ? [['registration', registrationLine(state.registration)] as [string, string]] : []),
      ...(state.lifecycle ? [['release', releaseLine(state.lifecycle)] as [string, string]] : []),
      ...(state.lifecycle?.trial || state.lifecycle?.lastOutcome ? [['update', updateLine(state.lifecycle)] as [string, string]] : []),
    ]),
  ];
}

/** Self-update's state as /v2/state shows it (src/lifecycle/view.ts). */
export interface LifecycleInput {
  version: string;
  launched: boolean;
  release: string | null;
  previous: string | null;
  trial: { kind: string; from: string; to: string; startedAt: number; deadline: number; attempts: number } | null;
  lastOutcome: { jobId: string; status: string; at: number; reason: string | null } | null;
}

/** "0.2.0 from releases/0.2.0-ab12 (previous 0.1.0-cd34), under the launcher". */
export function releaseLine(l: LifecycleInput): string {
  const from = l.release ? `releases/${l.release}` : 'the installed version';
  return `${l.version} from ${from}${l.previous ? ` (previous ${l.previous})` : ''}, ${l.launched ? 'under the launcher' : 'not under the launcher (no self-update)'}`;
}

/** A trial under way (with its deadline), else how the last update ended. */
export function updateLine(l: LifecycleInput): string {
  const t = l.trial;
  if (t) return `${t.kind === 'agent' ? `version ${t.to}` : 'a new config'} on trial since ${when(t.startedAt)}, healthy by ${when(t.deadline)} or rolled back (start ${t.attempts})`;
  const o = l.lastOutcome;
  if (!o) return '-';
  return `job ${o.jobId} ${o.status} ${when(o.at)}${o.reason ? `: ${o.reason}` : ''}`;
}

/** Where the device key comes from: configured, registered, registering (why not yet) or refused (what to do). */
export function registrationLine(r: NonNullable<StatusInput['state']['registration']>): string {
  const why = r.reason ?? r.lastError;
  return why ? `${r.state}: ${why}` : r.state;
}

function servicesSection(state: StatusInput['state']): string[] {
  const apps = state.current?.apps ?? {};
  const services = Object.entries(apps).flatMap(([app, a]) =>
    Object.entries(a.services).map(([name, svc]): [string, string] => [
      `${app}/${name}`,
      `${svc.status}${svc.restarts ? ` (${svc.restarts} restarts)` : ''}${svc.lastError ? `  ${svc.lastError}` : ''}`,
    ]),
  );
  const out = ['', `Services  ${state.current?.status ?? '-'}`];
  if (services.length > 0) out.push(table(services));
  return out;
}

function outboxSection(q: NonNullable<StatusInput['queue']>): string[] {
  const out = ['', `Outbox  ${q.depth} waiting, ${bytes(q.bytes)}, oldest ${duration(q.oldestAgeMs)}`];
  const rows = Object.entries(q.channels).map(([name, c]): [string, string] => [
    name,
    `${c.depth} waiting  ${c.delivered} delivered  ${c.dropped} dropped${dropReasons(c.drops)}  ${c.expired} expired  ${c.parked} parked`,
  ]);
  if (rows.length > 0) out.push(table(rows));
  if (q.ledger) out.push(ledgerLine(q.ledger));
  const d = q.dataDisk;
  if (d) out.push(`Disk  ${d.state === 'full' ? 'disk full' : d.state}: ${d.freeBytes === null ? '?' : bytes(d.freeBytes)} free where ${d.dataDir} lives`);
  return out;
}

/** The loss ledger in one line: balanced, or which channels have messages nothing accounts for. */
function ledgerLine(l: NonNullable<NonNullable<StatusInput['queue']>['ledger']>): string {
  const channels = Object.entries(l.channels);
  const accepted = channels.reduce((n, [, c]) => n + c.accepted, 0);
  if (l.balanced) return `Ledger  balanced: all ${accepted} message(s) taken are delivered, queued, parked, dropped or expired`;
  const off = channels.filter(([, c]) => c.unaccounted !== 0).map(([name, c]) => `${name} ${c.unaccounted}`);
  return `Ledger  DOES NOT BALANCE: unaccounted ${off.join(', ')} (removed behind the agent's back? see the log)`;
}

function jobsSection(j: NonNullable<StatusInput['jobs']>): string[] {
  if (!j.enabled) return ['', `Jobs  off (${j.reason ?? 'disabled'})`];
  const counts = Object.entries(j.counts ?? {})
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${n} ${k.toLowerCase().replace('_', ' ')}`)
    .join(', ');
  const out = ['', `Jobs  ${j.running ? `running ${j.running.type} ${j.running.id}` : 'idle'}${counts ? `; kept: ${counts}` : ''}`];
  if (j.recent.length > 0) out.push(table(j.recent.slice(0, 5).map((r) => [r.id, `${r.type}  ${r.status}  ${when(r.finishedAt)}`])));
  return out;
}

function shadowSection(sh: StatusInput['shadow']): string[] {
  if (!sh) return ['', 'Shadow  off'];
  return [
    '',
    'Shadow',
    table([
      ['reported version', String(sh.reportedVersion)],
      ['desired version', sh.desiredVersion === null ? '-' : String(sh.desiredVersion)],
      ['delta', Object.keys(sh.delta).length > 0 ? Object.keys(sh.delta).join(', ') : 'none'],
      ['local overrides', sh.overrides ? Object.keys(sh.overrides).join(', ') : 'none'],
      ['conflicts', String(sh.conflicts.length)],
    ]),
  ];
}

/** " (count 3, disk 1)": the limit drops by reason (ttl has its own column). */
function dropReasons(drops: Record<string, number> | undefined): string {
  const parts = Object.entries(drops ?? {}).filter(([r, n]) => r !== 'ttl' && n > 0).map(([r, n]) => `${r} ${n}`);
  return parts.length > 0 ? ` (${parts.join(', ')})` : '';
}
