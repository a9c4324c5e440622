import type { AgentConfig } from '../config/schema.js';
import type { FlusherOptions } from './flusher.js';
import type { ChannelPolicy, OnLimit } from './types.js';

export { CHANNEL_NAME, DEFAULT_CHANNEL_PRIORITIES, DEFAULT_PRIORITY } from './channel-policies.js';

export interface OutboxSettings {
  limits: { maxCount: number; maxBytes: number };
  channels: Record<string, ChannelPolicy>;
  compressAboveBytes: number;
  groupCommit: { windowMs: number; maxBatch: number };
  disk: { minFreeBytes: number };
  onLimit: Partial<OnLimit>;
  dropLogIntervalMs: number;
}

/**
 * The outbox's options from `settings.offline`. The metrics channel is capped at
 * `maxOfflineMetricsBuffer` messages unless configured otherwise: the MetricsBuffer downsamples
 * before that cap is reached, so the cap only bites producers that bypass it.
 */
export function outboxSettings(offline: AgentConfig['settings']['offline']): OutboxSettings {
  const channels: Record<string, ChannelPolicy> = {};
  for (const [name, policy] of Object.entries(offline.channels)) channels[name] = { ...policy };
  channels.metrics = { maxCount: offline.maxOfflineMetricsBuffer, ...channels.metrics };
  return {
    limits: { maxCount: offline.maxQueueSize, maxBytes: offline.maxQueueBytes },
    channels,
    compressAboveBytes: offline.compressAboveBytes,
    groupCommit: { windowMs: offline.groupCommitWindowMs, maxBatch: offline.groupCommitMaxBatch },
    disk: { minFreeBytes: offline.minFreeDiskBytes },
    onLimit: offline.onLimit,
    dropLogIntervalMs: offline.dropLogIntervalSeconds * 1000,
  };
}

/** A flusher's batch size, batches in flight and rate budget from `settings.offline`, as the agent runs them. */
export function flusherSettings(offline: AgentConfig['settings']['offline']): Pick<FlusherOptions, 'batch' | 'maxInflight' | 'rate'> {
  return {
    batch: { maxCount: offline.flushBatchMessages, maxBytes: offline.flushBatchBytes },
    maxInflight: offline.flushMaxInflight,
    rate: { messagesPerSecond: offline.flushRateMessagesPerSecond, bytesPerSecond: offline.flushRateBytesPerSecond },
  };
}
