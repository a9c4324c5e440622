import type { Outbox } from '../outbox/outbox.js';
import type { Store } from '../store/store.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { SHADOW_CHANNEL, type Shadow, type ShadowDocument } from './shadow.js';

/** The latest shadow reportedVersion whose report is on disk in the outbox. */
export const SHADOW_QUEUED_KEY = 'shadow.reportQueuedVersion';

export interface ShadowReportQueueOptions {
  outbox: Pick<Outbox, 'enqueue'>;
  kv: Pick<Store, 'getKv' | 'setKv'>;
  logger: Pick<Logger, 'info' | 'warn'>;
}

/**
 * The reported state goes to the cloud as `{ version, state }` on the shadow channel (MQTT
 * `shadow/reported`, or in an HTTP messages batch), one coalesced message: the latest wins.
 */
export class ShadowReportQueue {
  constructor(private readonly o: ShadowReportQueueOptions) {}

  queue(doc: ShadowDocument): void {
    const { kv } = this.o;
    const version = doc.reportedVersion;
    this.o.outbox
      .enqueue({ channel: SHADOW_CHANNEL, coalesceKey: 'reported', payload: { version, state: doc.reported } })
      .then(() => {
        // Versions are queued in order; a late resolve of an older one must not lower the mark.
        if (version > (kv.getKv<number>(SHADOW_QUEUED_KEY) ?? 0)) kv.setKv(SHADOW_QUEUED_KEY, version);
      })
      .catch((err: unknown) => this.o.logger.warn({ err: errorMessage(err) }, `could not queue the shadow report: ${errorMessage(err)}`));
  }

  /**
   * A reported change committed to the shadow whose report was not yet on disk in the outbox when the
   * agent died (the two are separate commits) is queued at the next start.
   */
  requeueUnsent(shadow: Pick<Shadow, 'get'>): void {
    const doc = shadow.get();
    if (doc.reportedVersion <= (this.o.kv.getKv<number>(SHADOW_QUEUED_KEY) ?? 0)) return;
    this.o.logger.info({ version: doc.reportedVersion }, 'shadow: queuing the reported state the last run did not get to queue');
    this.queue(doc);
  }
}
