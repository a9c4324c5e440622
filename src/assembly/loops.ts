import type { Clock } from '../util/clock.js';
import type { AgentParts } from './parts.js';

/** Starts every loop of the agent under its LoopRunner, in the order they have always started. */
export function startLoops(p: AgentParts): void {
  const { core, workloads, queueing, mqtt, cloud } = p;
  const { loops, clock, disk } = core;
  // Loops that send the device key wait until there is one (registration: docs/lifecycle.md); the rest run locally meanwhile.
  const registrar = cloud?.registrar;
  const keyed = (run: (s: AbortSignal) => Promise<void>) => (registrar ? async (s: AbortSignal) => registrar.ready(s).then(() => (s.aborted ? undefined : run(s))) : run);
  if (registrar) loops.start('registration', (s) => registrar.run(s));
  loops.start('clock-sync', (s) => core.clockSync.run(s));
  loops.start('reconciler', (s) => workloads.reconciler.run(s));
  loops.start('logs', (s) => p.logs.run(s));
  const link = queueing.link;
  if (link) loops.start('link', (s) => link.run(s));
  for (const f of queueing.flushers.all) loops.start(`flush-${f.stats().sink}`, keyed((s) => f.run(s)));
  if (mqtt) loops.start('mqtt', keyed((s) => mqtt.start(s)));
  const sampler = queueing.sampler;
  if (sampler) loops.start('metrics', (s) => sampler.run(s));
  // TTLs lapse whether or not anything is enqueued or sent.
  loops.start('outbox-expiry', every(clock, 60_000, () => queueing.outbox.expire()));
  // The counters' copy outside the database follows it (written now, then when a counter changed).
  loops.start('outbox-counters', (s) => queueing.counters.run(s));
  if (disk) {
    disk.check();
    loops.start('disk', every(clock, 5_000, () => disk.check()));
  }
  if (!cloud) return;
  loops.start('target-state', keyed((s) => cloud.poller.run(s)));
  loops.start('secrets', keyed((s) => cloud.secrets.run(s)));
  const jobs = cloud.jobs;
  if (jobs) loops.start('jobs', keyed((s) => jobs.poller.run(s)));
  const shadowPoller = cloud.shadowPoller;
  if (shadowPoller) loops.start('shadow-desired', keyed((s) => shadowPoller.run(s)));
  loops.start('state-report', (s) => cloud.reporter.run(s));
  loops.start('health-report', (s) => cloud.health.run(s));
}

/** A loop that calls `tick` every `ms` until its signal aborts. */
function every(clock: Pick<Clock, 'sleep'>, ms: number, tick: () => unknown): (signal: AbortSignal) => Promise<void> {
  return async (s) => {
    while (!s.aborted) {
      await clock.sleep(ms, s).catch(() => undefined);
      if (!s.aborted) tick();
    }
  };
}
