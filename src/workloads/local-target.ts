import type { Store } from '../store/store.js';
import type { Logger } from '../util/logger.js';
import { isComposeBody, targetOfComposeBody } from './compose-body.js';
import { validateTarget, type TargetValidation, type WorkloadPolicy } from './target-schema.js';
import type { MemoryTargetSource } from './target-source.js';

export interface LocalTargetOptions {
  store: Pick<Store, 'getTarget' | 'setTarget' | 'clearTarget'>;
  targets: Pick<MemoryTargetSource, 'set'>;
  policy: WorkloadPolicy;
  logger: Pick<Logger, 'info'>;
  /** After a local target is in force (the state report is due). */
  onSet?: () => void;
  /** After local mode ended (the cloud's target is due). */
  onCleared?: () => void;
}

/**
 * Local mode: a target set on the device (`POST /v2/local/target-state`) stays in force, and the
 * cloud's is not fetched, until it is cleared (`DELETE`).
 */
export class LocalTarget {
  constructor(private readonly o: LocalTargetOptions) {}

  /** A target document, or a Compose body (compose-body.ts) converted first. */
  set(body: unknown): TargetValidation {
    let doc = body;
    if (isComposeBody(body)) {
      const c = targetOfComposeBody(body);
      if (!c.ok) return c;
      doc = c.doc;
    }
    const v = validateTarget(doc, { policy: this.o.policy });
    if (!v.ok) return v;
    this.o.store.setTarget({ etag: null, version: v.target.version, document: v.target, source: 'local' });
    this.o.targets.set(v.target);
    this.o.logger.info({ version: v.target.version }, 'local target set: local mode until it is cleared');
    this.o.onSet?.();
    return v;
  }

  /** Ends local mode: the cloud's target is fetched at once. Returns false when not in local mode. */
  clear(): boolean {
    const { store } = this.o;
    if (store.getTarget()?.source !== 'local') return false;
    store.clearTarget();
    this.o.logger.info('local mode ended');
    this.o.onCleared?.();
    return true;
  }
}
