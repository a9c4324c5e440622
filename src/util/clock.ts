/**
 * Time, injected. Every part that schedules or measures takes a Clock so that unit tests run on
 * fake time and a wall-clock jump (NTP sync after a week offline, an RTC-less boot at 1970) never
 * stalls or storms a schedule: durations and deadlines use `monotonic()`, timestamps people read
 * use `now()`.
 */
export interface Clock {
  /** Wall-clock epoch milliseconds, for timestamps in reports and logs. */
  now(): number;
  /** Milliseconds from an arbitrary origin that never goes backwards; for durations and schedules. */
  monotonic(): number;
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

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
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
