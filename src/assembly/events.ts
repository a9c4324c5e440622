import { announceConfigSource, type ConfigStatus } from '../config/fallback.js';
import type { Outbox } from '../outbox/outbox.js';
import type { ConnectionMonitor } from '../resilience/connection-monitor.js';
import { quarantineEvent } from '../store/quarantine.js';
import type { Store } from '../store/store.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import type { Reconciler } from '../workloads/reconciler.js';

export interface EventLogOptions {
  outbox: Pick<Outbox, 'enqueue'>;
  logger: Pick<Logger, 'warn'>;
}

/**
 * State transitions worth keeping, queued durably on the `events` channel so that transitions during
 * an outage reach the cloud after it. A refused enqueue (disk full) is logged, never thrown.
 */
export class EventLog {
  constructor(private readonly o: EventLogOptions) {}

  record(type: string, data: Record<string, unknown>): void {
    this.o.outbox.enqueue({ channel: 'events', payload: JSON.parse(JSON.stringify({ type, ...data })) as Json }).catch((err: unknown) => {
      this.o.logger.warn({ err: errorMessage(err), type }, 'could not queue an event');
    });
  }
}

/** Services that crash, back off or fail, and applies that fail, become events. */
export function watchServiceTransitions(reconciler: Pick<Reconciler, 'on'>, events: EventLog): void {
  const last = new Map<string, string>();
  let lastApply: string | undefined;
  reconciler.on('changed', (state) => {
    if (state.status !== lastApply && state.status === 'failed') events.record('apply-failed', { targetVersion: state.targetVersion });
    lastApply = state.status;
    for (const [app, { services }] of Object.entries(state.apps)) {
      for (const [name, svc] of Object.entries(services)) {
        const key = `${app}/${name}`;
        const before = last.get(key);
        last.set(key, svc.status);
        if (before !== undefined && before !== svc.status && ['exited', 'backoff', 'failed', 'unhealthy'].includes(svc.status)) {
          events.record('service-status', { app, service: name, from: before, to: svc.status, restarts: svc.restarts, lastError: svc.lastError });
        }
      }
    }
  });
}

export interface ConnectionWatch {
  logger: Pick<Logger, 'info'>;
  events: EventLog;
  /** Any change of the overall status (the state report carries it). */
  onChange(): void;
  /** Back from offline (a health report is due). */
  onBackFromOffline(): void;
}

/** Changes of the overall connection status: logged, reported, and kept as events. */
export function watchConnection(monitor: Pick<ConnectionMonitor, 'on'>, w: ConnectionWatch): void {
  monitor.on('status', (e) => {
    w.logger.info({ from: e.from, to: e.to, cause: e.cause }, `connection ${e.from} -> ${e.to}`);
    w.onChange();
    if (e.from === 'offline') w.onBackFromOffline();
    w.events.record('connection', { from: e.from, to: e.to, cause: e.cause ?? null });
  });
}

export interface DatabaseWatch {
  /** True once the agent is stopping: damage found then is left to the next start. */
  stopped(): boolean;
  /** Damage was found: `run` restarts in-process so that the next start salvages it. */
  salvageNeeded(): void;
}

/**
 * A database quarantined at this start is reported with what was salvaged. Damage the background
 * check finds later is reported too, and makes the start that salvages it.
 */
export function watchDatabase(store: Pick<Store, 'quarantine' | 'onIntegrityFailure'>, events: EventLog, w: DatabaseWatch): void {
  if (store.quarantine) events.record('database-quarantined', quarantineEvent(store.quarantine));
  store.onIntegrityFailure((r) => {
    if (w.stopped()) return;
    events.record('database-corrupt', { detail: r.detail, salvageAtNextStart: true });
    w.salvageNeeded();
  });
}

/** Whether the last run told the cloud it ran on the last-known-good config. */
export const FALLBACK_ANNOUNCED_KEY = 'config.fallbackAnnounced';

/** At start: a run on the last-known-good config, and the first run on the file again, are told to the cloud. */
export function announceConfig(o: { status: ConfigStatus; kv: Pick<Store, 'getKv' | 'setKv'>; events: EventLog; healthReport(): void; logger: Logger }): void {
  announceConfigSource({
    status: o.status,
    announced: { get: () => o.kv.getKv<boolean>(FALLBACK_ANNOUNCED_KEY) === true, set: (v) => o.kv.setKv(FALLBACK_ANNOUNCED_KEY, v) },
    event: (type, data) => o.events.record(type, data),
    healthReport: () => o.healthReport(),
    logger: o.logger,
  });
}
