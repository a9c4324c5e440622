import { request } from 'node:http';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { fakeApiView } from '../helpers/api-view.js';
import { startApi, type ApiOptions, type ApiView } from '../../src/api/server.js';
import { OutboxError, type OutboxErrorCode } from '../../src/outbox/types.js';
import type { TargetState } from '../../src/workloads/target-schema.js';
import { captureLogger } from '../helpers/logger.js';

/** What each route of the local API answers, as a local app or the CLI sees it (docs/api.md). */

const KEY = 'route-key-0123456789abcdef';
const auth = { authorization: `Bearer ${KEY}` };
const json = { ...auth, 'content-type': 'application/json' };
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

function view(over: Partial<ApiView> = {}): ApiView {
  return fakeApiView({
    loops: () => [{ name: 'target-state', state: 'running', restarts: 0, lastError: null, lastErrorAt: null }],
    state: () => ({ target: { version: 4 } }),
    config: () => ({ source: 'file', redacted: true }),
    queue: () => ({ depth: 3 }),
    jobs: () => ({ enabled: false, reason: 'features.jobs is false' }),
    ...over,
  });
}

async function api(v: ApiView = view(), over: Partial<ApiOptions> = {}) {
  const cap = captureLogger();
  const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: cap.logger, dashboard: true, view: v, ...over });
  closers.push(() => app.close());
  return { url, logs: cap.records };
}

const post = (url: string, body: unknown) => fetch(url, { method: 'POST', headers: json, body: typeof body === 'string' ? body : JSON.stringify(body) });

describe('local API routes', () => {
  it('serves the views as JSON, /ping as text and /metrics in the registry\'s format', async () => {
    const metrics = new Registry();
    metrics.setDefaultLabels({});
    const { url } = await api(view({ metrics }));
    for (const [path, body] of [
      ['/v2/connection', { status: 'online' }],
      ['/v2/state', { target: { version: 4 } }],
      ['/v2/config', { source: 'file', redacted: true }],
      ['/v2/loops', [{ name: 'target-state', state: 'running', restarts: 0, lastError: null, lastErrorAt: null }]],
      ['/v2/device', { uuid: 'dev-1', version: '9.9.9' }],
      ['/v2/queue', { depth: 3 }],
      ['/v2/jobs', { enabled: false, reason: 'features.jobs is false' }],
    ] as const) {
      const r = await fetch(`${url}${path}`, { headers: auth });
      expect(r.status, path).toBe(200);
      expect(await r.json(), path).toEqual(body);
    }
    const ping = await fetch(`${url}/ping`);
    expect(ping.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await ping.text()).toBe('OK');
    const m = await fetch(`${url}/metrics`, { headers: auth });
    expect(m.headers.get('content-type')).toBe(metrics.contentType);
  });

  it('serves the dashboard page with its CSP only when the dashboard is on', async () => {
    const { url } = await api();
    const page = await fetch(`${url}/`);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).toBe("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'");
    expect(await page.text()).toContain('9.9.9');
    const off = await api(view(), { dashboard: false });
    expect((await fetch(`${off.url}/`, { headers: auth })).status).toBe(404);
  });

  it('names the method and path (without the query) of an unknown route', async () => {
    const { url } = await api();
    const r = await fetch(`${url}/v9/nothing?x=1`, { method: 'PUT', headers: auth });
    expect(r.status).toBe(404);
    expect(await r.json()).toEqual({ error: 'not_found', message: 'no route PUT /v9/nothing' });
  });

  it('sets a local target: 200 with its version, 400 with the issues for a bad one; ends local mode or says it was not on', async () => {
    const set: unknown[] = [];
    let local = false;
    const { url } = await api(
      view({
        setLocalTarget: (doc) => {
          set.push(doc);
          if ((doc as { version?: unknown }).version === 'x') return { ok: false, message: 'version: expected a number', issues: [{ path: 'version', source: 'target', expected: 'a number' }] };
          local = true;
          return { ok: true, target: { version: 7 } as TargetState };
        },
        clearLocalTarget: () => {
          const was = local;
          local = false;
          return was;
        },
      }),
    );
    const bad = await post(`${url}/v2/local/target-state`, { version: 'x' });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: 'bad_request', message: 'version: expected a number', issues: [{ path: 'version', source: 'target', expected: 'a number' }] });
    const good = await post(`${url}/v2/local/target-state`, { version: 7, apps: {} });
    expect(good.status).toBe(200);
    expect(await good.json()).toEqual({ version: 7, mode: 'local' });
    expect(set).toEqual([{ version: 'x' }, { version: 7, apps: {} }]);
    const end = await fetch(`${url}/v2/local/target-state`, { method: 'DELETE', headers: auth });
    expect(end.status).toBe(200);
    expect(await end.json()).toEqual({ mode: 'cloud' });
    const again = await fetch(`${url}/v2/local/target-state`, { method: 'DELETE', headers: auth });
    expect(again.status).toBe(409);
    expect(await again.json()).toEqual({ error: 'not_local', message: 'the agent is not in local mode' });
  });

  it('answers 409 saying why on POST /v1/update without a cloud, and 202 with one', async () => {
    const { url } = await api(view({ pollNow: () => false }));
    const r = await fetch(`${url}/v1/update`, { method: 'POST', headers: auth });
    expect(r.status).toBe(409);
    expect(await r.json()).toEqual({ error: 'no_cloud', message: 'cloud.apiUrl is not set: the agent runs in local mode and has nothing to poll' });
    const c = await api();
    const ok = await post(`${c.url}/v1/update`, { force: true });
    expect(ok.status).toBe(202);
    expect(await ok.json()).toEqual({ polling: true });
  });

  it('takes telemetry one item or a batch, 202 with the ids once durable; names the item of a bad one', async () => {
    const got: unknown[] = [];
    const { url } = await api(
      view({
        ingest: async (items) => {
          got.push(items);
          return items.map((_, i) => ({ id: `m${i}` }));
        },
      }),
    );
    const one = await post(`${url}/v2/telemetry`, { stream: 'temp.c_1-a', payload: { v: 1 } });
    expect(one.status).toBe(202);
    expect(await one.json()).toEqual({ ids: ['m0'] });
    const many = await post(`${url}/v2/telemetry`, [{ stream: 'a', payload: 1 }, { stream: 'b', payload: [2] }]);
    expect(await many.json()).toEqual({ ids: ['m0', 'm1'] });
    expect(got).toEqual([[{ stream: 'temp.c_1-a', payload: { v: 1 } }], [{ stream: 'a', payload: 1 }, { stream: 'b', payload: [2] }]]);

    const bad = async (body: unknown) => {
      const r = await post(`${url}/v2/telemetry`, body);
      expect(r.status).toBe(400);
      return ((await r.json()) as { message: string }).message;
    };
    expect(await bad({ stream: '.hidden', payload: 1 })).toContain('body.stream');
    expect(await bad({ stream: 's'.repeat(65), payload: 1 })).toContain('a stream name of 1-64 letters');
    expect(await bad([{ stream: 'ok', payload: 1 }, { stream: 'no/slash', payload: 1 }])).toContain('body.1.stream');
    expect(await bad([])).toContain('body');
    expect(await bad(Array.from({ length: 1001 }, () => ({ stream: 's', payload: 1 })))).toContain('body');
    expect(await bad({ stream: 's', payload: 1, extra: true })).toContain('extra');
    expect(await bad({ stream: 's' })).toBe('body.payload: expected a JSON value (null is allowed)');
    // Every problem of a body at once, "; " between them.
    expect(await bad({ stream: '.x', payload: 1, extra: true })).toMatch(/^body\.stream: expected a stream name of 1-64 letters[^;]*; body\.extra: expected no such key/);
    // The limits themselves are fine: 64 characters, 1000 items.
    expect((await post(`${url}/v2/telemetry`, { stream: 's'.repeat(64), payload: 1 })).status).toBe(202);
    expect((await post(`${url}/v2/telemetry`, Array.from({ length: 1000 }, () => ({ stream: 's', payload: 1 })))).status).toBe(202);
    expect(got).toHaveLength(4);
  });

  it('maps each outbox refusal to its status with the reason and details; anything else is a logged 500', async () => {
    let fail: Error = new Error('x');
    const { url, logs } = await api(
      view({
        ingest: async () => {
          throw fail;
        },
      }),
    );
    const expected: [OutboxErrorCode, number][] = [
      ['OUTBOX_CLOSED', 503],
      ['OUTBOX_WRITE_FAILED', 503],
      ['OUTBOX_TOO_LARGE', 400],
      ['OUTBOX_INVALID', 400],
      ['OUTBOX_FULL', 507],
      ['OUTBOX_DISK_LOW', 507],
      ['OUTBOX_DISK_FULL', 507],
    ];
    for (const [code, status] of expected) {
      fail = new OutboxError(code, `refused: ${code}`, { details: { setting: 'outbox.maxQueueBytes', limit: 10 } });
      const r = await post(`${url}/v2/telemetry`, { stream: 's', payload: 1 });
      expect(r.status, code).toBe(status);
      expect(await r.json(), code).toEqual({ error: code, message: `refused: ${code}`, setting: 'outbox.maxQueueBytes', limit: 10 });
    }
    fail = new Error('database is locked');
    const r = await post(`${url}/v2/telemetry`, { stream: 's', payload: 1 });
    expect(r.status).toBe(500);
    expect(await r.json()).toEqual({ error: 'error', message: 'database is locked' });
    expect(logs().some((l) => l.msg === 'local API error' && l.err === 'database is locked')).toBe(true);
  });

  it('refuses a body over its limit with 413 naming the setting: the target route has its own', async () => {
    const { url, logs } = await api(view({ setLocalTarget: () => ({ ok: true, target: { version: 1 } as TargetState }) }), {
      limits: { maxApiBodyBytes: 200, maxTargetBytes: 400, maxJsonDepth: 8 },
    });
    const big = { stream: 's', payload: 'x'.repeat(300) };
    const r = await post(`${url}/v2/telemetry`, big);
    expect(r.status).toBe(413);
    expect(await r.json()).toEqual({ error: 'too_large', message: 'body is larger than limits.maxApiBodyBytes (200 bytes)' });
    // 300 bytes is within the target's limit, 500 is not.
    expect((await post(`${url}/v2/local/target-state?x=1`, { version: 1, apps: {}, pad: 'x'.repeat(250) })).status).toBe(200);
    const t = await post(`${url}/v2/local/target-state?x=1`, { version: 1, apps: {}, pad: 'x'.repeat(450) });
    expect(t.status).toBe(413);
    expect(await t.json()).toEqual({ error: 'too_large', message: 'body is larger than limits.maxTargetBytes (400 bytes)' });
    const refusals = logs().filter((l) => String(l.msg).startsWith('local API: body refused, over limits.'));
    expect(refusals).toHaveLength(2);
    // The log says which route and how large the body claimed to be.
    expect(refusals[0]).toMatchObject({ url: '/v2/telemetry', length: String(JSON.stringify(big).length) });
    expect(logs().some((l) => l.level === 'error' || l.level === 50)).toBe(false);
  });

  it('lets a client still sending an oversized body finish, then answers 413 (no reset mid-send)', async () => {
    const { url } = await api(view(), { limits: { maxApiBodyBytes: 1_000, maxTargetBytes: 1_000, maxJsonDepth: 8 } });
    const { port } = new URL(url);
    // The body comes in slow pieces, as from a device on a weak link: the size is known from the
    // header long before the last piece, and the server must not close under the sender.
    const send = (total: number) =>
      new Promise<{ status: number; body: string; sendError: string | null }>((resolve) => {
        let status = 0;
        let body = '';
        let sendError: string | null = null;
        let pending = 2; // the response read to its end, and the body sent (or failed)
        const done = () => --pending === 0 && resolve({ status, body, sendError });
        const req = request({ host: '127.0.0.1', port: Number(port), path: '/v2/telemetry', method: 'POST', headers: { ...json, 'content-length': String(total) } });
        req.on('response', (res) => {
          status = res.statusCode ?? 0;
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', done);
        });
        req.on('error', (err) => {
          sendError ??= err.message;
          if (status === 0) done(); // no response will come
          done();
        });
        const piece = Buffer.alloc(16_384, 'x');
        let sent = 0;
        const next = () => {
          if (sendError) return;
          if (sent >= total) return void req.end(done);
          const n = Math.min(piece.length, total - sent);
          sent += n;
          req.write(piece.subarray(0, n), (err) => {
            if (!err) return void setTimeout(next, 1);
            sendError ??= err.message;
            done();
          });
        };
        next();
      });
    const slow = await send(2_097_152);
    expect(slow.sendError).toBeNull();
    expect(slow.status).toBe(413);
    expect(JSON.parse(slow.body)).toEqual({ error: 'too_large', message: 'body is larger than limits.maxApiBodyBytes (1000 bytes)' });
  });

  it('refuses JSON nested deeper than limits.maxJsonDepth with 400, before parsing it; depth at the limit is fine', async () => {
    const { url, logs } = await api(view(), { limits: { maxApiBodyBytes: 100_000, maxTargetBytes: 100_000, maxJsonDepth: 4 } });
    const nest = (n: number): unknown => (n === 0 ? 1 : [nest(n - 1)]);
    const deep = await post(`${url}/v2/telemetry`, { stream: 's', payload: nest(6) });
    expect(deep.status).toBe(400);
    expect(await deep.json()).toEqual({ error: 'bad_request', message: 'body nests arrays/objects deeper than limits.maxJsonDepth (4 levels)' });
    expect(logs().find((l) => String(l.msg).includes('body refused, it nests arrays/objects deeper than limits.maxJsonDepth (4 levels)'))).toMatchObject({ url: '/v2/telemetry' });
    expect((await post(`${url}/v2/telemetry`, { stream: 's', payload: nest(2) })).status).toBe(202);
  });

  it('lists only the loops that are not running as down, with their last error', async () => {
    let healthy = true;
    const { url } = await api(
      view({
        healthy: () => healthy,
        loops: () => [
          { name: 'target-state', state: 'running', restarts: 0, lastError: null, lastErrorAt: null },
          { name: 'flusher', state: 'restarting', restarts: 2, lastError: 'disk I/O error', lastErrorAt: 5 },
        ],
      }),
    );
    const up = await fetch(`${url}/v1/healthy`);
    expect(up.status).toBe(200);
    expect(await up.json()).toEqual({ healthy: true, down: [{ loop: 'flusher', state: 'restarting', lastError: 'disk I/O error' }] });
    healthy = false;
    expect((await fetch(`${url}/v1/healthy`)).status).toBe(503);
  });

  it('says how to authenticate on a 401', async () => {
    const { url } = await api();
    const r = await fetch(`${url}/v2/state`);
    expect(await r.json()).toEqual({
      error: 'unauthorized',
      message: 'this route needs Authorization: Bearer <local API key> (see `iotistic-agent status --show-key`)',
    });
  });

  it('answers a body that is not JSON with 400 saying so', async () => {
    const { url } = await api();
    const r = await post(`${url}/v1/update`, '{"force": tru');
    expect(r.status).toBe(400);
    expect(await r.json()).toEqual({ error: 'bad_request', message: "body is not valid JSON: Body is not valid JSON but content-type is set to 'application/json'" });
    const empty = await post(`${url}/v2/telemetry`, []);
    expect(await empty.json()).toEqual({ error: 'bad_request', message: 'body: expected at least 1 items, got an array ([])' });
  });

  it('stops at once even while a client holds a request open', async () => {
    let reached!: () => void;
    const inHandler = new Promise<void>((r) => (reached = r));
    const { app, url } = await startApi({
      host: '127.0.0.1',
      port: 0,
      key: KEY,
      logger: captureLogger().logger,
      dashboard: false,
      view: view({
        ingest: () => {
          reached();
          return new Promise(() => {});
        },
      }),
    });
    const pending = post(`${url}/v2/telemetry`, { stream: 's', payload: 1 }).catch((err: unknown) => err);
    await inHandler;
    const t0 = Date.now();
    await app.close();
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(await pending).toBeInstanceOf(Error);
  });

  it('requeues parked messages, all or the ids named, and says how many', async () => {
    const asked: (string[] | undefined)[] = [];
    const { url } = await api(view({ retryParked: (ids) => (asked.push(ids), 5) }));
    const r = await fetch(`${url}/v2/queue/parked/retry`, { method: 'POST', headers: auth });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ requeued: 5 });
    expect((await post(`${url}/v2/queue/parked/retry`, { ids: ['a', 'b'] })).status).toBe(200);
    expect(asked).toEqual([undefined, ['a', 'b']]);
    const bad = await post(`${url}/v2/queue/parked/retry`, { ids: [] });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/^body\.ids: /);
    expect(asked).toHaveLength(2);
  });

  it('purges parked messages only when told which (ids, or all: true), and says how many', async () => {
    const asked: (string[] | undefined)[] = [];
    const { url } = await api(view({ purgeParked: (ids) => (asked.push(ids), ids?.length ?? 7) }));
    const all = await post(`${url}/v2/queue/parked/purge`, { all: true });
    expect(all.status).toBe(200);
    expect(await all.json()).toEqual({ purged: 7 });
    const some = await post(`${url}/v2/queue/parked/purge`, { ids: ['m1'] });
    expect(await some.json()).toEqual({ purged: 1 });
    expect(asked).toEqual([undefined, ['m1']]);
    // Deleting is for good: no body, an empty one, all: false or both at once delete nothing, and say why.
    const refusals = {
      none: 'body: expected "ids" (the parked messages to delete) or "all": true, one of the two, got neither',
      '{}': 'body: expected "ids" (the parked messages to delete) or "all": true, one of the two, got neither',
      '{"ids":["m1"],"all":true}': 'body: expected "ids" (the parked messages to delete) or "all": true, one of the two, got both',
      '{"all":false}': 'body.all: expected one of true, got false (a boolean)',
      '{"ids":"m1"}': 'body.ids: expected an array, got "m1" (a string)',
    };
    for (const [body, message] of Object.entries(refusals)) {
      const r = await fetch(`${url}/v2/queue/parked/purge`, { method: 'POST', headers: body === 'none' ? auth : json, body: body === 'none' ? undefined : body });
      expect(r.status, body).toBe(400);
      expect(await r.json(), body).toEqual({ error: 'bad_request', message });
    }
    expect(asked).toHaveLength(2);
  });

  it('patches the shadow and clears its overrides, answering what the shadow says; other errors are 500s', async () => {
    const patches: unknown[] = [];
    const { url } = await api(
      view({
        shadow: {
          get: () => ({ v: 1 }),
          patch: (body) => {
            if ((body as { boom?: boolean }).boom) throw new Error('disk I/O error');
            patches.push(body);
            return { reportedVersion: 2 };
          },
          clearOverrides: () => ({ overrides: null }),
        },
      }),
    );
    const r = await fetch(`${url}/v2/shadow`, { method: 'PATCH', headers: json, body: JSON.stringify({ reported: { a: 1 } }) });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ reportedVersion: 2 });
    expect(patches).toEqual([{ reported: { a: 1 } }]);
    const boom = await fetch(`${url}/v2/shadow`, { method: 'PATCH', headers: json, body: JSON.stringify({ boom: true }) });
    expect(boom.status).toBe(500);
    const c = await fetch(`${url}/v2/shadow/overrides`, { method: 'DELETE', headers: auth });
    expect(await c.json()).toEqual({ overrides: null });
  });
});
