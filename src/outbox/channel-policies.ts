import { resolveOnLimit, type OnLimit } from './limits.js';
import type { ChannelPolicy } from './types.js';

/**
 * Default priorities (higher = delivered first, dropped last): what the cloud needs to act on
 * (events, job updates) before the device's state, before bulk data, before metrics, which degrade
 * gracefully by downsampling anyway. A channel's `priority` setting overrides its entry.
 */
export const DEFAULT_CHANNEL_PRIORITIES: Readonly<Record<string, number>> = Object.freeze({
  events: 50,
  jobs: 50,
  state: 40,
  shadow: 40,
  health: 30,
  telemetry: 20,
  logs: 15,
  metrics: 10,
});

/**
 * Built-in budgets of channels whose volume is not the device's own choice (a configured field of
 * the channel overrides its entry): the logs of a chatty service must not push out telemetry, so
 * they get an eighth of the default total and a week to live.
 */
export const DEFAULT_CHANNEL_POLICIES: Readonly<Record<string, ChannelPolicy>> = Object.freeze({
  logs: Object.freeze({ maxBytes: 32 * 1_048_576, ttlMs: 7 * 24 * 3_600_000 }),
});

/** Priority of a channel that is neither configured nor in DEFAULT_CHANNEL_PRIORITIES. */
export const DEFAULT_PRIORITY = 20;

/** Channels that drain freshness first unless configured otherwise: bulk data whose newest value matters most. */
export const DEFAULT_FRESH_FIRST: ReadonlySet<string> = new Set(['telemetry', 'metrics']);

/**
 * Channels whose messages must reach the cloud in the order they were queued: a job's updates (its
 * IN_PROGRESS before its final status), the state reports (merge patches, applied in order) and the
 * shadow's reported versions. The flushers keep one batch of each in flight at a time.
 */
export const ORDERED_CHANNELS: ReadonlySet<string> = new Set(['jobs', 'state', 'shadow']);

export const CHANNEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function defaultPriority(channel: string): number {
  return Object.hasOwn(DEFAULT_CHANNEL_PRIORITIES, channel) ? (DEFAULT_CHANNEL_PRIORITIES[channel] as number) : DEFAULT_PRIORITY;
}

/**
 * The configured policy of each channel and the action in force at each of its limits (resolved
 * once per channel: admission asks for it for every lane it considers).
 */
export class ChannelPolicies {
  private readonly policies = new Map<string, ChannelPolicy>();
  /** The channels the config names (the built-in policies are not shown until a channel is used). */
  private readonly configured: string[];
  private readonly onLimits = new Map<string, OnLimit>();

  constructor(
    channels: Record<string, ChannelPolicy> | undefined,
    private readonly globalOnLimit: Partial<OnLimit> | undefined,
  ) {
    for (const [name, policy] of Object.entries(DEFAULT_CHANNEL_POLICIES)) this.policies.set(name, { ...policy });
    for (const [name, policy] of Object.entries(channels ?? {})) this.policies.set(name, { ...this.policies.get(name), ...policy });
    this.configured = Object.keys(channels ?? {});
  }

  get(channel: string): ChannelPolicy | undefined {
    return this.policies.get(channel);
  }

  /** Configured channels (shown in stats even while they have never held a message). */
  names(): IterableIterator<string> {
    return this.configured.values();
  }

  /** Whether `channel` drains freshness first after an outage (its `freshFirst`, else DEFAULT_FRESH_FIRST). */
  freshFirst(channel: string): boolean {
    return this.policies.get(channel)?.freshFirst ?? DEFAULT_FRESH_FIRST.has(channel);
  }

  /** The policy in force at each limit for `channel`. */
  onLimitOf(channel: string): OnLimit {
    let p = this.onLimits.get(channel);
    if (!p) this.onLimits.set(channel, (p = resolveOnLimit(channel, this.policies.get(channel)?.onLimit, this.globalOnLimit)));
    return p;
  }
}
