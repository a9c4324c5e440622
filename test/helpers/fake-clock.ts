import { abortError, type Clock } from '../../src/util/clock.js';

interface Sleeper {
  due: number;
  seq: number;
  resolve: () => void;
}

/**
 * A deterministic clock for unit tests and simulations. Time moves only when `advance` is called;
 * sleepers whose deadline is reached are woken in deadline order, and the promise queue is drained
 * between wake-ups so that code awaiting a sleep can schedule its next one inside the same advance.
 */
export class FakeClock implements Clock {
  private mono = 0;
  private wall: number;
  /** `mono` when the current (fake) boot began, less the uptime it had then. */
  private bootOrigin = 0;
  private boots = 0;
  private sleepers: Sleeper[] = [];
  private seq = 0;

  constructor(startWallMs = Date.UTC(2026, 0, 1)) {
    this.wall = startWallMs;
  }

  now(): number {
    return this.wall;
  }

  monotonic(): number {
    return this.mono;
  }

  uptime(): number {
    return this.mono - this.bootOrigin;
  }

  bootId(): string {
    return `fake-boot-${this.boots}`;
  }

  /**
   * A (faked) reboot: a new boot id, uptime restarts at `uptimeMs`, the wall clock moves by `wallDeltaMs`
   * (the downtime as an RTC would count it, or a step to 1970 without one). `monotonic()` goes on, so
   * sleepers of the test itself are unaffected.
   */
  reboot(opts: { uptimeMs?: number; wallDeltaMs?: number; wallMs?: number } = {}): void {
    this.boots++;
    this.bootOrigin = this.mono - (opts.uptimeMs ?? 0);
    if (opts.wallMs !== undefined) this.wall = opts.wallMs;
    else this.wall += opts.wallDeltaMs ?? 0;
  }

  /** Moves the wall clock only (an NTP correction); monotonic time is untouched. */
  jumpWall(deltaMs: number): void {
    this.wall += deltaMs;
  }

  get pendingSleepers(): number {
    return this.sleepers.length;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      const sleeper: Sleeper = {
        due: this.mono + Math.max(0, ms),
        seq: this.seq++,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.sleepers = this.sleepers.filter((s) => s !== sleeper);
        reject(abortError(signal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.sleepers.push(sleeper);
    });
  }

  /** Advances both clocks by `ms`, waking every sleeper that falls due on the way, in order. */
  async advance(ms: number): Promise<void> {
    const target = this.mono + ms;
    for (;;) {
      await flushMicrotasks();
      const next = this.earliest();
      if (!next || next.due > target) break;
      this.wall += next.due - this.mono;
      this.mono = next.due;
      this.sleepers = this.sleepers.filter((s) => s !== next);
      next.resolve();
    }
    this.wall += target - this.mono;
    this.mono = target;
    await flushMicrotasks();
  }

  private earliest(): Sleeper | undefined {
    let best: Sleeper | undefined;
    for (const s of this.sleepers) {
      if (!best || s.due < best.due || (s.due === best.due && s.seq < best.seq)) best = s;
    }
    return best;
  }
}

/**
 * Lets woken code run until it blocks again (on the next sleep). A macrotask turn drains every
 * queued microtask, however long the chain of awaits between a wake-up and the next sleep.
 */
async function flushMicrotasks(): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
}
