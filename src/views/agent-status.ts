import { configStatus, type ConfigSource, type ConfigStatus } from '../config/fallback.js';
import type { ClockSync, ClockSyncState } from '../resilience/clock-sync.js';
import type { ConnectionHealth, ConnectionMonitor } from '../resilience/connection-monitor.js';
import type { DegradationController, FeatureState } from '../resilience/degradation.js';
import type { Outbox } from '../outbox/outbox.js';
import type { Clock } from '../util/clock.js';
import type { Json } from '../util/json-diff.js';
import type { Reconciler } from '../workloads/reconciler.js';

/** `GET /v2/connection` and the health report: the monitor's health with the queue, the mode, MQTT. */
/** Graceful degradation: the mode, since when and why, and each registered feature in shedding order. */
export interface DegradationView {
  mode: string;
  since: number | null;
  reason: string | null;
  features: FeatureState[];
}

export type ConnectionView = ConnectionHealth & { degradation: DegradationView; mqtt: unknown; clockSynced: boolean; clock: ClockSyncState };

export interface AgentStatusParts {
  version: string;
  configSource: ConfigSource;
  clock: Pick<Clock, 'now'>;
  monitor: Pick<ConnectionMonitor, 'health'>;
  reconciler: Pick<Reconciler, 'currentState'>;
  outbox: Pick<Outbox, 'stats'>;
  degradation: Pick<DegradationController, 'mode' | 'since' | 'reason' | 'features'>;
  mqtt: { stats(): unknown } | undefined;
  clockSync: Pick<ClockSync, 'state'>;
}

/**
 * What the agent says of itself to the cloud (state and health reports) and in the local API: the
 * config's source, the current state, the connection's health. Read from the parts, never stored.
 */
export class AgentStatus {
  constructor(private readonly p: AgentStatusParts) {}

  /** The config's source and, on a fallback, why: in `/v2/state`, health reports and metrics. */
  configStatus(): ConfigStatus {
    return configStatus(this.p.configSource, this.p.clock.now());
  }

  /** The current state as reported to the cloud (PROTOCOL.md "Current state"). */
  currentState(): Json {
    const health = this.p.monitor.health();
    const workloads = this.p.reconciler.currentState();
    return JSON.parse(
      JSON.stringify({
        ...workloads,
        connection: { status: health.status, offlineSince: health.offlineSince },
        agent: { version: this.p.version },
      }),
    ) as Json;
  }

  connectionHealth(): ConnectionView {
    const q = this.p.outbox.stats();
    const d = this.p.degradation;
    const clock = this.p.clockSync.state;
    return {
      ...this.p.monitor.health({ queue: { depth: q.depth, bytes: q.bytes, oldestAgeMs: q.oldestAgeMs, dropped: q.dropped, expired: q.expired } }),
      degradation: { mode: d.mode(), since: d.since(), reason: d.reason(), features: d.features() },
      mqtt: this.p.mqtt?.stats() ?? null,
      clockSynced: clock.synced,
      clock,
    };
  }
}
