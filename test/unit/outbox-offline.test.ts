import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { outboxesPerTest } from '../helpers/outbox-per-test.js';

/** `settings.offline.enableQueue: false` (the seed's meaning): no store-and-forward while the cloud is away. */

const { make: open, close, dirs } = outboxesPerTest();
const make = (path: string, offline: () => boolean) => open({ path, overrides: { limits: { maxCount: 1_000, maxBytes: 1 << 24 }, refuseWhileOffline: offline } });

describe('outbox: not queued while offline (enableQueue false)', () => {
  it('takes messages while the way is open; while offline refuses them (OUTBOX_OFFLINE) and counts each as an offline drop, kept across a restart', async () => {
    const path = join(dirs.make(), 'agent.db');
    let offline = false;
    const env = make(path, () => offline);
    const { outbox } = env;
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    offline = true;
    await expect(outbox.enqueue({ channel: 'telemetry', payload: 2 })).rejects.toMatchObject({
      code: 'OUTBOX_OFFLINE',
      message: expect.stringContaining('settings.offline.enableQueue is false') as string,
    });
    await expect(outbox.enqueueMany([{ channel: 'events', payload: 3 }, { channel: 'telemetry', payload: 4 }])).rejects.toMatchObject({ code: 'OUTBOX_OFFLINE' });
    // What was queued before the outage stays, to be delivered.
    const stats = outbox.stats();
    expect(stats.channels['telemetry']).toMatchObject({ depth: 1, dropped: 2, drops: { offline: 2 } });
    expect(stats.channels['events']).toMatchObject({ depth: 0, dropped: 1, drops: { offline: 1 } });
    offline = false;
    await outbox.enqueue({ channel: 'telemetry', payload: 5 });
    expect(outbox.stats().channels['telemetry']?.depth).toBe(2);
    await close(env);
    const again = make(path, () => false);
    expect(again.outbox.stats().channels['telemetry']?.drops.offline).toBe(2);
  });

  it('an invalid message is still refused for what it is, not counted as offline', async () => {
    const { outbox } = make(join(dirs.make(), 'agent.db'), () => true);
    await expect(outbox.enqueue({ channel: 'bad channel!', payload: 1 })).rejects.toMatchObject({ code: 'OUTBOX_INVALID' });
    expect(outbox.stats().dropped).toBe(0);
  });
});
