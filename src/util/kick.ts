import { isAbortError, type Clock } from './clock.js';

/** A sleep that the connectivity probe can cut short ('woken') when the way is open again. */
export interface WakeableSleep {
  /**
   * With `wokenSince` (an earlier `wakeCount`), a wake since then ends this sleep as if it came now;
   * with `pacedMs`, a wake ends it then if that is still ahead (see Wakeup.sleep).
   */
  sleep(ms: number, signal?: AbortSignal, opts?: WakeOptions): Promise<'elapsed' | 'woken'>;
  /** How many wakes there have been; absent when the sleep cannot tell. */
  readonly wakeCount?: number;
}

/** How a WakeableSleep treats a wake (see there). */
export interface WakeOptions {
  wokenSince?: number;
  pacedMs?: number;
}

function sleepOn(sleeper: WakeableSleep | Pick<Clock, 'sleep'>, ms: number, signal: AbortSignal, opts: WakeOptions): Promise<unknown> {
  if ((opts.wokenSince === undefined && opts.pacedMs === undefined) || !('wakeCount' in sleeper)) return sleeper.sleep(ms, signal);
  return sleeper.sleep(ms, signal, opts);
}

export type WaitResult = 'elapsed' | 'woken' | 'kicked' | 'aborted';

/**
 * The wait of a loop that someone else can end early: `kick()` (new work arrived: a notify, a
 * state change) ends the current or next wait with 'kicked'. With a `WakeableSleep` the wait also
 * ends with 'woken' when the probe sees the network back; `ms = Infinity` waits for a kick only.
 */
export class Kick {
  private current: AbortController | undefined;
  private pending = false;

  kick(): void {
    this.pending = true;
    this.current?.abort();
  }

  /** Clears a kick that arrived while the loop was busy (it is about to do the work anyway). */
  consume(): boolean {
    const was = this.pending;
    this.pending = false;
    return was;
  }

  /**
   * Waits `ms`. With `kickable: false` (a backoff after a failure) a kick does not end the wait: new
   * work must not turn every state change during an outage into a request; the kick stays pending.
   * `wokenSince` and `pacedMs` are passed to a WakeableSleep (see there).
   */
  async wait(ms: number, signal: AbortSignal, sleeper: WakeableSleep | Pick<Clock, 'sleep'>, opts: { kickable?: boolean } & WakeOptions = {}): Promise<WaitResult> {
    const wake: WakeOptions = { ...(opts.wokenSince !== undefined ? { wokenSince: opts.wokenSince } : {}), ...(opts.pacedMs !== undefined ? { pacedMs: opts.pacedMs } : {}) };
    if (signal.aborted) return 'aborted';
    if (opts.kickable === false) {
      try {
        const r = await sleepOn(sleeper, ms, signal, wake);
        return r === 'woken' ? 'woken' : 'elapsed';
      } catch (err) {
        if (signal.aborted || isAbortError(err)) return 'aborted';
        throw err;
      }
    }
    if (this.consume()) return 'kicked';
    const ctl = new AbortController();
    this.current = ctl;
    const both = AbortSignal.any([signal, ctl.signal]);
    try {
      if (!Number.isFinite(ms)) {
        await new Promise<void>((_, reject) => both.addEventListener('abort', () => reject(abortErr()), { once: true }));
        return 'kicked';
      }
      const r = await sleepOn(sleeper, ms, both, wake);
      return r === 'woken' ? 'woken' : 'elapsed';
    } catch (err) {
      if (signal.aborted) return 'aborted';
      if (ctl.signal.aborted) {
        this.pending = false;
        return 'kicked';
      }
      if (isAbortError(err)) return 'aborted';
      throw err;
    } finally {
      this.current = undefined;
    }
  }
}

function abortErr(): Error {
  const e = new Error('aborted');
  e.name = 'AbortError';
  return e;
}
