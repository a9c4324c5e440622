import { describe, expect, it } from 'vitest';
import { BOOT_ID_FILE, readBootId, systemClock } from '../../src/util/clock.js';
import { FakeClock } from '../helpers/fake-clock.js';

/** The clock's boot: the kernel's boot id (or one per process), uptime across a faked reboot. */

describe('boot id and uptime', () => {
  it('reads the kernel boot id, trimmed; without one, an id of this process (a restart counts as a reboot)', () => {
    const asked: string[] = [];
    expect(readBootId((p) => (asked.push(p), 'b6f1c8e2-0000-4000-8000-000000000001\n'))).toBe('b6f1c8e2-0000-4000-8000-000000000001');
    expect(asked).toEqual([BOOT_ID_FILE]);
    const none = readBootId(() => {
      throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
    });
    expect(none).toMatch(new RegExp(`^process-${process.pid}-\\d+$`));
    expect(readBootId(() => '  \n')).toBe(none);
  });

  it('the system clock: the same boot id each time, an uptime that does not go backwards', () => {
    expect(systemClock.bootId()).toBe(systemClock.bootId());
    const a = systemClock.uptime();
    const b = systemClock.uptime();
    expect(b).toBeGreaterThanOrEqual(a);
    expect(a).toBeGreaterThan(0);
  });

  it('a faked reboot: a new boot id, uptime restarts, the wall clock moves as told, monotonic time goes on', async () => {
    const clock = new FakeClock(1_000_000);
    await clock.advance(5_000);
    const [id, mono] = [clock.bootId(), clock.monotonic()];
    clock.reboot({ uptimeMs: 300, wallDeltaMs: -999_000 });
    expect(clock.bootId()).not.toBe(id);
    expect(clock.uptime()).toBe(300);
    expect(clock.now()).toBe(6_000);
    expect(clock.monotonic()).toBe(mono);
    await clock.advance(100);
    expect(clock.uptime()).toBe(400);
  });
});
