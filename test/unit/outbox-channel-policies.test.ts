import { describe, expect, it } from 'vitest';
import { CHANNEL_NAME, ChannelPolicies, DEFAULT_PRIORITY, defaultPriority } from '../../src/outbox/channel-policies.js';
import { DEFAULT_CHANNEL_PRIORITIES } from '../../src/outbox/policy.js';

/** Channel policies alone: default priorities, names, and the action in force at each limit. */

describe('channel policies', () => {
  it('give the built-in priority of a known channel and the default of any other', () => {
    expect(defaultPriority('events')).toBe(50);
    expect(defaultPriority('metrics')).toBe(10);
    expect(defaultPriority('custom')).toBe(DEFAULT_PRIORITY);
    expect(defaultPriority('toString')).toBe(DEFAULT_PRIORITY); // not an inherited property
    expect(DEFAULT_CHANNEL_PRIORITIES.telemetry).toBe(20); // still exported where it always was
  });

  it('accept channel names of 1-64 letters, digits, ".", "_", "-", starting with a letter or digit', () => {
    expect(['a', 'telemetry.v2', 'A_b-9', 'x'.repeat(64)].every((n) => CHANNEL_NAME.test(n))).toBe(true);
    expect(['', '-a', 'a b', 'x'.repeat(65)].some((n) => CHANNEL_NAME.test(n))).toBe(false);
  });

  it('resolve each limit from the channel, then the global setting, then the built-in default, and copy what they are given', () => {
    const channels = { telemetry: { maxCount: 5, onLimit: { count: 'refuse' as const } } };
    const p = new ChannelPolicies(channels, { bytes: 'refuse' });
    channels.telemetry.maxCount = 99;
    expect(p.get('telemetry')?.maxCount).toBe(5);
    expect(p.onLimitOf('telemetry')).toEqual({ count: 'refuse', bytes: 'refuse', disk: 'refuse' });
    expect(p.onLimitOf('metrics')).toEqual({ count: 'drop-oldest', bytes: 'refuse', disk: 'refuse' });
    expect(p.onLimitOf('metrics')).toBe(p.onLimitOf('metrics'));
    expect([...p.names()]).toEqual(['telemetry']);
    expect(new ChannelPolicies(undefined, undefined).onLimitOf('events')).toEqual({ count: 'refuse', bytes: 'refuse', disk: 'refuse' });
  });
});
