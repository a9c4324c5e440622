import type { DataDirDisk } from '../boot/disk.js';
import type { Registrar } from '../cloud/registration.js';
import type { StateReporter } from '../cloud/state-report.js';
import type { TargetStatePoller } from '../cloud/target-state.js';
import type { AgentConfig } from '../config/schema.js';
import type { JobPoller } from '../jobs/poller.js';
import type { JobRunner } from '../jobs/runner.js';
import type { Flusher } from '../outbox/flusher.js';
import type { LoopShare } from '../outbox/loop-share.js';
import type { Outbox } from '../outbox/outbox.js';
import type { Shadow } from '../shadow/shadow.js';
import type { LifecycleView } from '../lifecycle/view.js';
import type { Store } from '../store/store.js';
import { redactTargetDocument } from '../workloads/registry-auth.js';
import type { AgentStatus } from './agent-status.js';

/** The local API's pages (and what `status` and the dashboard print), read from the parts at each request. */

export interface QueueParts {
  outbox: Pick<Outbox, 'stats' | 'parked' | 'ledger'>;
  disk: Pick<DataDirDisk, 'view'> | undefined;
  flushers: readonly Pick<Flusher, 'stats'>[];
  share?: Pick<LoopShare, 'stats'> | undefined;
}

/** `GET /v2/queue`: the outbox per channel, the flushers, and what is parked. */
export function queueView(p: QueueParts): unknown {
  return {
    ...p.outbox.stats(),
    ledger: p.outbox.ledger(),
    dataDisk: p.disk?.view() ?? null,
    flushers: p.flushers.map((f) => f.stats()),
    ingestShare: p.share?.stats() ?? null,
    parkedMessages: p.outbox.parked({ limit: 20 }),
  };
}

export interface JobsParts {
  config: Pick<AgentConfig, 'features' | 'jobs'>;
  runner: Pick<JobRunner, 'types' | 'running' | 'counts' | 'list'> | undefined;
  poller: Pick<JobPoller, 'lastPollAt' | 'lastError'> | undefined;
}

/** `GET /v2/jobs`: whether jobs run here, the one running, the latest ones. */
export function jobsView(p: JobsParts): unknown {
  const cfg = p.config;
  if (!p.runner) {
    const why = !cfg.features.jobs ? 'features.jobs is false' : 'there is no cloud.apiUrl to take jobs from';
    return { enabled: false, reason: why, types: [], running: null, counts: null, recent: [] };
  }
  return {
    enabled: true,
    types: p.runner.types,
    allowedCommands: cfg.jobs.allowedCommands,
    lastPollAt: p.poller?.lastPollAt ?? null,
    lastPollError: p.poller?.lastError ?? null,
    running: p.runner.running ?? null,
    counts: p.runner.counts(),
    recent: p.runner.list(20),
  };
}

export interface StateParts {
  status: Pick<AgentStatus, 'configStatus' | 'currentState'>;
  store: Pick<Store, 'getTarget' | 'databaseHealth'>;
  poller: Pick<TargetStatePoller, 'lastRejection' | 'lastPollAt' | 'lastError'> | undefined;
  reporter: Pick<StateReporter, 'lastError'> | undefined;
  /** Without a cloud the agent is in local mode whatever the stored target's source. */
  hasCloud: boolean;
  /** Where the device key comes from and what registration is doing (never a key). */
  registration?: Pick<Registrar, 'status'> | undefined;
  /** The version running and self-update's state (releases/state.json). */
  lifecycle?: (() => LifecycleView) | undefined;
  /** Images the target needs that the engine lacks and could not pull (docs/workloads.md, "Air-gapped updates"). */
  missingImages?: (() => unknown[]) | undefined;
}

/** `GET /v2/state`: the config's source, the target and where it came from, the current state, the database. */
export function stateView(p: StateParts): unknown {
  const stored = p.store.getTarget();
  return {
    config: p.status.configStatus(),
    // The stored target keeps the registries' passwords as they came; they are never shown.
    target: stored ? { ...stored, document: redactTargetDocument(stored.document) } : null,
    lastRejection: p.poller?.lastRejection ?? null,
    lastPollAt: p.poller?.lastPollAt ?? null,
    lastPollError: p.poller?.lastError ?? null,
    lastReportError: p.reporter?.lastError ?? null,
    current: p.status.currentState(),
    mode: stored?.source === 'local' || !p.hasCloud ? 'local' : 'cloud',
    database: p.store.databaseHealth(),
    registration: p.registration?.status() ?? null,
    lifecycle: p.lifecycle?.() ?? null,
    missingImages: p.missingImages?.() ?? [],
  };
}

/** The shadow's versions and sizes for the metrics; null when the shadow is off. */
export function shadowSummary(shadow: Pick<Shadow, 'get'> | undefined): { reportedVersion: number; desiredVersion: number | null; deltaKeys: number; conflicts: number } | null {
  const d = shadow?.get();
  return d ? { reportedVersion: d.reportedVersion, desiredVersion: d.desiredVersion, deltaKeys: Object.keys(d.delta).length, conflicts: d.conflicts.length } : null;
}
