/** `iotistic-agent status`: a few lines on what matters (the full table is `status --full`, status-view.ts). */
import { palette, type Palette } from './cli-client.js';
import { bytes, degradationLine, duration, linkLine, registrationLine, updateLine, when, type StatusInput } from './status-view.js';

export interface SummaryOptions {
  /** Wall time now, for the ages ("5m ago"). */
  now: number;
  /** ANSI colours (a terminal, no NO_COLOR). */
  colour: boolean;
}

type Channel = StatusInput['connection']['channels'][string];
type QueueChannel = NonNullable<StatusInput['queue']>['channels'][string];

/** The summary, one line a topic: agent, connection per channel, outbox per channel, services, ledger, disk. */
export function renderSummary(s: StatusInput, o: SummaryOptions): string {
  const p = palette(o.colour);
  const c = s.connection;
  const out = [`${p.bold('Iotistic Agent')} ${s.device.version}  device ${s.device.uuid}  up ${duration(c.uptime)}`];
  const fallback = s.state.config?.fallback;
  if (fallback) out.push(p.red(`!! CONFIG FALLBACK: ${fallback.message}; the file is NOT in force (iotistic-agent config check; status --full lists the issues)`));
  out.push(`Connection  ${tone(p, c.status)}${c.clock && !c.clock.synced ? `  ${p.yellow(`clock NOT synced (${c.clock.detail})`)}` : ''}`);
  // Features shed while offline (or back): said only when not normal.
  if (c.degradation && c.degradation.mode !== 'normal') out.push(`  ${p.yellow(degradationLine(c.degradation))}`);
  const channels = Object.entries(c.channels);
  // The metered link (settings.network) beside the channels: what it lets through and what is held.
  out.push(...aligned([...channels.map(([name, ch]): [string, string] => [name, channelLine(p, ch, o.now)]), ...(c.link ? [['link', linkLine(c.link)] as [string, string]] : [])]));
  // Said only while there is no usable device key: registering, or refused with what to do.
  const reg = s.state.registration;
  if (reg && (reg.state === 'registering' || reg.state === 'refused')) {
    const line = `Registration  ${registrationLine(reg)}`;
    out.push(reg.state === 'refused' ? p.red(line) : p.yellow(line));
  }
  // Said while a new version or config is on trial, and for a day after an update that was rolled back.
  const lc = s.state.lifecycle;
  if (lc?.trial) out.push(p.yellow(`Update  ${updateLine(lc)}`));
  else if (lc?.lastOutcome?.status === 'FAILED' && o.now - lc.lastOutcome.at < 86_400_000) out.push(p.red(`Update  ${updateLine(lc)}`));
  // Images the target needs that could not be pulled: an air-gapped device takes them from a file.
  for (const m of s.state.missingImages ?? []) {
    out.push(p.red(`Image  ${m.image} missing (${m.services.join(', ')}): ${m.lastError ?? 'not pulled yet'}; on a device without a registry: iotistic-agent images import FILE`));
  }
  if (s.queue) out.push(...outboxLines(p, s.queue));
  out.push(...serviceLines(p, s.state));
  const ledger = s.queue?.ledger;
  if (ledger) {
    const off = Object.entries(ledger.channels).filter(([, ch]) => ch.unaccounted !== 0);
    out.push(`Ledger  ${ledger.balanced ? p.green('balanced') : p.red(`DOES NOT BALANCE: unaccounted ${off.map(([n, ch]) => `${n} ${ch.unaccounted}`).join(', ')}`)}`);
  }
  const d = s.queue?.dataDisk;
  if (d) out.push(`Disk  ${d.state === 'ok' ? p.green('ok') : p.red(d.state === 'full' ? 'disk full' : d.state)}: ${d.freeBytes === null ? '?' : bytes(d.freeBytes)} free in ${d.dataDir}`);
  const db = databaseLine(s.state.database);
  if (db) out.push(p.red(db));
  return `${out.join('\n')}\n`;
}

/** The database, when something is wrong with it or was: a salvage due, a failed check, the last quarantine. */
function databaseLine(d: StatusInput['state']['database']): string | undefined {
  if (!d) return undefined;
  if (d.salvagePending) return `Database  CORRUPT: ${d.salvagePending}; quarantined and salvaged at the next start`;
  const q = d.quarantine;
  if (q) {
    const salvaged = q.salvageError ?? `${q.recovered} rows recovered, ${q.lost} lost`;
    return `Database  quarantined ${q.at.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}${d.quarantinedThisStart ? ' (this start)' : ''}: ${q.reason}; moved to ${q.quarantinedTo}; ${salvaged} (status --full)`;
  }
  if (d.integrity.state === 'failed' || d.integrity.state === 'error') return `Database  integrity check ${d.integrity.state}${d.integrity.detail ? `: ${d.integrity.detail}` : ''}`;
  return undefined;
}

/** "online since 2026-12-06 08:00:00Z (5m ago)"; "offline since ... (5m ago), 7 failures, auth: <error>". */
function channelLine(p: Palette, ch: Channel, now: number): string {
  if (ch.status === 'online') {
    const last = Math.max(0, ...Object.values(ch.lastSuccess ?? {}));
    return `${tone(p, 'online')}${last > 0 ? `   last success ${ago(last, now)}` : ''}`;
  }
  const since = ch.offlineSince ? ` since ${ago(ch.offlineSince, now)}` : '';
  const kind = ch.lastFailureKind ? `${ch.lastFailureKind}: ` : '';
  return `${tone(p, ch.status)}${since}, ${ch.consecutiveFailures} failure${ch.consecutiveFailures === 1 ? '' : 's'}${ch.lastError ? `, ${kind}${ch.lastError}` : ''}`;
}

function outboxLines(p: Palette, q: NonNullable<StatusInput['queue']>): string[] {
  const rows = Object.entries(q.channels)
    .filter(([, ch]) => ch.depth > 0 || ch.delivered > 0 || ch.dropped > 0 || ch.parked > 0 || ch.expired > 0)
    .map(([name, ch]): [string, string] => [name, queueChannelLine(p, ch)]);
  return [`Outbox  ${q.depth} waiting, ${bytes(q.bytes)}${q.depth > 0 ? `, oldest ${duration(q.oldestAgeMs)}` : ''}`, ...aligned(rows)];
}

/** "12 waiting (3.0 KiB, oldest 2m)  40 delivered  1 dropped  2 parked": what is not zero is coloured. */
export function queueChannelLine(p: Palette, ch: QueueChannel): string {
  const waiting = ch.depth > 0 ? `${ch.depth} waiting (${bytes(ch.bytes)}, oldest ${duration(ch.oldestAgeMs)})` : '0 waiting';
  const warn = (n: number, what: string): string => (n > 0 ? p.yellow(`${n} ${what}`) : `${n} ${what}`);
  return `${waiting}  ${ch.delivered} delivered  ${warn(ch.dropped, 'dropped')}  ${warn(ch.expired, 'expired')}  ${warn(ch.parked, 'parked')}`;
}

function serviceLines(p: Palette, state: StatusInput['state']): string[] {
  const rows = Object.entries(state.current?.apps ?? {}).flatMap(([app, a]) =>
    Object.entries(a.services).map(([name, svc]): [string, string] => [
      `${app}/${name}`,
      `${svc.status === 'running' ? p.green(svc.status) : p.yellow(svc.status)}${svc.restarts ? `  ${svc.restarts} restarts` : ''}${svc.lastError ? `  last error: ${svc.lastError}` : ''}`,
    ]),
  );
  return [`Services  ${rows.length === 0 ? 'none' : (state.current?.status ?? '-')}`, ...aligned(rows)];
}

/** Online green, degraded yellow, anything else red (upper case, so it shows without colour too). */
function tone(p: Palette, status: string): string {
  if (status === 'online') return p.green(status);
  if (status === 'degraded') return p.yellow(status);
  return p.red(status.toUpperCase());
}

function ago(at: number, now: number): string {
  return `${when(at)} (${duration(Math.max(0, now - at))} ago)`;
}

/** Rows indented two spaces, their names padded to one column (colour codes are only in the values). */
export function aligned(rows: [string, string][]): string[] {
  const w = Math.max(0, ...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`);
}
