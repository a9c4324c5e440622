export { Outbox, type OutboxOptions } from './outbox.js';
export { MetricsBuffer, mergeRecords, levelOf, isAggregate, toAggregate, validateSample } from './downsample.js';
export type { MetricsAggregate, MetricsBufferOptions, MetricsRecord, MetricsSample, MetricSummary } from './downsample.js';
export { DEFAULT_CHANNEL_PRIORITIES, DEFAULT_PRIORITY, outboxSettings, type OutboxSettings } from './policy.js';
export * from './types.js';
export { DEFAULT_ON_LIMIT, LIMIT_ACTIONS, LIMIT_KINDS, resolveOnLimit } from './limits.js';
