import { describe, expect, it } from 'vitest';
import { ChannelPolicies } from '../../src/outbox/channel-policies.js';
import { Intake } from '../../src/outbox/intake.js';
import { isOutboxError, type EnqueueMessage } from '../../src/outbox/types.js';
import { QueueClock } from '../../src/outbox/queue-clock.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

/** Intake alone: a message checked, encoded and given its id, priority and expiry, or refused at once. */

function intake(channels = {}) {
  const clock = new FakeClock();
  let n = 0;
  const queueClock = new QueueClock({ clock, synced: () => false, logger: silentLogger() });
  const i = new Intake({ policies: new ChannelPolicies(channels, undefined), limits: { maxBytes: 1_000 }, compressAboveBytes: 100, clock, queueClock, ids: { next: () => `id${++n}` } });
  const refusal = (m: EnqueueMessage): string => {
    try {
      i.prepare(m);
    } catch (err) {
      if (isOutboxError(err)) return err.code;
      throw err;
    }
    return 'accepted';
  };
  return { i, clock, refusal };
}

describe('intake', () => {
  it('gives a message its id, priority (given, configured, default) and expiry (given or configured)', () => {
    const { i, clock } = intake({ telemetry: { priority: 33, ttlMs: 1_000.2 } });
    expect(i.prepare({ channel: 'telemetry', payload: 1 })).toMatchObject({ id: 'id1', idGiven: false, priority: 33, createdAt: clock.now(), expiresAt: clock.now() + 1_001, coalesceKey: null });
    expect(i.prepare({ channel: 'events', payload: 1, id: 'mine', coalesceKey: 'k' })).toMatchObject({ id: 'mine', idGiven: true, priority: 50, expiresAt: null, coalesceKey: 'k' });
    expect(i.prepare({ channel: 'custom', payload: 1, priority: 7, ttlMs: 5 })).toMatchObject({ priority: 7, expiresAt: clock.now() + 5 });
    expect(i.prepare({ channel: 'custom', payload: 1 }).priority).toBe(20);
  });

  it('encodes the payload, gzipped above the threshold when that is smaller', () => {
    const { i } = intake();
    expect(i.prepare({ channel: 'telemetry', payload: { a: 1 } }).enc).toMatchObject({ encoding: 0, bytes: 7 });
    expect(i.prepare({ channel: 'telemetry', payload: 'a'.repeat(500) }).enc.encoding).toBe(1);
  });

  it('refuses what is malformed or can never fit', () => {
    const { refusal } = intake({ small: { maxBytes: 10 } });
    expect(refusal({ channel: 'bad channel', payload: 1 })).toBe('OUTBOX_INVALID');
    expect(refusal({ channel: 'telemetry', payload: 1, priority: 1.5 })).toBe('OUTBOX_INVALID');
    expect(refusal({ channel: 'telemetry', payload: 1, ttlMs: 0 })).toBe('OUTBOX_INVALID');
    expect(refusal({ channel: 'telemetry', payload: 1, id: '' })).toBe('OUTBOX_INVALID');
    expect(refusal({ channel: 'telemetry', payload: 1, coalesceKey: 'k'.repeat(257) })).toBe('OUTBOX_INVALID');
    expect(refusal({ channel: 'telemetry', payload: 1n as never })).toBe('OUTBOX_INVALID');
    expect(refusal({ channel: 'small', payload: 'x'.repeat(20) })).toBe('OUTBOX_TOO_LARGE');
    expect(refusal({ channel: 'telemetry', payload: Array.from({ length: 600 }, (_, k) => k) })).toBe('OUTBOX_TOO_LARGE');
    expect(refusal({ channel: 'telemetry', payload: 'fine' })).toBe('accepted');
  });
});
