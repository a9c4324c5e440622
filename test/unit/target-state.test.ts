import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { CloudRequest, CloudResponse } from '../../src/cloud/http-client.js';
import { CloudAnswerRefused, CloudError } from '../../src/resilience/cloud-error.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { TargetStatePoller, type TargetRejection } from '../../src/cloud/target-state.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { seededRandom } from '../../src/util/random.js';
import type { TargetState } from '../../src/workloads/target-schema.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The target-state poll as the cloud sees it (the requests the agent sends) and as the device sees it
 * (what is stored, what is handed on to be applied). The cloud is a scripted stand-in that records requests.
 */

const dirs = tempDirs();
const stores: Store[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  dirs.cleanup();
});

type Answer = CloudResponse | Error;

class ScriptedCloud {
  requests: CloudRequest[] = [];
  constructor(private readonly answers: Answer[] = []) {}
  answer(...a: Answer[]): void {
    this.answers.push(...a);
  }
  async request<T>(req: CloudRequest): Promise<CloudResponse<T>> {
    this.requests.push(req);
    const a = this.answers.shift();
    if (!a) throw new Error('the test gave the cloud no answer for this request');
    if (a instanceof Error) throw a;
    return a as CloudResponse<T>;
  }
  ifNoneMatch(i: number): string | undefined {
    return this.requests[i]?.headers?.['if-none-match'];
  }
}

const ok = (doc: unknown, etag?: string | string[]): CloudResponse => ({ status: 200, headers: etag === undefined ? {} : { etag }, body: doc });
const notModified = (etag: string): CloudResponse => ({ status: 304, headers: { etag }, body: undefined });
const valid = (version: number) => ({ version, apps: { a: { services: { web: { image: 'nginx:1', ports: ['8080:80'] } } } } });
/** Invalid as a whole: one bad service among good ones. */
const invalid = (version: number) => ({ version, apps: { a: { services: { web: { image: 'nginx:1' }, api: { runtime: 'kubernetes', image: 'x' } } } } });

function setup(opts: { uuid?: string; policy?: { allowPrivileged?: boolean }; maxTargetBytes?: number; answers?: Answer[]; logger?: ReturnType<typeof silentLogger> } = {}) {
  const clock = new FakeClock();
  const random = seededRandom(3);
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  stores.push(store);
  const cloud = new ScriptedCloud(opts.answers);
  const applied: TargetState[] = [];
  const rejections: TargetRejection[] = [];
  const marks: string[] = [];
  const poller = new TargetStatePoller({
    http: cloud,
    uuid: opts.uuid ?? 'dev-1',
    monitor: {
      markSuccess: (ch, op) => marks.push(`ok ${ch} ${op}`),
      markFailure: (ch, op, err, kind) => marks.push(`fail ${ch} ${op} ${kind}: ${err}`),
    },
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock, random }), sleeper: new Wakeup({ clock, random }), clock }),
    clock,
    logger: opts.logger ?? silentLogger(),
    store,
    random,
    pollIntervalMs: () => 10_000,
    onTarget: (t) => applied.push(t),
    onRejected: (r) => rejections.push(r),
    ...(opts.policy ? { policy: opts.policy } : {}),
    ...(opts.maxTargetBytes ? { maxTargetBytes: opts.maxTargetBytes } : {}),
  });
  return { clock, store, cloud, applied, rejections, marks, poller };
}

describe('target-state poll', () => {
  it('asks for the device\'s own document, stores a valid one with its ETag, then hands it on', async () => {
    const t = setup({ uuid: 'dev 1/x', answers: [ok(valid(1), '"e1"')] });
    await t.clock.advance(5_000);
    expect(await t.poller.pollOnce()).toBe('changed');
    const req = t.cloud.requests[0];
    expect(req).toMatchObject({ method: 'GET', path: '/device/v1/dev%201%2Fx/state', accept: [304], maxBytes: { setting: 'limits.maxTargetBytes' } });
    expect(req?.headers).toEqual({});
    expect(t.store.getTarget()).toMatchObject({ etag: '"e1"', version: 1, source: 'cloud', document: { version: 1 } });
    expect(t.applied.map((a) => a.version)).toEqual([1]);
    expect(t.poller.lastPollAt).toBe(t.clock.now());
    expect(t.marks).toEqual(['ok api poll']);
  });

  it('sends the ETag it holds; a 304 keeps the target and applies nothing again', async () => {
    const t = setup({ answers: [ok(valid(1), '"e1"'), notModified('"e1"'), notModified('"e1"')] });
    await t.poller.pollOnce();
    expect(await t.poller.pollOnce()).toBe('unchanged');
    expect(await t.poller.pollOnce()).toBe('unchanged');
    expect([1, 2].map((i) => t.cloud.ifNoneMatch(i))).toEqual(['"e1"', '"e1"']);
    expect(t.store.getTarget()).toMatchObject({ etag: '"e1"', version: 1 });
    expect(t.applied).toHaveLength(1);
  });

  it('takes the first ETag of a repeated header, and polls without one after a document that had none', async () => {
    const t = setup({ answers: [ok(valid(1), ['"a"', '"b"']), ok(valid(2)), ok(valid(3))] });
    await t.poller.pollOnce();
    expect(t.store.getTarget()?.etag).toBe('"a"');
    await t.poller.pollOnce();
    expect(t.cloud.ifNoneMatch(1)).toBe('"a"');
    expect(t.store.getTarget()).toMatchObject({ etag: null, version: 2 });
    await t.poller.pollOnce();
    expect(t.cloud.requests[2]?.headers).toEqual({});
  });

  it('never stores or hands on a rejected target, says why, and does not fetch it again', async () => {
    const t = setup({ answers: [ok(valid(1), '"e1"'), ok(invalid(2), '"e2"'), notModified('"e2"')] });
    await t.poller.pollOnce();
    await t.clock.advance(1_000);
    expect(await t.poller.pollOnce()).toBe('rejected');
    expect(t.applied.map((a) => a.version)).toEqual([1]);
    expect(t.store.getTarget()).toMatchObject({ etag: '"e1"', version: 1, document: valid(1) });
    expect(t.rejections).toHaveLength(1);
    expect(t.poller.lastRejection).toBe(t.rejections[0]);
    expect(t.rejections[0]).toMatchObject({ at: t.clock.now(), etag: '"e2"', issues: [{ path: 'apps.a.services.api.runtime' }] });
    expect(t.rejections[0]?.message).toContain('apps.a.services.api.runtime: expected one of "docker", "process", "auto", got "kubernetes"');
    // The cloud is reachable: a refused document is not a failed poll.
    expect(t.marks).toEqual(['ok api poll', 'ok api poll']);
    // The next poll names the refused document, so that the cloud does not send it again.
    expect(await t.poller.pollOnce()).toBe('unchanged');
    expect(t.cloud.ifNoneMatch(2)).toBe('"e2"');
    expect(t.applied).toHaveLength(1);
  });

  it('keeps the refused ETag in the database under the key earlier agents wrote, across an upgrade', async () => {
    // The key is part of the on-disk format: an agent upgraded on a device must go on naming the
    // document its predecessor refused, not download it again.
    const t = setup({ answers: [notModified('"old-refused"'), ok(invalid(2), '"e2"'), ok(valid(3), '"e3"')] });
    t.store.setKv('target.rejectedEtag', '"old-refused"');
    expect(await t.poller.pollOnce()).toBe('unchanged');
    expect(t.cloud.ifNoneMatch(0)).toBe('"old-refused"');
    await t.poller.pollOnce();
    expect(t.store.getKv('target.rejectedEtag')).toBe('"e2"');
    await t.poller.pollOnce();
    expect(t.store.getKv('target.rejectedEtag')).toBeNull();
  });

  it('after a rejection, a good target is applied and the poll goes back to its ETag', async () => {
    const t = setup({ answers: [ok(valid(1), '"e1"'), ok(invalid(2), '"e2"'), ok(valid(3), '"e3"'), notModified('"e3"')] });
    await t.poller.pollOnce();
    await t.poller.pollOnce();
    expect(await t.poller.pollOnce()).toBe('changed');
    expect(t.poller.lastRejection).toBeUndefined();
    expect(t.applied.map((a) => a.version)).toEqual([1, 3]);
    await t.poller.pollOnce();
    expect(t.cloud.ifNoneMatch(3)).toBe('"e3"');
  });

  it('after a rejected document without an ETag, keeps polling with the ETag of the target in force', async () => {
    const t = setup({ answers: [ok(valid(1), '"e1"'), ok(invalid(2)), notModified('"e1"')] });
    await t.poller.pollOnce();
    expect(await t.poller.pollOnce()).toBe('rejected');
    expect(t.rejections[0]?.etag).toBeNull();
    await t.poller.pollOnce();
    expect(t.cloud.ifNoneMatch(2)).toBe('"e1"');
  });

  it('rejects what the local policy forbids, and accepts it where the policy allows', async () => {
    const doc = { version: 1, apps: { a: { services: { s: { image: 'x', privileged: true } } } } };
    const strict = setup({ answers: [ok(doc, '"p"')] });
    expect(await strict.poller.pollOnce()).toBe('rejected');
    expect(strict.rejections[0]?.message).toContain('workloads.allowPrivileged');
    const lax = setup({ policy: { allowPrivileged: true }, answers: [ok(doc, '"p"')] });
    expect(await lax.poller.pollOnce()).toBe('changed');
  });

  it('refuses a document over limits.maxTargetBytes like an invalid one, remembering its ETag', async () => {
    const refused = new CloudAnswerRefused('CLOUD_ANSWER_TOO_LARGE', 'the answer is larger than limits.maxTargetBytes', 200, { etag: ['"big"'] }, 'limits.maxTargetBytes', 1_000);
    const t = setup({ maxTargetBytes: 1_000, answers: [ok(valid(1), '"e1"'), refused, notModified('"big"')] });
    await t.poller.pollOnce();
    expect(t.cloud.requests[0]?.maxBytes).toEqual({ bytes: 1_000, setting: 'limits.maxTargetBytes' });
    expect(await t.poller.pollOnce()).toBe('rejected');
    expect(t.rejections[0]).toMatchObject({ etag: '"big"', issues: [{ path: '', source: 'cloud', expected: 'a document within limits.maxTargetBytes (1000)' }] });
    expect(t.store.getTarget()?.version).toBe(1);
    expect(t.marks).toEqual(['ok api poll', 'ok api poll']);
    expect(t.poller.lastError).toBeUndefined();
    await t.poller.pollOnce();
    expect(t.cloud.ifNoneMatch(2)).toBe('"big"');
  });

  it('marks a failed poll on the monitor with its kind and keeps the target; an aborted poll marks nothing', async () => {
    const t = setup({ answers: [ok(valid(1), '"e1"'), new CloudError('network', 'connect ECONNREFUSED'), new CloudError('http', 'HTTP 503', 503)] });
    await t.poller.pollOnce();
    await expect(t.poller.pollOnce()).rejects.toThrow('ECONNREFUSED');
    expect(t.poller.lastError).toBe('connect ECONNREFUSED');
    await expect(t.poller.pollOnce()).rejects.toThrow('HTTP 503');
    expect(t.marks).toEqual(['ok api poll', 'fail api poll transport: connect ECONNREFUSED', 'fail api poll answer: HTTP 503']);
    expect(t.store.getTarget()?.version).toBe(1);

    const ctl = new AbortController();
    ctl.abort();
    t.cloud.answer(new Error('aborted'));
    await expect(t.poller.pollOnce(ctl.signal)).rejects.toThrow('aborted');
    expect(t.cloud.requests[3]?.signal).toBe(ctl.signal);
    expect(t.marks).toHaveLength(3);
    t.cloud.answer(ok(valid(2), '"e2"'));
    await t.poller.pollOnce();
    expect(t.poller.lastError).toBeUndefined();
  });

  it('does not poll the cloud while a local target is in force', async () => {
    const t = setup();
    t.store.setTarget({ etag: null, version: 5, document: valid(5), source: 'local' });
    expect(await t.poller.pollOnce()).toBe('local-mode');
    expect(t.cloud.requests).toHaveLength(0);
  });

  it('runs: polls at once, then after the interval, and at once on pollNow()', async () => {
    const t = setup({ answers: [ok(valid(1), '"e1"'), notModified('"e1"'), ok(valid(2), '"e2"')] });
    const ctl = new AbortController();
    const done = t.poller.run(ctl.signal);
    await t.clock.advance(0);
    expect(t.cloud.requests).toHaveLength(1);
    await t.clock.advance(9_999);
    expect(t.cloud.requests).toHaveLength(1);
    await t.clock.advance(1_100);
    expect(t.cloud.requests).toHaveLength(2);
    t.poller.pollNow();
    await t.clock.advance(0);
    expect(t.cloud.requests).toHaveLength(3);
    expect(t.applied.map((a) => a.version)).toEqual([1, 2]);
    ctl.abort();
    await t.clock.advance(20_000);
    await done;
  });

  it('retries a failed poll after the backoff, saying in the log which loop failed', async () => {
    const cap = captureLogger();
    const t = setup({ logger: cap.logger, answers: [new CloudError('network', 'connect ECONNREFUSED'), ok(valid(1), '"e1"')] });
    const ctl = new AbortController();
    const done = t.poller.run(ctl.signal);
    await t.clock.advance(0);
    expect(t.cloud.requests).toHaveLength(1);
    expect(cap.records().some((r) => r.msg === 'target-state poll failed' && r.err === 'connect ECONNREFUSED')).toBe(true);
    await t.clock.advance(1_000);
    expect(t.applied.map((a) => a.version)).toEqual([1]);
    ctl.abort();
    await t.clock.advance(20_000);
    await done;
  });

  it('logs each new target with its version and ETag, and each rejection as an error with the reasons', async () => {
    const cap = captureLogger();
    const t = setup({ logger: cap.logger, answers: [ok(valid(1), '"e1"'), ok(invalid(2), '"e2"')] });
    await t.poller.pollOnce();
    await t.poller.pollOnce();
    const logs = cap.records();
    expect(logs.find((r) => r.msg === 'new target state stored')).toMatchObject({ version: 1, etag: '"e1"' });
    const rejected = logs.find((r) => String(r.msg).startsWith('target state rejected, keeping the last good one: '));
    expect(rejected).toMatchObject({ level: 50, etag: '"e2"', issues: [{ path: 'apps.a.services.api.runtime' }] });
    expect(rejected?.msg).toContain('apps.a.services.api.runtime: expected one of');
  });
});
