import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { adminClient, AdminHttpError, spawnDevCloud } from '../helpers/devcloud.js';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: unknown;
}

interface CallOptions {
  key?: string | null;
  body?: unknown;
  raw?: Buffer | string;
  headers?: Record<string, string>;
  gzip?: boolean;
  dispatcher?: Agent;
  headersTimeout?: number;
}

/** A tiny device-side client: the real agent has its own, this one lets a test shape every byte. */
function deviceClient(baseUrl: () => string, uuid: string, defaultKey: string, agent: Agent) {
  return async (method: string, path: string, opts: CallOptions = {}): Promise<Answer> => {
    const headers: Record<string, string> = { ...opts.headers };
    const key = opts.key === undefined ? defaultKey : opts.key;
    if (key !== null) headers.authorization = `Bearer ${key}`;
    let body: Buffer | string | undefined = opts.raw;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    if (opts.gzip && body !== undefined) {
      body = gzipSync(body);
      headers['content-encoding'] = 'gzip';
    }
    const res = await request(`${baseUrl()}/device/v1/${uuid}/${path}`, {
      method: method as 'GET',
      headers,
      body,
      dispatcher: opts.dispatcher ?? agent,
      ...(opts.headersTimeout ? { headersTimeout: opts.headersTimeout } : {}),
    });
    const text = await res.body.text();
    let json: unknown;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.statusCode, headers: res.headers, text, json };
  };
}

function batch(ids: string[], channel = 'telemetry') {
  return { messages: ids.map((id, i) => ({ id, channel, ts: 1_700_000_000_000 + i, payload: { n: i } })) };
}

/** Retries `check` until it passes or `timeoutMs` runs out: real time on a busy machine is uneven. */
async function eventually<T>(check: () => Promise<T>, timeoutMs = 5000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (performance.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

let seq = 0;
const newUuid = (): string => `dev-${process.pid}-${++seq}`;

describe('devcloud (in process, real HTTP)', () => {
  let cloud: DevCloud;
  let agent: Agent;
  let uuid: string;
  let dev: ReturnType<typeof deviceClient>;

  beforeAll(async () => {
    cloud = await startDevCloud();
    agent = new Agent();
  });
  afterAll(async () => {
    await agent.close();
    await cloud.close();
  });
  beforeEach(async () => {
    await cloud.admin.clearFaults();
    uuid = newUuid();
    dev = deviceClient(() => cloud.url, uuid, 'key-1', agent);
  });

  describe('target state', () => {
    it('serves a default document with an ETag, answers 304 to a matching If-None-Match, and changes the ETag on every set', async () => {
      const first = await dev('GET', 'state');
      expect(first.status).toBe(200);
      expect(first.json).toEqual({ version: 0, apps: {} });
      const etag0 = first.headers.etag as string;
      expect(etag0).toMatch(/^"0-[0-9a-f]{16}"$/);

      const cached = await dev('GET', 'state', { headers: { 'if-none-match': etag0 } });
      expect(cached.status).toBe(304);
      expect(cached.text).toBe('');
      expect(cached.headers.etag).toBe(etag0);

      const target = { version: 3, apps: { a: { services: {} } } };
      const { etag } = cloud.admin.setTarget(uuid, target);
      expect(etag).not.toBe(etag0);
      const changed = await dev('GET', 'state', { headers: { 'if-none-match': etag0 } });
      expect(changed.status).toBe(200);
      expect(changed.headers.etag).toBe(etag);
      expect(changed.json).toEqual(target);

      // Weak comparison and lists, as RFC 9110 has it for If-None-Match.
      expect((await dev('GET', 'state', { headers: { 'if-none-match': `"x", W/${etag}` } })).status).toBe(304);

      // The same content set again is a new revision: a new ETag (documented).
      const again = cloud.admin.setTarget(uuid, target);
      expect(again.etag).not.toBe(etag);
      expect(again.revision).toBe(2);
    });

    it('accepts a target over the admin HTTP API', async () => {
      const admin = adminClient(cloud.adminUrl);
      const { etag } = await admin.setTarget(uuid, { version: 9, apps: {} });
      const got = await dev('GET', 'state');
      expect(got.headers.etag).toBe(etag);
      expect(got.json).toEqual({ version: 9, apps: {} });
      await expect(admin.setTarget(uuid, [] as unknown as Record<string, unknown>)).rejects.toThrow(/target: expected a JSON object/);
    });
  });

  describe('auth', () => {
    it('registers an unknown device on first use and rejects another key or no key with 401', async () => {
      expect((await dev('GET', 'state')).status).toBe(200);
      const wrong = await dev('GET', 'state', { key: 'other-key' });
      expect(wrong.status).toBe(401);
      expect(wrong.json).toMatchObject({ statusCode: 401, message: expect.stringContaining('does not match') });
      const missing = await dev('GET', 'state', { key: null });
      expect(missing.status).toBe(401);
      expect((missing.json as { message: string }).message).toMatch(/Authorization header/);
      expect((await dev('GET', 'state')).status).toBe(200);
    });

    it('without auto-provisioning, only devices the admin created get in', async () => {
      const strict = await startDevCloud({ autoProvision: false });
      try {
        const d = deviceClient(() => strict.url, uuid, 'key-1', agent);
        const denied = await d('GET', 'state');
        expect(denied.status).toBe(401);
        expect((denied.json as { message: string }).message).toMatch(/not registered/);
        expect(strict.admin.createDevice({ uuid, apiKey: 'key-1' })).toEqual({ uuid, created: true });
        expect((await d('GET', 'state')).status).toBe(200);
      } finally {
        await strict.close();
      }
    });

    it('protects the admin API with a token when one is set, except healthz', async () => {
      const guarded = await startDevCloud({ adminToken: 'secret-token' });
      try {
        await expect(adminClient(guarded.adminUrl).received(uuid)).rejects.toMatchObject({ status: 401 });
        expect(await adminClient(guarded.adminUrl).healthz()).toBe(true);
        const counts = await adminClient(guarded.adminUrl, { token: 'secret-token' }).received(uuid);
        expect(counts.messages.unique).toBe(0);
      } finally {
        await guarded.close();
      }
    });
  });

  describe('state reports', () => {
    it('stores a reportId once and answers a repeat as a duplicate', async () => {
      const body = { reportId: 'r-1', state: { status: 'applied', targetVersion: 3 } };
      const one = await dev('PATCH', 'state', { body, headers: { 'idempotency-key': 'r-1' } });
      expect(one.status).toBe(200);
      expect(one.json).toEqual({ reportId: 'r-1', duplicate: false });
      const two = await dev('PATCH', 'state', { body, headers: { 'idempotency-key': 'r-1' } });
      expect(two.json).toEqual({ reportId: 'r-1', duplicate: true });

      const counts = cloud.admin.received(uuid);
      expect(counts.reports).toMatchObject({ received: 2, unique: 1, duplicates: 1 });
      expect(counts.reports.last).toMatchObject({ reportId: 'r-1', state: body.state });
      expect(cloud.admin.reports(uuid).reports).toHaveLength(1);
    });

    it('requires Idempotency-Key to equal reportId', async () => {
      const body = { reportId: 'r-2', state: {} };
      const missing = await dev('PATCH', 'state', { body });
      expect(missing.status).toBe(400);
      expect((missing.json as { message: string }).message).toMatch(/^Idempotency-Key header: expected the reportId "r-2", got no header/);
      const other = await dev('PATCH', 'state', { body, headers: { 'idempotency-key': 'r-3' } });
      expect(other.status).toBe(400);
      const noState = await dev('PATCH', 'state', { body: { reportId: 'r-4' }, headers: { 'idempotency-key': 'r-4' } });
      expect((noState.json as { message: string }).message).toBe('state: expected a JSON object, got nothing');
    });
  });

  describe('messages', () => {
    it('dedupes a batch sent twice and accepts gzip', async () => {
      const ids = ['m1', 'm2', 'm3', 'm4', 'm5'];
      const first = await dev('POST', 'messages', { body: batch(ids) });
      expect(first.status).toBe(200);
      expect(first.json).toMatchObject({ accepted: ids, rejected: [] });
      const again = await dev('POST', 'messages', { body: batch(ids), gzip: true });
      expect(again.status).toBe(200);
      expect(again.json).toMatchObject({ accepted: ids, rejected: [] });
      await dev('POST', 'messages', { body: batch(['m6'], 'events'), gzip: true });

      const counts = cloud.admin.received(uuid).messages;
      expect(counts).toMatchObject({ received: 11, unique: 6, duplicates: 5, rejected: 0, batches: 3 });
      expect(counts.byChannel).toEqual({ telemetry: 5, events: 1 });

      // The cursor walks every stored message in arrival order.
      const page1 = cloud.admin.messages(uuid, { limit: 4 });
      expect(page1.more).toBe(true);
      const page2 = cloud.admin.messages(uuid, { after: page1.nextAfter, limit: 4 });
      expect(page2.more).toBe(false);
      expect([...page1.messages, ...page2.messages].map((m) => m.id)).toEqual([...ids, 'm6']);
      expect(page1.messages[0]).toMatchObject({ id: 'm1', channel: 'telemetry', ts: 1_700_000_000_000, payload: { n: 0 } });
      const viaHttp = await adminClient(cloud.adminUrl).allMessages(uuid);
      expect(viaHttp.map((m) => m.id)).toEqual([...ids, 'm6']);
    });

    it('rejects a body that is not gzip, with 400', async () => {
      const res = await dev('POST', 'messages', {
        raw: 'plainly not gzip',
        headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      });
      expect(res.status).toBe(400);
      expect((res.json as { message: string }).message).toMatch(/not valid gzip/);
    });

    it('rejects poisoned ids one by one with 422 and stores the rest', async () => {
      await cloud.admin.setFaults({ poisonMessageIds: ['p2', 'p4'] });
      const res = await dev('POST', 'messages', { body: batch(['p1', 'p2', 'p3', 'p4']) });
      expect(res.status).toBe(200);
      const json = res.json as { accepted: string[]; rejected: { id: string; status: number; reason: string }[] };
      expect(json.accepted).toEqual(['p1', 'p3']);
      expect(json.rejected.map((r) => [r.id, r.status])).toEqual([
        ['p2', 422],
        ['p4', 422],
      ]);
      expect(cloud.admin.received(uuid).messages).toMatchObject({ received: 4, unique: 2, rejected: 2 });
      expect(cloud.admin.faults().fired.poison).toBeGreaterThanOrEqual(2);
    });

    it('answers a malformed batch with 400 naming the index and field', async () => {
      const bad = batch(['a', 'b', 'c', 'd']) as { messages: Record<string, unknown>[] };
      bad.messages[3]!.id = '';
      const res = await dev('POST', 'messages', { body: bad });
      expect(res.status).toBe(400);
      expect((res.json as { message: string }).message).toBe('messages[3].id: expected a non-empty string of at most 128 characters, got ""');

      const cases: [unknown, string][] = [
        [{ messages: 'x' }, 'messages: expected an array, got "x"'],
        [{ messages: [{ id: 'a', channel: 'c', ts: '1', payload: 1 }] }, 'messages[0].ts: expected a finite number, got "1"'],
        [{ messages: [{ id: 'a', channel: 7, ts: 1, payload: 1 }] }, 'messages[0].channel: expected a string, got number 7'],
        [{ messages: [{ id: 'a', channel: 'c', ts: 1 }] }, 'messages[0].payload: expected a JSON value (null is allowed), got nothing'],
        [{ messages: [{ id: 'x'.repeat(129), channel: 'c', ts: 1, payload: 1 }] }, 'messages[0].id: expected a non-empty string of at most 128 characters'],
      ];
      for (const [body, message] of cases) {
        const r = await dev('POST', 'messages', { body });
        expect(r.status).toBe(400);
        expect((r.json as { message: string }).message).toContain(message);
      }
      expect(cloud.admin.received(uuid).messages.unique).toBe(0);
    });

    it('answers 413 above the body limit (after decompression)', async () => {
      const small = await startDevCloud({ bodyLimit: 4096 });
      try {
        const d = deviceClient(() => small.url, uuid, 'key-1', agent);
        const big = { messages: [{ id: 'big', channel: 'c', ts: 1, payload: 'x'.repeat(10_000) }] };
        expect((await d('POST', 'messages', { body: big })).status).toBe(413);
        expect((await d('POST', 'messages', { body: big, gzip: true })).status).toBe(413);
      } finally {
        await small.close();
      }
    });
  });

  it('stores health reports and answers 204', async () => {
    const health = { status: 'online', uptime: 5, outages: [] };
    const res = await dev('POST', 'health', { body: health });
    expect(res.status).toBe(204);
    expect(cloud.admin.received(uuid).health).toMatchObject({ received: 1, last: { health } });
    expect(cloud.admin.health(uuid).health[0]?.health).toEqual(health);
  });

  it('answers bad JSON with 400 and unknown routes with a JSON 404', async () => {
    const bad = await dev('POST', 'health', { raw: '{nope', headers: { 'content-type': 'application/json' } });
    expect(bad.status).toBe(400);
    expect((bad.json as { message: string }).message).toMatch(/not valid JSON/);
    const missing = await dev('GET', 'nothing-here');
    expect(missing.status).toBe(404);
    expect(missing.json).toMatchObject({ statusCode: 404, error: 'Not Found' });
  });

  it('serves the shadow desired state: 204 until set, then { version, state } with an ETag, 304 when unchanged', async () => {
    expect((await dev('GET', 'shadow/desired')).status).toBe(204);
    expect(cloud.admin.setShadowDesired(uuid, { fan: 'on' })).toEqual({ version: 1, state: { fan: 'on' } });
    const first = await dev('GET', 'shadow/desired');
    expect(first.json).toEqual({ version: 1, state: { fan: 'on' } });
    const etag = String(first.headers.etag);
    expect((await dev('GET', 'shadow/desired', { headers: { 'if-none-match': etag } })).status).toBe(304);
    cloud.admin.setShadowDesired(uuid, { fan: 'off' });
    const second = await dev('GET', 'shadow/desired', { headers: { 'if-none-match': etag } });
    expect(second.json).toEqual({ version: 2, state: { fan: 'off' } });
    expect(cloud.admin.shadowDesired(uuid)).toEqual({ version: 2, state: { fan: 'off' } });
  });

  it('runs the jobs flow: next, updates once per updateId, 204 when empty, 404 for unknown jobs', async () => {
    const { id: j1 } = cloud.admin.createJob(uuid, { type: 'reboot', params: { delay: 1 }, timeoutSeconds: 30 });
    const { id: j2 } = await adminClient(cloud.adminUrl).createJob(uuid, { type: 'noop' });

    const next1 = await dev('GET', 'jobs/next');
    expect(next1.json).toEqual({ id: j1, type: 'reboot', params: { delay: 1 }, timeoutSeconds: 30 });
    expect(cloud.admin.job(uuid, j1).status).toBe('IN_PROGRESS');
    const next2 = await dev('GET', 'jobs/next');
    expect((next2.json as { id: string }).id).toBe(j2);
    expect((await dev('GET', 'jobs/next')).status).toBe(204);

    const update = { updateId: 'u1', status: 'SUCCEEDED', details: { took: 3 } };
    expect((await dev('PATCH', `jobs/${j1}`, { body: update })).json).toMatchObject({ duplicate: false, status: 'SUCCEEDED' });
    expect((await dev('PATCH', `jobs/${j1}`, { body: update })).json).toMatchObject({ duplicate: true });
    // A late IN_PROGRESS does not move a finished job back.
    await dev('PATCH', `jobs/${j1}`, { body: { updateId: 'u0', status: 'IN_PROGRESS' } });

    const bad = await dev('PATCH', `jobs/${j1}`, { body: { updateId: 'u2', status: 'DONE' } });
    expect(bad.status).toBe(400);
    expect((bad.json as { message: string }).message).toMatch(/^status: expected one of IN_PROGRESS\|SUCCEEDED\|FAILED\|REJECTED\|TIMED_OUT, got "DONE"/);
    expect((await dev('PATCH', 'jobs/no-such-job', { body: update })).status).toBe(404);

    const view = await adminClient(cloud.adminUrl).job(uuid, j1);
    expect(view.status).toBe('SUCCEEDED');
    expect(view.updates.map((u) => u.updateId)).toEqual(['u1', 'u0']);
    expect(cloud.admin.received(uuid).jobUpdates).toEqual({ received: 3, duplicates: 1 }); // the 400 and 404 ones are not counted
    await expect(adminClient(cloud.adminUrl).job(uuid, 'nope')).rejects.toBeInstanceOf(AdminHttpError);
  });

  describe('faults', () => {
    it('fail: answers the next N matching requests with the status', async () => {
      const status = await cloud.admin.setFaults({ fail: { count: 2, status: 500, path: '/state$' } });
      expect(status.active.fail).toEqual({ status: 500, remaining: 2, path: '/state$' });
      expect((await dev('GET', 'jobs/next')).status).toBe(204); // does not match the path
      expect((await dev('GET', 'state')).status).toBe(500);
      expect(cloud.admin.faults().active.fail?.remaining).toBe(1);
      expect((await dev('GET', 'state')).status).toBe(500);
      expect((await dev('GET', 'state')).status).toBe(200);
      expect(cloud.admin.faults().active.fail).toBeNull();
      // Faulted requests are counted too.
      const requests = cloud.admin.received(uuid).requests;
      expect(requests.byRoute['GET /device/v1/:uuid/state']).toBe(3);
      expect(requests.byStatus['500']).toBe(2);
    });

    it('fail, throttle and hang can be limited to one method', async () => {
      await cloud.admin.setFaults({ fail: { count: 1, status: 503, path: '/state$', method: 'get' } });
      const patched = await dev('PATCH', 'state', { body: { reportId: 'm-1', state: {} }, headers: { 'idempotency-key': 'm-1' } });
      expect(patched.status).toBe(200);
      expect(cloud.admin.faults().active.fail?.remaining).toBe(1);
      expect((await dev('GET', 'state')).status).toBe(503);
      await expect(cloud.admin.setFaults({ fail: { count: 1, status: 503, method: 'G E T' } })).rejects.toThrow(/fail\.method/);
      await cloud.admin.clearFaults();
    });

    it('throttle: answers 429/503 with Retry-After, N times or until cleared', async () => {
      const admin = adminClient(cloud.adminUrl);
      await admin.setFaults({ throttle: { status: 429, retryAfter: '7', count: 2 } });
      for (let i = 0; i < 2; i++) {
        const res = await dev('GET', 'state');
        expect(res.status).toBe(429);
        expect(res.headers['retry-after']).toBe('7');
      }
      expect((await dev('GET', 'state')).status).toBe(200);

      const date = new Date(Date.now() + 60_000).toUTCString();
      await admin.setFaults({ throttle: { status: 503, retryAfter: date, path: '/messages' } });
      expect((await admin.faults()).active.throttle).toMatchObject({ remaining: null, retryAfter: date });
      expect((await dev('GET', 'state')).status).toBe(200);
      for (let i = 0; i < 3; i++) {
        const res = await dev('POST', 'messages', { body: batch(['t1']) });
        expect(res.status).toBe(503);
        expect(res.headers['retry-after']).toBe(date);
      }
      await admin.clearFaults();
      expect((await dev('POST', 'messages', { body: batch(['t1']) })).status).toBe(200);
      await expect(admin.setFaults({ throttle: { status: 500 as 429 } })).rejects.toThrow(/throttle.status: expected 429 or 503, got number 500/);
    });

    it('latency: delays every device request', async () => {
      await cloud.admin.setFaults({ latencyMs: 300 });
      const started = performance.now();
      expect((await dev('GET', 'state')).status).toBe(200);
      expect(performance.now() - started).toBeGreaterThanOrEqual(290);
      await cloud.admin.setFaults({ latencyMs: 0 });
      const fired = cloud.admin.faults().fired.latency;
      await dev('GET', 'state');
      expect(cloud.admin.faults().fired.latency).toBe(fired);
    });

    it('hang: holds the request until the client gives up; after clear it answers', async () => {
      await cloud.admin.setFaults({ hang: {} });
      const fresh = new Agent();
      try {
        await expect(dev('GET', 'state', { dispatcher: fresh, headersTimeout: 500 })).rejects.toMatchObject({ code: 'UND_ERR_HEADERS_TIMEOUT' });
        expect(cloud.admin.faults().fired.hang).toBeGreaterThanOrEqual(1);
        await cloud.admin.clearFaults();
        expect((await dev('GET', 'state', { dispatcher: fresh, headersTimeout: 2000 })).status).toBe(200);
      } finally {
        await fresh.close();
      }
    });

    it('hang: close() drops held connections and does not wait for them', async () => {
      const other = await startDevCloud();
      const fresh = new Agent();
      await other.admin.setFaults({ hang: { count: 1 }, latencyMs: 50 });
      const d = deviceClient(() => other.url, uuid, 'key-1', fresh);
      const held = d('GET', 'state').then(
        () => 'answered',
        () => 'dropped',
      );
      await eventually(async () => expect(other.admin.faults().hanging).toBe(1));
      const started = performance.now();
      await other.close();
      expect(performance.now() - started).toBeLessThan(2000);
      expect(await held).toBe('dropped');
      await fresh.destroy();
    });

    it('refuse: connections are refused, then the same port answers again after clear', async () => {
      await cloud.admin.setFaults({ refuse: true });
      const fresh = new Agent();
      try {
        await expect(dev('GET', 'state', { dispatcher: fresh })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
        expect(await adminClient(cloud.adminUrl).healthz()).toBe(true); // the admin API stays up
        expect((await adminClient(cloud.adminUrl).faults()).active.refuse).toMatchObject({ until: null });
        await cloud.admin.clearFaults();
        expect((await dev('GET', 'state', { dispatcher: fresh })).status).toBe(200);
        expect(new URL(cloud.url).port).toBe(String(cloud.port));
      } finally {
        await fresh.close();
      }
    });

    it('refuse: { forMs } listens again by itself', async () => {
      await cloud.admin.setFaults({ refuse: { forMs: 300 } });
      const fresh = new Agent();
      try {
        await expect(dev('GET', 'state', { dispatcher: fresh })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
        const back = await eventually(() => dev('GET', 'state', { dispatcher: fresh }));
        expect(back.status).toBe(200);
        expect(cloud.admin.faults().active.refuse).toBeNull();
      } finally {
        await fresh.close();
      }
    });

    it('rejects a fault spec with a typo or a bad value, naming the field', async () => {
      await expect(cloud.admin.setFaults({ fails: 1 } as never)).rejects.toThrow(/^fails: unknown field/);
      await expect(cloud.admin.setFaults({ fail: { count: 0, status: 500 } })).rejects.toThrow(/fail.count: expected an integer from 1/);
      await expect(cloud.admin.setFaults({ hang: { path: '(' } })).rejects.toThrow(/hang.path: "\(" is not a valid regular expression/);
      await expect(adminClient(cloud.adminUrl).setFaults({ latencyMs: -1 })).rejects.toMatchObject({ status: 400 });
      expect(cloud.admin.faults().active).toMatchObject({ fail: null, hang: null, latencyMs: 0 });
    });
  });
});

describe('devcloud persistence', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'devcloud-test-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps the target, its ETag and message dedup across a restart with the same file', async () => {
    const dbPath = join(dir, 'nested', 'cloud.db');
    const uuid = newUuid();
    const agent = new Agent();
    try {
      let cloud = await startDevCloud({ dbPath });
      const { etag } = cloud.admin.setTarget(uuid, { version: 4, apps: {} });
      let dev = deviceClient(() => cloud.url, uuid, 'key-1', agent);
      await dev('POST', 'messages', { body: batch(['k1', 'k2']) });
      await cloud.close();
      expect(statSync(dbPath).mode & 0o777).toBe(0o600);

      cloud = await startDevCloud({ dbPath });
      dev = deviceClient(() => cloud.url, uuid, 'key-1', agent);
      try {
        expect((await dev('GET', 'state', { headers: { 'if-none-match': etag } })).status).toBe(304);
        expect((await dev('GET', 'state', { key: 'another' })).status).toBe(401); // the key was kept
        await dev('POST', 'messages', { body: batch(['k1', 'k2', 'k3']) });
        expect(cloud.admin.received(uuid).messages).toMatchObject({ unique: 3, duplicates: 2, received: 5 });
      } finally {
        await cloud.close();
      }
    } finally {
      await agent.close();
    }
  });

  it('runs as a CLI: survives SIGKILL with its data file, restarts on the same port, exits 0 on SIGTERM', async () => {
    const dataFile = join(dir, 'cli.db');
    const uuid = newUuid();
    const agent = new Agent();
    const first = await spawnDevCloud({ dataFile });
    try {
      expect(first.url).toBe(`http://127.0.0.1:${first.port}`);
      const { etag } = await adminClient(first.adminUrl).setTarget(uuid, { version: 1, apps: {} });
      const dev = deviceClient(() => first.url, uuid, 'key-1', agent);
      expect((await dev('POST', 'messages', { body: batch(['c1']) })).status).toBe(200);
      expect(await first.kill()).toEqual({ code: null, signal: 'SIGKILL' });

      const second = await spawnDevCloud({ dataFile, port: first.port });
      const fresh = new Agent(); // the old process's keep-alive sockets died with it
      try {
        expect(second.url).toBe(first.url);
        const got = await dev('GET', 'state', { dispatcher: fresh });
        expect(got.headers.etag).toBe(etag);
        await dev('POST', 'messages', { body: batch(['c1']), dispatcher: fresh });
        expect((await adminClient(second.adminUrl).received(uuid)).messages).toMatchObject({ unique: 1, duplicates: 1 });
      } finally {
        await fresh.close();
        expect(await second.stop('SIGTERM')).toEqual({ code: 0, signal: null });
      }
    } finally {
      await first.kill();
      await agent.close();
    }
  });
});
