import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Outbox } from '../../src/outbox/outbox.js';
import { isOutboxError } from '../../src/outbox/types.js';
import { Store } from '../helpers/store.js';
import { systemClock } from '../../src/util/clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { errorMessage } from '../../src/util/errors.js';
import { fillDisk } from '../../bench/chaos/disk.js';
import { captureLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The outbox on a real, small filesystem (a 6 MiB tmpfs mounted for the test): it stops growing at
 * the free-disk watermark and reports what it dropped; a write that still hits ENOSPC gives the
 * producer OUTBOX_DISK_FULL and loses nothing queued; once space returns, enqueue works again.
 * Mounting needs root: without it this test fails, saying so (it is never skipped).
 */

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const dirs = tempDirs();
let mnt = '';
let mounted = false;
let store: Store | undefined;

beforeAll(() => {
  if (!isRoot) return;
  mnt = dirs.make('iotistic-tmpfs-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m,mode=0700', 'tmpfs', mnt]);
  mounted = true;
});

afterAll(() => {
  try {
    store?.close();
  } catch {
    // the test already failed; unmounting matters more
  }
  if (mounted) execFileSync('umount', [mnt]);
  dirs.cleanup();
});

describe('outbox on a full disk', () => {
  it('stops growing at the watermark, reports drops, survives ENOSPC without loss, and recovers', { timeout: 60_000 }, async () => {
    if (!isRoot) {
      throw new Error(`outbox-disk-full.test.ts needs root to mount a tmpfs (mount -t tmpfs); running as uid ${process.getuid?.()}. Run the tests as root (CI does).`);
    }
    const { logger, records } = captureLogger('info');
    store = Store.open({ path: join(mnt, 'agent.db'), logger, clock: systemClock, synchronous: 'full' });
    const outbox = new Outbox({
      store,
      clock: systemClock,
      ids: new IdGenerator(),
      logger,
      limits: { maxCount: 1_000_000, maxBytes: 1 << 30 },
      disk: { minFreeBytes: 1_536 * 1024, checkIntervalMs: 100, checkEveryBytes: 32 * 1024 },
      groupCommit: { windowMs: 1 },
      // The default at the watermark is to refuse; this test is about replacing older messages.
      onLimit: { disk: 'drop-oldest' },
    });
    const payload = (): string => randomBytes(768).toString('base64'); // ~1 KiB, incompressible

    // 1. Fill until the watermark: the queue then stops growing and replaces its oldest telemetry.
    const accepted: string[] = [];
    for (let round = 0; round < 400 && outbox.stats().drops.disk < 200; round++) {
      const results = await Promise.allSettled(Array.from({ length: 16 }, () => outbox.enqueue({ channel: 'telemetry', payload: payload() })));
      for (const r of results) {
        if (r.status === 'fulfilled') accepted.push(r.value.id);
        else expect.fail(`telemetry should be accepted by replacing older telemetry, got: ${errorMessage(r.reason)}`);
      }
    }
    let s = outbox.stats();
    expect(s.disk.low).toBe(true);
    expect(s.channels.telemetry!.drops.disk).toBeGreaterThanOrEqual(200);
    // Every accepted message is either queued or counted as dropped, and the queue holds the newest.
    expect(s.depth + s.drops.disk).toBe(accepted.length);
    const queued = outbox.peekBatch({ maxCount: 1_000_000, lease: false }).map((m) => m.id);
    expect(queued).toEqual(accepted.slice(accepted.length - s.depth));
    expect(records().some((r) => r.level === 40 && String(r.msg).startsWith('disk space low'))).toBe(true);

    // 2. Nothing less important than what is queued can make room: a clear refusal.
    const low = await outbox.enqueue({ channel: 'metrics', payload: { cpu: 1 } }).catch((e: unknown) => e);
    expect(isOutboxError(low, 'OUTBOX_DISK_LOW')).toBe(true);
    expect((low as Error).message).toMatch(/disk space low: .* under the watermark of 1\.5 MiB/);

    // 3. The disk fills up for real (another process wrote a file): the write fails with ENOSPC,
    //    the producer gets OUTBOX_DISK_FULL, and what was queued is all still there.
    const filler = fillDisk(mnt);
    const before = outbox.peekBatch({ maxCount: 1_000_000, lease: false }).map((m) => m.id);
    const full = await Promise.all(
      Array.from({ length: 8 }, () => outbox.enqueue({ channel: 'events', payload: { big: randomBytes(6_000).toString('base64') } }).catch((e: unknown) => e)),
    );
    expect(full.every((e) => isOutboxError(e, 'OUTBOX_DISK_FULL')), full.map((e) => errorMessage(e)).join('\n')).toBe(true);
    expect(errorMessage(full[0])).toMatch(/disk holding .* is full .*rolled back and nothing queued before was lost/);
    expect(outbox.peekBatch({ maxCount: 1_000_000, lease: false }).map((m) => m.id)).toEqual(before);
    expect(outbox.stats().depth).toBe(before.length);
    expect(store.db.pragma('quick_check', { simple: true })).toBe('ok');

    // 4. Space returns (the file goes, the backlog is delivered): enqueue works again, no drops.
    rmSync(filler);
    let delivered = 0;
    for (let batch = outbox.peekBatch({ maxCount: 200 }); batch.length > 0; batch = outbox.peekBatch({ maxCount: 200 })) {
      delivered += outbox.ack(batch.map((m) => m.id));
    }
    expect(delivered).toBe(before.length);
    await new Promise((r) => setTimeout(r, 150)); // past checkIntervalMs
    const dropsBefore = outbox.stats().drops.disk;
    const back = await Promise.all(Array.from({ length: 20 }, (_, i) => outbox.enqueue({ channel: i % 2 ? 'metrics' : 'telemetry', payload: payload() })));
    expect(back).toHaveLength(20);
    s = outbox.stats();
    expect(s.disk.low).toBe(false);
    expect(s.depth).toBe(20);
    expect(s.drops.disk).toBe(dropsBefore);
    expect(s.delivered).toBe(delivered);
    await outbox.close();
  });
});
