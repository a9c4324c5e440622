import { describe, expect, it } from 'vitest';
import { defaultConfig, type AgentConfig } from '../../src/config/schema.js';
import { flusherSettings, outboxSettings } from '../../src/outbox/policy.js';
import { backoffFromSettings } from '../../src/resilience/backoff.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { seededRandom } from '../../src/util/random.js';

/**
 * Issue 20: every key of `settings.offline` reaches the part it configures. A config with every key
 * changed from its default is built into the outbox's, the flushers' and the backoff's options as the
 * agent builds them, and each key's value must show up where that part reads it. Keys the agent wires
 * itself (agent.ts, bootstrap.ts) are listed with the test that observes them on the built agent, so a
 * new key without a consumer fails here.
 */

type Offline = AgentConfig['settings']['offline'];

const changed: Offline = {
  ...defaultConfig().settings.offline,
  enableQueue: false,
  maxQueueSize: 1234,
  maxQueueBytes: 3 * 1_048_576,
  maxOfflineMetricsBuffer: 77,
  offlineThresholdSeconds: 11,
  enableGracefulDegradation: false,
  minBackoffSeconds: 0.5,
  maxBackoffSeconds: 7,
  enableJitter: true,
  jitter: 'equal',
  backoffResetAfterSeconds: 13,
  offlineAfterFailures: 9,
  probeMaxIntervalSeconds: 17,
  offlineRetryIntervalSeconds: 19,
  channels: { events: { priority: 61, maxCount: 500 } },
  onLimit: { count: 'refuse' },
  dropLogIntervalSeconds: 23,
  compressAboveBytes: 4321,
  groupCommitWindowMs: 3,
  groupCommitMaxBatch: 29,
  flushBatchMessages: 31,
  flushBatchBytes: 37_000,
  flushMaxInflight: 5,
  flushRateMessagesPerSecond: 41,
  flushRateBytesPerSecond: 43_000,
  minFreeDiskBytes: 47 * 1_048_576,
};

const outbox = outboxSettings(changed);
const flusher = flusherSettings(changed);
const backoff = backoffFromSettings(changed, { clock: new FakeClock(), random: seededRandom(1) });

/** Where each key's value must appear, read from the built options. */
const mapped: Record<string, () => unknown> = {
  maxQueueSize: () => outbox.limits.maxCount,
  maxQueueBytes: () => outbox.limits.maxBytes,
  maxOfflineMetricsBuffer: () => outbox.channels.metrics?.maxCount,
  minBackoffSeconds: () => backoff.minMs / 1000,
  maxBackoffSeconds: () => backoff.maxMs / 1000,
  jitter: () => backoff.strategy,
  backoffResetAfterSeconds: () => backoff.resetAfterMs / 1000,
  channels: () => ({ events: outbox.channels.events }),
  onLimit: () => outbox.onLimit,
  dropLogIntervalSeconds: () => outbox.dropLogIntervalMs / 1000,
  compressAboveBytes: () => outbox.compressAboveBytes,
  groupCommitWindowMs: () => outbox.groupCommit.windowMs,
  groupCommitMaxBatch: () => outbox.groupCommit.maxBatch,
  flushBatchMessages: () => flusher.batch?.maxCount,
  flushBatchBytes: () => flusher.batch?.maxBytes,
  flushMaxInflight: () => flusher.maxInflight,
  flushRateMessagesPerSecond: () => flusher.rate?.messagesPerSecond,
  flushRateBytesPerSecond: () => flusher.rate?.bytesPerSecond,
  minFreeDiskBytes: () => outbox.disk.minFreeBytes,
};

/** Keys the agent wires itself, and the test that sees each one's effect on the built agent (or its part). */
const wiredByAgent: Record<string, string> = {
  enableQueue: 'test/integration/settings-in-force.test.ts (false: offline, telemetry refused with 503 and counted as drops.offline); test/unit/outbox-offline.test.ts',
  offlineAfterFailures: 'test/integration/settings-in-force.test.ts',
  offlineThresholdSeconds: 'test/integration/agent-offline.test.ts (1 s: degraded, its reason names the threshold), test/unit/degradation.test.ts',
  enableGracefulDegradation: 'test/unit/degradation.test.ts (DegradationController enabled)',
  probeMaxIntervalSeconds: 'test/integration/connectivity.test.ts (back online within the probe interval)',
  wakeSpreadSeconds: 'test/integration/connectivity.test.ts (back online within the probe interval and the 4 s spread; fails with 300 s)',
  offlineRetryIntervalSeconds: 'test/integration/recovery-per-channel.test.ts',
  enableJitter: 'below: false means strategy none',
  shareLoopWithDrain: 'test/integration/settings-in-force.test.ts (GET /v2/queue ingestShare.enabled), test/unit/loop-share.test.ts (disabled never pauses)',
};

describe('settings.offline reaches its consumers', () => {
  it.each(Object.entries(mapped))('%s', (key, read) => {
    expect(read()).toEqual(changed[key as keyof Offline]);
  });

  it('enableJitter false means no jitter, whatever the strategy', () => {
    expect(backoffFromSettings({ ...changed, enableJitter: false }, { clock: new FakeClock(), random: seededRandom(1) }).strategy).toBe('none');
  });

  it('every key is either mapped above or wired by the agent with a test that observes it', () => {
    const keys = Object.keys(defaultConfig().settings.offline).sort();
    expect([...Object.keys(mapped), ...Object.keys(wiredByAgent)].sort()).toEqual(keys);
    // And every changed value differs from its default, so a dropped key cannot pass by accident.
    const defaults = defaultConfig().settings.offline as Record<string, unknown>;
    for (const k of Object.keys(mapped)) expect(changed[k as keyof Offline], k).not.toEqual(defaults[k]);
  });
});
