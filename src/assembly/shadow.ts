import type { ReadGate } from '../telemetry/bounded-socket.js';
import { BrokerPersistence } from '../telemetry/broker-persistence.js';
import { LOCAL_SHADOW_DESIRED, LocalBroker } from '../telemetry/local-broker.js';
import type { TelemetryIngest } from '../telemetry/ingest.js';
import { ShadowReportQueue } from '../shadow/report-queue.js';
import { Shadow, type ShadowDocument } from '../shadow/shadow.js';
import type { Json } from '../util/json-diff.js';
import type { Core } from './core.js';
import type { Queueing } from './outbox.js';

export interface ShadowParts {
  shadow: Shadow;
  reports: ShadowReportQueue;
}

/** The local shadow (`features.shadow`): every change of its reported state is queued for the cloud. */
export function buildShadow(core: Core, q: Queueing): ShadowParts | undefined {
  const { config, store, clock, logger } = core;
  if (!config.features.shadow) return undefined;
  const shadow = new Shadow({ db: store.db, clock, logger: logger.child({ part: 'shadow' }) });
  const reports = new ShadowReportQueue({ outbox: q.outbox, kv: store, logger });
  // Coalesced: offline, only the latest is kept.
  shadow.on('changed', (e) => {
    if (e.reportedChanged) reports.queue(e.document);
  });
  return { shadow, reports };
}

/**
 * The local MQTT broker (`features.localBroker`): local apps publish on local/telemetry/{stream} (the
 * PUBACK goes out once it is on disk) and follow the shadow's desired state on a retained topic.
 */
export function buildLocalBroker(core: Core, ingest: TelemetryIngest, shadow: Shadow | undefined, gate?: ReadGate): LocalBroker | undefined {
  const { config, logger, store, clock } = core;
  if (!config.features.localBroker) return undefined;
  const log = logger.child({ part: 'local-broker' });
  const persistence = new BrokerPersistence({
    db: store.db,
    clock,
    logger: log,
    maxRetained: config.localBroker.maxRetained,
    maxQueuedPerClient: config.localBroker.maxQueuedPerClient,
  });
  const broker = new LocalBroker({
    host: config.localBroker.host,
    port: config.localBroker.port,
    ingest: (stream, payload) => ingest.ingest([{ stream, payload }]).then(() => undefined),
    maxPacketBytes: config.limits.maxLocalPacketBytes,
    maxConnections: config.limits.maxLocalConnections,
    maxJsonDepth: config.limits.maxJsonDepth,
    ...(shadow ? { shadowReported: (patch: Json) => void shadow.patch({ reported: patch }) } : {}),
    logger: log,
    persistence,
    ...(gate ? { gate } : {}),
  });
  // Offline as well.
  shadow?.on('changed', (e) => publishLocalDesired(broker, e.document));
  return broker;
}

export function publishLocalDesired(broker: Pick<LocalBroker, 'publishRetained'>, doc: ShadowDocument): void {
  broker.publishRetained(LOCAL_SHADOW_DESIRED, JSON.stringify({ version: doc.desiredVersion, desired: doc.desired, delta: doc.delta }));
}
