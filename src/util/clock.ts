import { readFileSync } from 'node:fs';

/**
 * Time, injected. Every part that schedules or measures takes a Clock so that unit tests run on
 * fake time and a wall-clock jump (NTP sync after a week offline, an RTC-less boot at 1970) never
 * stalls or storms a schedule: durations and deadlines use `monotonic()`, timestamps people read
 * use `now()`. What must outlive the process (an outbox message's age) uses `uptime()` within the
 * boot named by `bootId()`.
 */
export interface Clock {
  /** Wall-clock epoch milliseconds, for timestamps in reports and logs. */
  now(): number;
  /** Milliseconds from an arbitrary origin that never goes backwards; for durations and schedules. */
  monotonic(): number;
  /** Milliseconds since the machine booted, never going backwards: the same clock for every process of one boot. */
  uptime(): number;
  /** Names the current boot of the machine: it changes when the machine reboots (and only then, where the OS says). */
  bootId(): string;
  /** Resolves after `ms` of monotonic time; rejects with an AbortError when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export function abortError(signal?: AbortSignal): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error) return reason;
  const err = new Error('aborted');
  err.name = 'AbortError';
  return err;
}

export function isAbortError(err: unknown): boolean {
  return err instanceof Error && err.name === 'AbortError';
}

export const BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';

/**
 * The kernel's boot id (Linux); where there is none, an id of this process, so a restart counts as
 * a reboot: the cautious reading (an age is then carried by what was last written, never guessed).
 */
export function readBootId(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): string {
  try {
    const id = read(BOOT_ID_FILE).trim();
    if (id.length > 0) return id;
  } catch {
    // not Linux, or /proc not mounted
  }
  return `process-${process.pid}-${Math.round(performance.timeOrigin)}`;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  // libuv's hrtime is CLOCK_MONOTONIC on Linux (mach_absolute_time on macOS): it counts from the boot.
  uptime: () => Number(process.hrtime.bigint() / 1000n) / 1000,
  // Read when asked: the outbox asks once, at open.
  bootId: () => readBootId(),
  sleep(ms, signal) {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(abortError(signal));
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, Math.max(0, ms));
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  },
};
