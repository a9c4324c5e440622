import { setMaxListeners } from 'node:events';
import { isAbortError, type Clock } from './clock.js';
import { errorMessage } from './errors.js';
import type { Logger } from './logger.js';

export type LoopState = 'running' | 'restarting' | 'stopped';

export interface LoopStatus {
  name: string;
  state: LoopState;
  restarts: number;
  lastError: string | null;
  lastErrorAt: number | null;
}

interface LoopEntry extends LoopStatus {
  done: Promise<void>;
}

/**
 * Runs the agent's long-lived loops under one AbortSignal. A loop that throws is logged and started
 * again after a pause that doubles up to a minute, so one broken part never takes the others (or the
 * process) down; `/v1/healthy` reports unhealthy while any loop is down.
 */
/** Listeners the loops' signal may hold before Node warns: a few per loop, for every loop the agent runs. */
const LOOP_SIGNAL_LISTENERS = 200;

export class LoopRunner {
  private readonly controller = new AbortController();
  private readonly loops = new Map<string, LoopEntry>();

  constructor(
    /** `onFailure` hears every error a loop throws (before its restart). */
    private readonly deps: { logger: Logger; clock: Clock; onFailure?: (loop: string, err: unknown) => void },
    private readonly restartDelayMs = { min: 1_000, max: 60_000 },
  ) {
    // Every loop waits on this one signal (a sleep, a paused gate, a request), twenty at once and
    // more: Node's warning at 11 listeners would report that as a leak. Each wait removes its own.
    setMaxListeners(LOOP_SIGNAL_LISTENERS, this.controller.signal);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  start(name: string, body: (signal: AbortSignal) => Promise<void>): void {
    if (this.loops.has(name)) throw new Error(`loop ${name} already started`);
    const entry: LoopEntry = { name, state: 'running', restarts: 0, lastError: null, lastErrorAt: null, done: Promise.resolve() };
    this.loops.set(name, entry);
    entry.done = this.supervise(entry, body);
  }

  private async supervise(entry: LoopEntry, body: (signal: AbortSignal) => Promise<void>): Promise<void> {
    const { signal } = this.controller;
    let delay = this.restartDelayMs.min;
    while (!signal.aborted) {
      entry.state = 'running';
      const startedAt = this.deps.clock.monotonic();
      try {
        await body(signal);
        if (signal.aborted) break;
        throw new Error('loop returned without being stopped');
      } catch (err) {
        if (signal.aborted && isAbortError(err)) break;
        if (signal.aborted) break;
        // A loop that ran well for a while before failing starts its restart delay afresh.
        if (this.deps.clock.monotonic() - startedAt > this.restartDelayMs.max) delay = this.restartDelayMs.min;
        entry.state = 'restarting';
        entry.restarts++;
        entry.lastError = errorMessage(err);
        entry.lastErrorAt = this.deps.clock.now();
        this.deps.logger.error({ loop: entry.name, err: entry.lastError, restartInMs: delay }, `loop ${entry.name} failed; restarting`);
        try {
          this.deps.onFailure?.(entry.name, err);
        } catch {
          // A listener's failure is not the loop's.
        }
        try {
          await this.deps.clock.sleep(delay, signal);
        } catch {
          break;
        }
        delay = Math.min(delay * 2, this.restartDelayMs.max);
      }
    }
    entry.state = 'stopped';
  }

  status(): LoopStatus[] {
    return [...this.loops.values()].map(({ done: _done, ...s }) => ({ ...s }));
  }

  healthy(): boolean {
    return [...this.loops.values()].every((l) => l.state === 'running');
  }

  /** Aborts every loop and waits for them, at most `timeoutMs`. Returns the names still running. */
  async stop(timeoutMs = 5_000): Promise<string[]> {
    this.controller.abort();
    const all = Promise.all([...this.loops.values()].map((l) => l.done));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => {
      timer = setTimeout(() => r('timeout'), timeoutMs);
    });
    const r = await Promise.race([all.then(() => 'ok' as const), timeout]);
    clearTimeout(timer);
    return r === 'ok' ? [] : [...this.loops.values()].filter((l) => l.state !== 'stopped').map((l) => l.name);
  }
}
