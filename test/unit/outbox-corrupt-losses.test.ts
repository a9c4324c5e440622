import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox } from '../../src/outbox/outbox.js';
import { corruptLosses, countCorruptLosses } from '../../src/outbox/salvage-losses.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/** Messages lost with a corrupt database are counted as drops (`corrupt`), per channel, like every other drop. */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

const lostRow = (channel: string | null) => ({ values: channel === null ? { id: 'x' } : { channel, priority: 20, bytes: 10 } });

function outboxOn(store: Store, clock: FakeClock): Outbox {
  return new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 1000, maxBytes: 1_048_576 }, disk: { minFreeBytes: 0 }, groupCommit: { windowMs: 0 } });
}

describe('messages lost with a corrupt database', () => {
  it('are sorted by the channel an intact index still names; the rest are counted as unknown', () => {
    const losses = corruptLosses({
      tables: { outbox: { lost: 6 }, outbox_parked: { lost: 3 }, kv: { lost: 1 } },
      lostRows: { outbox: { rows: [lostRow('telemetry'), lostRow('telemetry'), lostRow('metrics'), lostRow(null)] } },
    });
    expect(losses).toEqual({ byChannel: { telemetry: 2, metrics: 1 }, unknownChannel: 3, parked: 3, uncounted: [] });
    expect(corruptLosses({ tables: { outbox: { lost: null }, outbox_parked: { lost: null } } }).uncounted).toEqual(['outbox', 'outbox_parked']);
    expect(corruptLosses({ tables: {} })).toEqual({ byChannel: {}, unknownChannel: 0, parked: 0, uncounted: [] });
  });

  it('show as drops.corrupt in the queue stats, add to counts already there, and are logged once with their numbers', async () => {
    const clock = new FakeClock();
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    try {
      const log = captureLogger();
      countCorruptLosses(store.db, { tables: { outbox: { lost: 3 } }, lostRows: { outbox: { rows: [lostRow('telemetry'), lostRow('telemetry'), lostRow('events')] } } }, log.logger);
      // A second salvage later adds to the first.
      countCorruptLosses(store.db, { tables: { outbox: { lost: 2 }, outbox_parked: { lost: 4 } }, lostRows: { outbox: { rows: [lostRow('telemetry')] } } }, log.logger);
      const lines = log.records().filter((r) => r.level === 50).map((r) => String(r.msg));
      expect(lines).toEqual([
        'outbox: 3 messages were lost with the damaged database (telemetry: 2; events: 1)',
        'outbox: 6 messages were lost with the damaged database (telemetry: 1; channel unknown: 1; parked: 4)',
      ]);
      const outbox = outboxOn(store, clock);
      const stats = outbox.stats();
      expect(stats.channels['telemetry']).toMatchObject({ dropped: 3, drops: { corrupt: 3, count: 0 } });
      expect(stats.channels['events']).toMatchObject({ dropped: 1, drops: { corrupt: 1 } });
      await outbox.close();
    } finally {
      store.close();
    }
  });

  it('messages whose channel nothing could tell, or a table that could not be counted, are logged too, with the losses as fields', () => {
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock: new FakeClock() });
    try {
      const log = captureLogger();
      countCorruptLosses(store.db, { tables: { outbox: { lost: 2 } } }, log.logger);
      countCorruptLosses(store.db, { tables: { outbox: { lost: null }, outbox_parked: { lost: 0 } } }, log.logger);
      countCorruptLosses(store.db, { tables: { outbox: { lost: null }, outbox_parked: { lost: null } } }, log.logger);
      const errors = log.records().filter((r) => r.level === 50);
      expect(errors.map((r) => r.msg)).toEqual([
        'outbox: 2 messages were lost with the damaged database (channel unknown: 2)',
        'outbox: 0 messages were lost with the damaged database (and an unknown number from outbox)',
        'outbox: 0 messages were lost with the damaged database (and an unknown number from outbox, outbox_parked)',
      ]);
      expect(errors[0]).toMatchObject({ byChannel: {}, unknownChannel: 2, parked: 0, uncounted: [] });
      expect(errors[1]).toMatchObject({ uncounted: ['outbox'] });
      // Nothing could be put to a channel: no channel's counter moved.
      expect(store.db.prepare("SELECT count(*) AS n FROM outbox_counters WHERE counter = 'corrupt'").get()).toEqual({ n: 0 });
    } finally {
      store.close();
    }
  });

  it('nothing lost: no counter, no line', () => {
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock: new FakeClock() });
    try {
      const log = captureLogger();
      countCorruptLosses(store.db, { tables: { outbox: { lost: 0 }, outbox_parked: { lost: 0 } }, lostRows: {} }, log.logger);
      expect(log.records()).toEqual([]);
      expect(store.db.prepare("SELECT count(*) AS n FROM outbox_counters WHERE counter = 'corrupt'").get()).toEqual({ n: 0 });
    } finally {
      store.close();
    }
  });
});
