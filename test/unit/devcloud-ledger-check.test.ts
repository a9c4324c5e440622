import { describe, expect, it } from 'vitest';
import { checkLedger } from '../../devcloud/ledger-check.js';
import { digestHex, digestOf } from '../../src/outbox/ledger.js';

/** The devcloud's check of an agent's loss ledger against the ids it stored, one verdict per channel. */

const ids = (n: number, prefix = 'id'): string[] => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
const report = (channels: Record<string, { delivered: number; digest: string; unaccounted?: number }>, mqttChannels: string[] = []) => ({
  status: 'online',
  ledger: {
    balanced: true,
    mqttChannels,
    channels: Object.fromEntries(Object.entries(channels).map(([k, c]) => [k, { accepted: c.delivered, queued: 0, unaccounted: 0, ...c }])),
  },
});

describe('devcloud ledger check', () => {
  it('match: the cloud holds exactly the delivered ids', () => {
    const stored = ids(5);
    const c = checkLedger(report({ events: { delivered: 5, digest: digestHex(digestOf(stored)) } }), 123, () => stored);
    expect(c).toMatchObject({ reported: true, reportedAt: 123, mismatch: false, channels: { events: { verdict: 'match', cloud: { stored: 5 } } } });
  });

  it('ahead: the cloud holds more than the agent counted (in flight when it reported); not a loss', () => {
    const stored = ids(6);
    const c = checkLedger(report({ events: { delivered: 5, digest: digestHex(digestOf(stored.slice(0, 5))) } }), 1, () => stored);
    expect(c.mismatch).toBe(false);
    expect(c.channels.events?.verdict).toBe('ahead');
  });

  it('mismatch: fewer stored than delivered, the same number of other ids, or an agent ledger that does not balance', () => {
    const stored = ids(5);
    expect(checkLedger(report({ events: { delivered: 6, digest: digestHex(digestOf(ids(6))) } }), 1, () => stored).channels.events).toMatchObject({
      verdict: 'mismatch',
      reason: 'the agent counts 6 delivered, the cloud holds 5',
    });
    const other = checkLedger(report({ events: { delivered: 5, digest: digestHex(digestOf([...ids(4), 'another'])) } }), 1, () => stored);
    expect(other.mismatch).toBe(true);
    expect(other.channels.events?.reason).toContain('not the same ids');
    const unbalanced = checkLedger(report({ events: { delivered: 5, digest: digestHex(digestOf(stored)), unaccounted: 2 } }), 1, () => stored);
    expect(unbalanced.channels.events).toMatchObject({ verdict: 'mismatch', reason: expect.stringContaining('does not balance') as string });
  });

  it('unchecked: a channel sent over MQTT, unless the agent itself says it does not balance', () => {
    expect(checkLedger(report({ telemetry: { delivered: 9, digest: 'x' } }, ['telemetry']), 1, () => []).channels.telemetry?.verdict).toBe('unchecked');
    expect(checkLedger(report({ telemetry: { delivered: 9, digest: 'x', unaccounted: 1 } }, ['telemetry']), 1, () => []).mismatch).toBe(true);
  });

  it('a report without a ledger (an older agent) is not checked', () => {
    expect(checkLedger({ status: 'online' }, 1, () => [])).toEqual({ reported: false, reportedAt: 1, mismatch: false, channels: {} });
    expect(checkLedger(undefined, null, () => [])).toEqual({ reported: false, reportedAt: null, mismatch: false, channels: {} });
  });
});
