import { join } from 'node:path';
import { afterEach } from 'vitest';
import { Outbox, type OutboxOptions } from '../../src/outbox/outbox.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Logger } from '../../src/util/logger.js';
import { FakeClock } from './fake-clock.js';
import { silentLogger } from './logger.js';
import { Store } from './store.js';
import { tempDirs } from './tmp.js';

export interface OutboxOpening {
  /** The database file (default: `agent.db` in a fresh temp dir). */
  path?: string;
  clock?: FakeClock;
  logger?: Logger;
  /** The store's integrity check: `background` as the agent opens it, `inline` (default) as tests do. */
  integrityCheck?: 'background' | 'inline';
  /** `normal`: an enqueue resolves at its commit (with `full` it waits for a real fdatasync, which fake time does not wait for). */
  synchronous?: 'full' | 'normal';
  /** Outbox options over the defaults here (large limits, no disk watermark, no group-commit window). */
  overrides?: Partial<Omit<OutboxOptions, 'store' | 'clock' | 'ids' | 'logger'>>;
}

export interface OpenOutbox {
  store: Store;
  outbox: Outbox;
  clock: FakeClock;
  path: string;
}

/**
 * For a test file: `make()` opens a store and an outbox on a real SQLite file; after each test every
 * one still open (and each `track`ed) is closed and the temp dirs removed. `close(env, { crash: true })` drops the
 * connection without the clean-close marker, as a kill -9 leaves it.
 */
export function outboxesPerTest() {
  const dirs = tempDirs();
  const open: Pick<OpenOutbox, 'store' | 'outbox'>[] = [];
  afterEach(async () => {
    for (const o of open.splice(0)) {
      await o.outbox.close();
      o.store.close();
    }
    dirs.cleanup();
  });
  const make = (o: OutboxOpening = {}): OpenOutbox => {
    const clock = o.clock ?? new FakeClock();
    const path = o.path ?? join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock, integrityCheck: o.integrityCheck ?? 'inline', ...(o.synchronous ? { synchronous: o.synchronous } : {}) });
    const outbox = new Outbox({
      store,
      clock,
      ids: new IdGenerator(() => clock.now()),
      logger: o.logger ?? silentLogger(),
      limits: { maxCount: 100_000, maxBytes: 64 * 1_048_576 },
      disk: { minFreeBytes: 0 },
      groupCommit: { windowMs: 0 },
      ...o.overrides,
    });
    const env = { store, outbox, clock, path };
    open.push(env);
    return env;
  };
  const close = async (env: OpenOutbox, how: { crash?: boolean } = {}): Promise<void> => {
    await env.outbox.close();
    if (how.crash) env.store.db.close();
    else env.store.close();
    open.splice(open.indexOf(env), 1);
  };
  /** Closes, after the test, a store and outbox the test built itself. */
  const track = (env: Pick<OpenOutbox, 'store' | 'outbox'>): void => void open.push(env);
  return { make, close, track, dirs };
}
