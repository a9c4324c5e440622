import { cell, machine, table } from '../report.js';
import type { AgentLedgerCheck } from './agent-ledgers.js';
import type { FaultKind } from './faults.js';
import type { Ledger } from './ledger.js';

/** The chaos report: readable tables, and the one JSON line (DESIGN.md) with `--json`. */

/** Issue 21: every channel back online at most 40 s after its endpoint returns. */
const RECOVERY_WANT_MS = 40_000;

export interface ChaosSummary {
  benchmark: 'chaos';
  machine: ReturnType<typeof machine>;
  config: { seed: number; durationMs: number; ratePerProducer: number; clock: 'libfaketime'; runDir: string | null };
  accepted: number;
  delivered: number;
  dropped: { total: number; count: number; bytes: number; disk: number; ttl: number; parkedLimit: number; corrupt: number };
  queued: number;
  parked: number;
  lost: number;
  duplicatesStored: number;
  duplicatesSuppressed: number;
  brickedStarts: number;
  starts: number;
  unacknowledgedStored: number;
  faultsInjected: Partial<Record<FaultKind, number>>;
  missingKinds: FaultKind[];
  findings: string[];
  faults: Array<{ kind: FaultKind; target: string; atS: number; heldMs: number; deliveringMs: Record<string, number | null>; notes: string[]; findings: string[] }>;
  channels: Ledger['channels'];
  agents: Ledger['agents'];
  /** Each agent's own loss ledger and the devcloud's check of it (agent-ledgers.ts). */
  agentLedgers: AgentLedgerCheck[];
  pass: boolean;
}

export function summarize(
  ledger: Ledger,
  opts: { seed: number; durationMs: number; rate: number; startedAt: number; runDir: string | null; missingKinds: FaultKind[]; agentLedgers: AgentLedgerCheck[] },
): ChaosSummary {
  const sum = (f: (a: Ledger['agents'][number]) => number): number => ledger.agents.reduce((n, a) => n + f(a), 0);
  const faultsInjected: Partial<Record<FaultKind, number>> = {};
  for (const f of ledger.faults) faultsInjected[f.kind] = (faultsInjected[f.kind] ?? 0) + 1;
  const findings: string[] = [];
  for (const f of ledger.faults) for (const x of f.findings) findings.push(`${f.kind} (${f.target}): ${x}`);
  for (const f of ledger.faults) {
    for (const [agent, ms] of Object.entries(f.deliveringMs)) {
      if (ms === null) findings.push(`${f.kind} (${f.target}): agent ${agent} delivered nothing after the fault`);
      else if (ms > RECOVERY_WANT_MS) findings.push(`${f.kind} (${f.target}): agent ${agent} delivered again only ${cell(ms / 1000, 1)} s after the fault ended (want <= ${RECOVERY_WANT_MS / 1000} s)`);
    }
  }
  for (const a of ledger.agents) {
    if (a.queueUnknown) findings.push(`agent ${a.agent}: not running at the end, its queue could not be read (what it still holds counts as lost)`);
  }
  for (const a of ledger.agents) {
    // On default settings the disk watermark refuses (507 / no PUBACK): nothing acknowledged may be dropped for disk.
    if (a.dropped.disk > 0) findings.push(`agent ${a.agent}: ${a.dropped.disk} acknowledged messages dropped at the disk watermark, where the default policy refuses`);
  }
  for (const a of ledger.agents) if (a.uuids.length > 1) findings.push(`agent ${a.agent}: device uuid changed during the run (${a.uuids.join(' -> ')})`);
  const ledgerFindings = opts.agentLedgers.flatMap((l) => l.findings);
  findings.push(...ledgerFindings);
  const s = {
    lost: sum((a) => a.lost),
    duplicatesStored: sum((a) => a.duplicatesStored),
    brickedStarts: sum((a) => a.brickedStarts),
  };
  return {
    benchmark: 'chaos',
    machine: machine(),
    config: { seed: opts.seed, durationMs: opts.durationMs, ratePerProducer: opts.rate, clock: 'libfaketime', runDir: opts.runDir },
    accepted: sum((a) => a.accepted),
    delivered: sum((a) => a.delivered),
    dropped: {
      total: sum((a) => a.dropped.total),
      count: sum((a) => a.dropped.count),
      bytes: sum((a) => a.dropped.bytes),
      disk: sum((a) => a.dropped.disk),
      ttl: sum((a) => a.dropped.ttl),
      parkedLimit: sum((a) => a.dropped.parkedLimit),
      corrupt: sum((a) => a.dropped.corrupt),
    },
    queued: sum((a) => a.queued),
    parked: sum((a) => a.parked),
    ...s,
    duplicatesSuppressed: ledger.duplicatesSuppressed,
    starts: sum((a) => a.starts),
    unacknowledgedStored: ledger.unacknowledgedStored,
    faultsInjected,
    missingKinds: opts.missingKinds,
    findings,
    faults: ledger.faults.map((f) => ({
      kind: f.kind,
      target: f.target,
      atS: Math.round((f.at - opts.startedAt) / 100) / 10,
      heldMs: f.endAt - f.at,
      deliveringMs: f.deliveringMs,
      notes: f.notes,
      findings: f.findings,
    })),
    channels: ledger.channels,
    agents: ledger.agents,
    agentLedgers: opts.agentLedgers,
    pass: s.lost === 0 && s.duplicatesStored === 0 && s.brickedStarts === 0 && opts.missingKinds.length === 0 && ledgerFindings.length === 0,
  };
}

export function printSummary(s: ChaosSummary): void {
  const out: string[] = [];
  out.push(`chaos: seed ${s.config.seed}, ${Math.round(s.config.durationMs / 1000)} s of faults, ${s.faults.length} faults, ${s.config.ratePerProducer} msg/s per producer`);
  out.push('');
  out.push(
    table(
      ['agent', 'ingress', 'accepted', 'delivered', 'undelivered', 'refused (producer kept it)'],
      s.channels.map((c) => [c.agent, c.ingress, cell(c.accepted), cell(c.delivered), cell(c.undelivered), refusals(c.refused)]),
    ),
  );
  out.push('');
  out.push(
    table(
      ['agent', 'accepted', 'delivered', 'dropped count/bytes/disk/ttl/corrupt', 'queued', 'parked', 'lost', 'dup stored', 'resends', 'starts', 'bricked', 'uuids'],
      s.agents.map((a) => [
        a.agent, cell(a.accepted), cell(a.delivered), `${a.dropped.count}/${a.dropped.bytes}/${a.dropped.disk}/${a.dropped.ttl}/${a.dropped.corrupt}`, cell(a.queued), cell(a.parked),
        cell(a.lost), cell(a.duplicatesStored), cell(a.producerResends), cell(a.starts), cell(a.brickedStarts), String(a.uuids.length),
      ]),
    ),
  );
  out.push('', ...ledgerTable(s.agentLedgers));
  out.push('');
  out.push(
    table(
      ['fault', 'target', 'at s', 'held ms', 'delivering after ms', 'notes'],
      s.faults.map((f) => [
        f.findings.length > 0 ? `${f.kind} !` : f.kind,
        f.target,
        cell(f.atS, 1),
        cell(f.heldMs),
        Object.entries(f.deliveringMs).map(([a, ms]) => `${a} ${ms === null ? 'never' : cell(ms)}`).join(', '),
        f.notes.join('; ').slice(0, 110),
      ]),
    ),
  );
  out.push('');
  out.push(
    table(
      ['total', 'value', 'want'],
      [
        ['accepted', cell(s.accepted), ''],
        ['delivered', cell(s.delivered), ''],
        ['dropped (counted by the agent)', cell(s.dropped.total), ''],
        ['  of which lost with a corrupt database (corrupt)', cell(s.dropped.corrupt), ''],
        ['still queued / parked at the end', `${cell(s.queued)} / ${cell(s.parked)}`, ''],
        ['lost', cell(s.lost), '0'],
        ['duplicatesStored', cell(s.duplicatesStored), '0'],
        ['duplicatesSuppressed', cell(s.duplicatesSuppressed), ''],
        ['brickedStarts', `${cell(s.brickedStarts)} of ${cell(s.starts)}`, '0'],
        ['fault kinds not exercised', String(s.missingKinds.length), '0'],
      ],
    ),
  );
  if (s.findings.length > 0) {
    out.push('', 'findings:');
    for (const f of s.findings) out.push(`  - ${f}`);
  }
  out.push('', s.pass ? 'PASS' : 'FAIL');
  console.log(out.join('\n'));
}

/** The agents' own loss ledgers, a row per channel, with the devcloud's verdict. */
function ledgerTable(ledgers: AgentLedgerCheck[]): string[] {
  const rows: string[][] = [];
  for (const a of ledgers) {
    for (const [channel, l] of Object.entries(a.local?.channels ?? {})) {
      const dropped = Object.values(l.dropped).reduce((n, v) => n + v, 0);
      rows.push([a.agent, channel, cell(l.accepted), cell(l.delivered), cell(l.queued), cell(l.parked), cell(dropped), cell(l.expired), cell(l.superseded), cell(l.unaccounted), a.cloud?.channels[channel]?.verdict ?? '-']);
    }
    if (!a.local) rows.push([a.agent, '?', '', '', '', '', '', '', '', '', '']);
  }
  return ['loss ledger (each agent\'s own; want unaccounted 0, and no devcloud mismatch)', table(['agent', 'channel', 'accepted', 'delivered', 'queued', 'parked', 'dropped', 'expired', 'superseded', 'unaccounted', 'devcloud'], rows)];
}

function refusals(r: Record<string, number>): string {
  return Object.entries(r)
    .map(([k, v]) => `${k}: ${v}`)
    .join(', ');
}
