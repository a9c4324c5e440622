import { describe, expect, it } from 'vitest';
import type { CloudRequest, CloudResponse } from '../../src/cloud/http-client.js';
import { JobPoller } from '../../src/jobs/poller.js';
import { JobRunner } from '../../src/jobs/runner.js';
import type { JobUpdatePayload } from '../../src/jobs/types.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { DegradationController } from '../../src/resilience/degradation.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { ShadowDesiredPoller } from '../../src/shadow/poller.js';
import { ShadowSync } from '../../src/shadow/sync.js';
import { seededRandom } from '../../src/util/random.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { FakeStatus } from '../helpers/fake-status.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { outboxesPerTest } from '../helpers/outbox-per-test.js';

/**
 * Graceful degradation with the real features it sheds (issue 13): the job poller and the shadow's
 * cloud sync, on a fake clock. The device API is a named stand-in (a function answering requests):
 * what is tested is when each part asks, and what it does while paused.
 */

const { make } = outboxesPerTest();

const THRESHOLD = 300_000;
const STAGGER = 10_000;
const INTERVAL = 60_000;

function setup() {
  const clock = new FakeClock();
  const random = seededRandom(7);
  const { store, outbox } = make({ clock, synchronous: 'normal' });
  // A job that takes ten minutes: fetched just before the cloud goes away, it outlives the pause.
  const runner = new JobRunner({
    db: store.db,
    outbox,
    handlers: { slow: async (_p, ctx) => { await clock.sleep(600_000, ctx.signal); return 'done'; } },
    clock,
    logger: silentLogger(),
  });
  const jobPolls: number[] = [];
  const shadowPolls: number[] = [];
  let jobAnswers: Array<CloudResponse<unknown>> = [{ status: 200, headers: {}, body: { id: 'j1', type: 'slow', params: {}, timeoutSeconds: 3_600 } }];
  const http = {
    request: async <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
      if (req.path.endsWith('/jobs/next')) {
        jobPolls.push(clock.monotonic());
        return (jobAnswers.shift() ?? { status: 204, headers: {}, body: undefined }) as CloudResponse<T>;
      }
      shadowPolls.push(clock.monotonic());
      return { status: 204, headers: {}, body: undefined } as CloudResponse<T>;
    },
  };
  const loop = () => ({
    http,
    uuid: 'dev-1',
    monitor: { markSuccess: () => undefined, markFailure: () => undefined },
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock, random }), sleeper: new Wakeup({ clock, random }), clock }),
    clock,
    logger: silentLogger(),
  });
  const jobs = new JobPoller({ ...loop(), random: () => 0, runner, pollIntervalMs: () => INTERVAL });
  const shadowPoller = new ShadowDesiredPoller({ ...loop(), random: () => 0, shadow: { applyCloudDesired: () => ({ applied: false, reason: 'none', conflicts: [] }) }, pollIntervalMs: () => INTERVAL });
  const cap = captureLogger();
  const sync = new ShadowSync({ poller: shadowPoller, logger: cap.logger });
  const status = new FakeStatus('online');
  const controller = new DegradationController({ status, clock, random, logger: cap.logger, enabled: true, thresholdMs: THRESHOLD, resumeStaggerMaxMs: STAGGER });
  controller.register(jobs, { order: 20 });
  controller.register(sync, { order: 30 });
  const ctl = new AbortController();
  const running = [controller.start(ctl.signal), jobs.run(ctl.signal), shadowPoller.run(ctl.signal)];
  const stop = async (): Promise<void> => {
    ctl.abort();
    await Promise.all(running);
  };
  const updates = (): string[] =>
    outbox
      .peekBatch({ maxCount: 100, lease: false })
      .filter((m) => m.channel === 'jobs')
      .map((m) => {
        const u = m.payload as unknown as JobUpdatePayload;
        return `${u.jobId}:${u.status}`;
      });
  return { clock, status, controller, jobs, sync, jobPolls, shadowPolls, updates, stop, cap, setJobAnswers: (a: typeof jobAnswers) => (jobAnswers = a) };
}

describe('graceful degradation of jobs and the shadow', () => {
  it('offline beyond the threshold: jobs stop being asked for and the shadow goes local; a job under way finishes and its result waits in the outbox', async () => {
    const t = setup();
    await t.clock.advance(0);
    expect(t.jobPolls).toEqual([0]);
    expect(t.shadowPolls).toEqual([0]);
    t.status.set('offline'); // at 1 s after the start below
    await t.clock.advance(THRESHOLD - 1);
    expect(t.controller.mode()).toBe('normal');
    await t.clock.advance(1);
    expect(t.controller.mode()).toBe('degraded');
    expect(t.controller.reason()).toBe('offline for 300 s (threshold 300 s)');
    expect(t.controller.features()).toEqual([
      { name: 'jobs', order: 20, paused: true },
      { name: 'shadow', order: 30, paused: true },
    ]);
    expect(t.jobs.paused).toBe(true);
    expect(t.sync.mode).toBe('local');
    const shadowPollsAtPause = t.shadowPolls.length;
    // The job fetched before the outage runs to its end (10 min) and reports through the outbox.
    await t.clock.advance(600_000);
    expect(t.updates()).toEqual(['j1:IN_PROGRESS', 'j1:SUCCEEDED']);
    // Hours offline: nothing is asked of the cloud by the paused features.
    await t.clock.advance(6 * 3_600_000);
    expect(t.jobPolls).toEqual([0]);
    expect(t.shadowPolls).toHaveLength(shadowPollsAtPause);
    // A notify while paused (an MQTT jobs/notify) does not poll either.
    t.jobs.pollNow();
    await t.clock.advance(0);
    expect(t.jobPolls).toEqual([0]);
    await t.stop();
  });

  it('back online: each resumes after its own stagger delay, the last paused first, and polls at once', async () => {
    const t = setup();
    await t.clock.advance(0);
    t.status.set('offline');
    await t.clock.advance(THRESHOLD + 700_000);
    expect(t.controller.mode()).toBe('degraded');
    const back = t.clock.monotonic();
    const jobPollsBefore = t.jobPolls.length;
    const shadowPollsBefore = t.shadowPolls.length;
    t.status.set('online');
    await t.clock.advance(0);
    await t.clock.advance(STAGGER);
    expect(t.controller.mode()).toBe('normal');
    expect(t.jobs.paused).toBe(false);
    expect(t.sync.mode).toBe('cloud');
    const jobPoll = t.jobPolls[jobPollsBefore];
    const shadowPoll = t.shadowPolls[shadowPollsBefore];
    expect(jobPoll).toBeDefined();
    expect(shadowPoll).toBeDefined();
    // Within the stagger window, and the shadow (paused last) before the jobs.
    expect(jobPoll! - back).toBeLessThanOrEqual(STAGGER);
    expect(shadowPoll! - back).toBeLessThanOrEqual(STAGGER);
    expect(shadowPoll!).toBeLessThanOrEqual(jobPoll!);
    // Two random delays: a fleet does not come back in step (seeded here, so they differ).
    expect(jobPoll).not.toBe(shadowPoll);
    expect(t.cap.text()).toContain('leaving degraded mode: features resumed');
    // Then the ordinary interval again.
    await t.clock.advance(INTERVAL);
    expect(t.jobPolls.length).toBe(jobPollsBefore + 2);
    await t.stop();
  });

  it('offline again during the resumes: what was not resumed yet stays paused', async () => {
    const t = setup();
    await t.clock.advance(0);
    t.status.set('offline');
    await t.clock.advance(THRESHOLD);
    t.status.set('online');
    await t.clock.advance(0);
    t.status.set('offline');
    await t.clock.advance(STAGGER);
    expect(t.controller.mode()).toBe('degraded');
    expect(t.jobs.paused || t.sync.mode === 'local').toBe(true);
    await t.stop();
  });

  it('a job poller resumed while it waits out its interval asks at once, not at the end of the interval', async () => {
    const t = setup();
    t.setJobAnswers([]);
    await t.clock.advance(0);
    expect(t.jobPolls).toEqual([0]);
    await t.clock.advance(10_000);
    t.jobs.pause();
    await t.clock.advance(10_000);
    t.jobs.resume();
    await t.clock.advance(0);
    expect(t.jobPolls).toEqual([0, 20_000]);
    await t.stop();
  });
});
