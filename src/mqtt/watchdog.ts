import type { Clock } from '../util/clock.js';

export interface SilenceWatch {
  clock: Pick<Clock, 'monotonic' | 'sleep'>;
  keepAliveMs: number;
  /** Monotonic time of the latest packet from the broker. */
  lastRx: () => number;
  /** Ends the watch (the connection closed). */
  signal: AbortSignal;
}

/**
 * Calls `silent` (once, then returns) when nothing came from the broker for 1.5 x keep-alive: the
 * bound on a half-open connection, on the injected clock (see `ConnectionLife.watch`).
 */
export async function watchSilence(w: SilenceWatch, silent: (silentForMs: number) => void): Promise<void> {
  const limit = w.keepAliveMs * 1.5;
  while (!w.signal.aborted) {
    const silentFor = w.clock.monotonic() - w.lastRx();
    if (silentFor >= limit) {
      silent(Math.round(silentFor));
      return;
    }
    try {
      await w.clock.sleep(limit - silentFor, w.signal);
    // Stryker disable next-line BlockStatement: the sleep rejects only once the watchdog is aborted, which the loop's head checks as well
    } catch {
      return;
    }
  }
}
