import type { Logger } from '../util/logger.js';
import type { ShadowDesiredPoller } from './poller.js';

export type ShadowSyncMode = 'cloud' | 'local';

export interface ShadowSyncOptions {
  /** The HTTP poller of the desired state (devices without MQTT); with MQTT it arrives retained. */
  poller?: Pick<ShadowDesiredPoller, 'gate' | 'pollNow'>;
  logger: Logger;
}

/**
 * Whether the shadow follows the cloud (`cloud`) or runs on what it holds (`local`): the feature
 * graceful degradation pauses (`pause` = `enableLocalMode`) after the cloud has been away beyond
 * the threshold. In local mode reads, local overrides and reported patches go on as before (the
 * reports wait in the outbox); only the polling of the cloud's desired state stops. Back in cloud
 * mode it polls at once, and what the cloud changed meanwhile is merged 3-way with what changed here.
 */
export class ShadowSync {
  readonly name = 'shadow';
  private current: ShadowSyncMode = 'cloud';

  constructor(private readonly o: ShadowSyncOptions) {}

  get mode(): ShadowSyncMode {
    return this.current;
  }

  enableLocalMode(): void {
    if (this.current === 'local') return;
    this.o.poller?.gate.pause();
    this.set('local');
  }

  enableCloudSync(): void {
    if (this.current === 'cloud') return;
    this.o.poller?.gate.resume();
    this.o.poller?.pollNow();
    this.set('cloud');
  }

  pause(): void {
    this.enableLocalMode();
  }

  resume(): void {
    this.enableCloudSync();
  }

  private set(mode: ShadowSyncMode): void {
    this.current = mode;
    this.o.logger.info({ mode }, mode === 'local' ? 'shadow: local mode (the cloud\'s desired state is not polled)' : 'shadow: cloud sync again');
  }
}
