import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { fakeApiView } from '../helpers/api-view.js';
import { startApi, type ApiOptions, type ApiView } from '../../src/api/server.js';
import { HeldListener } from '../../src/util/held-listener.js';
import { captureLogger } from '../helpers/logger.js';

/**
 * What the local API's own HTTP layer (src/api/http-router.ts, http-server.ts) does that the route
 * tests do not pin: which bodies it takes, refusing poisoned JSON, a chunked body over the limit, HEAD,
 * and how connections end (a stop, a slow client).
 */

const KEY = 'http-key-0123456789abcdef';
const auth = { authorization: `Bearer ${KEY}` };
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

async function api(v: ApiView = fakeApiView(), over: Partial<ApiOptions> = {}) {
  const cap = captureLogger();
  const { app, url, routes } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: cap.logger, dashboard: false, view: v, ...over });
  closers.push(() => app.close());
  return { app, url, routes, port: Number(new URL(url).port), logs: cap.records };
}

/** A view that records the bodies the parked-retry route was handed (undefined when there was none). */
function recording() {
  const seen: unknown[] = [];
  const view = fakeApiView({ retryParked: (ids) => (seen.push(ids ?? 'all'), 1) });
  return { view, seen };
}

const retry = (url: string, body: string | undefined, type?: string) =>
  fetch(`${url}/v2/queue/parked/retry`, { method: 'POST', headers: { ...auth, ...(type ? { 'content-type': type } : {}) }, ...(body === undefined ? {} : { body }) });

/** A raw request whose body goes out in pieces (chunked: no Content-Length), one every few ms. */
function sendInPieces(port: number, path: string, pieces: number, pieceBytes: number) {
  return new Promise<{ status: number; body: string; allSentBeforeAnswer: boolean; sendError: string | null }>((resolve) => {
    let sent = 0;
    let allSentBeforeAnswer = false;
    let sendError: string | null = null;
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', agent: false, headers: { ...auth, 'content-type': 'application/json' } });
    req.on('response', (res) => {
      allSentBeforeAnswer = sent === pieces;
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, allSentBeforeAnswer, sendError }));
    });
    req.on('error', (err) => {
      sendError ??= err.message;
      resolve({ status: 0, body: '', allSentBeforeAnswer, sendError });
    });
    const next = () => {
      if (sent === pieces) return void req.end();
      req.write(Buffer.alloc(pieceBytes, 0x20), (err) => {
        if (err) return void (sendError ??= err.message);
        sent++;
        setTimeout(next, 2);
      });
    };
    req.write('[');
    next();
  });
}

/** A raw connection; resolves with what the server wrote once it closes the connection. */
function rawConnection(port: number, bytes: string): { socket: Socket; closed: Promise<string> } {
  const socket = connect(port, '127.0.0.1', () => socket.write(bytes));
  let got = '';
  socket.on('data', (d) => (got += d.toString('utf8')));
  socket.on('error', () => undefined);
  return { socket, closed: new Promise((resolve) => socket.once('close', () => resolve(got))) };
}

describe('local API bodies', () => {
  it('takes only application/json (any case, with parameters); another type, or a body without one, is a 415', async () => {
    const { view, seen } = recording();
    const { url } = await api(view);
    for (const type of ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/json ; charset=utf-8']) {
      expect((await retry(url, '{"ids":["a"]}', type)).status, type).toBe(200);
    }
    expect(seen).toEqual([['a'], ['a'], ['a'], ['a']]);
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/json-patch+json', 'application/jsonx']) {
      const r = await retry(url, '{"ids":["a"]}', type);
      expect(r.status, type).toBe(415);
      expect(await r.json(), type).toEqual({ error: 'unsupported_media_type', message: `body must be JSON (content-type: application/json), got ${type}` });
    }
    // A body with no content type at all (a raw client; fetch would add text/plain).
    const { port } = new URL(url);
    const none = await new Promise<{ status: number; body: string }>((resolve) => {
      const req = request({ host: '127.0.0.1', port: Number(port), path: '/v2/queue/parked/retry', method: 'POST', agent: false, headers: { ...auth, 'content-length': '13' } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.end('{"ids":["a"]}');
    });
    expect(none.status).toBe(415);
    expect(JSON.parse(none.body)).toEqual({ error: 'unsupported_media_type', message: 'body must be JSON (content-type: application/json), got no content-type' });
    expect(seen).toHaveLength(4);
    // No body and no content type: the route gets no body.
    expect((await retry(url, undefined)).status).toBe(200);
    expect(seen.at(-1)).toBe('all');
  });

  it('refuses an empty JSON body and one that is not JSON with 400; a byte-order mark is allowed', async () => {
    const { view, seen } = recording();
    const { url } = await api(view);
    const empty = await retry(url, '', 'application/json');
    expect(empty.status).toBe(400);
    expect(await empty.json()).toEqual({ error: 'bad_request', message: "Body cannot be empty when content-type is set to 'application/json'" });
    for (const junk of ['   ', '{"ids": [', 'nul', '{"ids":["a"]} x']) {
      const r = await retry(url, junk, 'application/json');
      expect(r.status, junk).toBe(400);
      expect(await r.json(), junk).toEqual({ error: 'bad_request', message: "body is not valid JSON: Body is not valid JSON but content-type is set to 'application/json'" });
    }
    expect(seen).toEqual([]);
    expect((await retry(url, '\uFEFF{"ids":["b"]}', 'application/json')).status).toBe(200);
    expect(seen).toEqual([['b']]);
  });

  it('refuses keys that could set a prototype with 400 naming where they are, escaped or not; a plain "constructor" is fine', async () => {
    const patched: unknown[] = [];
    const { url } = await api(fakeApiView({ shadow: { get: () => ({}), patch: (b) => (patched.push(b), {}), clearOverrides: () => ({}) } }));
    const patch = (body: string) => fetch(`${url}/v2/shadow`, { method: 'PATCH', headers: { ...auth, 'content-type': 'application/json' }, body });
    const refused: [string, string][] = [
      ['{"__proto__":{"admin":true}}', 'body.__proto__'],
      ['{"reported":{"a":[{"__proto__":{"x":1}}]}}', 'body.reported.a.0.__proto__'],
      ['{"desired":{"constructor":{"prototype":{"x":1}}}}', 'body.desired.constructor.prototype'],
      ['{"reported":{"\\u005f_proto__":{"x":1}}}', 'body.reported.__proto__'],
    ];
    for (const [body, where] of refused) {
      const r = await patch(body);
      expect(r.status, body).toBe(400);
      expect(await r.json(), body).toEqual({ error: 'bad_request', message: `${where}: this key is refused (it would set an object's prototype)` });
    }
    expect(patched).toEqual([]);
    expect((await patch('{"reported":{"constructor":{"name":"x"},"proto":1}}')).status).toBe(200);
    expect(patched).toEqual([{ reported: { constructor: { name: 'x' }, proto: 1 } }]);
  });

  it('reads a chunked body over the limit to its end, then answers 413 naming the limit; the route never sees it', async () => {
    const { view, seen } = recording();
    const { port, logs } = await api(view, { limits: { maxApiBodyBytes: 4_096, maxTargetBytes: 4_096, maxJsonDepth: 8 } });
    // 40 pieces of 1 KiB: over the limit at the 5th, the server reads on to the last before answering.
    const r = await sendInPieces(port, '/v2/queue/parked/retry', 40, 1_024);
    expect(r.sendError).toBeNull();
    expect(r.status).toBe(413);
    expect(r.allSentBeforeAnswer).toBe(true);
    expect(JSON.parse(r.body)).toEqual({ error: 'too_large', message: 'body is larger than limits.maxApiBodyBytes (4096 bytes)' });
    expect(seen).toEqual([]);
    // No Content-Length to log: the warning says which route.
    expect(logs().filter((l) => l.msg === 'local API: body refused, over limits.maxApiBodyBytes (4096 bytes)')).toEqual([expect.objectContaining({ url: '/v2/queue/parked/retry' })]);
  });
});

describe('local API ingest gate (the loop share)', () => {
  it('holds a POST /v2/telemetry body unread while the gate is paused, then takes it, and times its handling as a turn', async () => {
    let open: () => void = () => undefined;
    let paused = true;
    let asked = 0;
    const turns: string[] = [];
    const ingested: unknown[] = [];
    const gate = {
      ready: () => {
        asked++;
        return paused ? new Promise<void>((r) => (open = r)) : undefined;
      },
      begin: () => {
        turns.push('begin');
        return () => turns.push('end');
      },
    };
    const view = fakeApiView({ ingest: async (items) => (ingested.push(...items), items.map((_, i) => ({ id: `id-${i}` }))) });
    const { url } = await api(view, { ingestGate: gate });
    const answer = fetch(`${url}/v2/telemetry`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ stream: 's', payload: { v: 1 } }) });
    await until(() => asked > 0);
    await new Promise((r) => setTimeout(r, 100));
    expect(ingested).toEqual([]);
    expect(turns).toEqual([]);
    // Other routes are not held.
    expect((await fetch(`${url}/v2/queue`, { headers: auth })).status).toBe(200);
    paused = false;
    open();
    const res = await answer;
    expect(res.status).toBe(202);
    expect(ingested).toEqual([{ stream: 's', payload: { v: 1 } }]);
    expect(turns).toEqual(['begin', 'end']);
  });
});

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
}

describe('local API routing', () => {
  it('answers HEAD for every GET route as GET would, without the body, and for nothing else', async () => {
    const { url, routes } = await api();
    const gets = routes.filter((r) => r.method === 'GET').map((r) => r.url);
    expect(routes.filter((r) => r.method === 'HEAD').map((r) => r.url)).toEqual(gets);
    const get = await fetch(`${url}/v2/device`, { headers: auth });
    const getBody = await get.text();
    const head = await fetch(`${url}/v2/device`, { method: 'HEAD', headers: auth });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-type')).toBe('application/json; charset=utf-8');
    expect(head.headers.get('content-length')).toBe(String(Buffer.byteLength(getBody)));
    expect(await head.text()).toBe('');
    const anon = await fetch(`${url}/v2/device`, { method: 'HEAD' });
    expect(anon.status).toBe(401);
    expect(anon.headers.get('www-authenticate')).toBe('Bearer realm="iotistic-agent"');
    expect((await fetch(`${url}/ping`, { method: 'HEAD' })).status).toBe(200);
    expect((await fetch(`${url}/v1/update`, { method: 'HEAD', headers: auth })).status).toBe(404);
  });

  it('matches the path exactly: another method, a trailing slash or another case is a 404 naming it', async () => {
    const { url } = await api();
    for (const [method, path] of [
      ['POST', '/v2/device'],
      ['GET', '/v2/device/'],
      ['GET', '/V2/device'],
      ['OPTIONS', '/v2/device'],
    ]) {
      const r = await fetch(`${url}${path}?q=1`, { method, headers: auth });
      expect(r.status, `${method} ${path}`).toBe(404);
      expect(await r.json()).toEqual({ error: 'not_found', message: `no route ${method} ${path}` });
    }
  });

  it('answers a value that cannot be sent as JSON with a logged 500, and goes on serving', async () => {
    const { url, logs } = await api(fakeApiView({ connection: () => ({ n: 1n }) }));
    const r = await fetch(`${url}/v2/connection`, { headers: auth });
    expect(r.status).toBe(500);
    expect(((await r.json()) as { error: string }).error).toBe('error');
    expect(logs().some((l) => l.msg === 'local API error' && l.url === '/v2/connection')).toBe(true);
    expect((await fetch(`${url}/ping`)).status).toBe(200);
  });
});

describe('local API connections', () => {
  it('keeps an idle connection 72 s, and a stop ends it, and a half-sent request, at once', async () => {
    // Long request bounds: only the stop itself can end the half-sent request quickly.
    const { app, url, port } = await api(fakeApiView(), { timeouts: { headersMs: 120_000, requestMs: 120_000 } });
    const agent = new Agent({ keepAlive: true });
    const idle = await new Promise<{ socket: Socket; keepAlive: string }>((resolve) => {
      const req = request(`${url}/ping`, { agent }, (res) => {
        res.resume();
        res.on('end', () => resolve({ socket: req.socket!, keepAlive: String(res.headers['keep-alive']) }));
      });
      req.end();
    });
    expect(idle.keepAlive).toBe('timeout=72');
    const idleClosed = new Promise<void>((resolve) => idle.socket.once('close', () => resolve()));
    const half = rawConnection(port, 'GET /v2/device HTTP/1.1\r\nHost: x\r\n');
    await new Promise((r) => half.socket.once('connect', r));
    const t0 = Date.now();
    await app.close();
    expect(Date.now() - t0).toBeLessThan(5_000);
    await idleClosed;
    expect(await half.closed).toBe('');
    agent.destroy();
  });

  it.each(['bound by the API', 'bound early in the start'])('answers 408 and closes a connection that sends its headers too slowly (port %s)', async (how) => {
    const timeouts = { headersMs: 300, requestMs: 600, checkEveryMs: 50 };
    const held = how === 'bound early in the start' ? await HeldListener.bind('127.0.0.1', 0) : undefined;
    const { port } = await api(fakeApiView(), { timeouts, ...(held ? { listener: held } : {}) });
    const slow = rawConnection(port, 'GET /v2/device HTTP/1.1\r\nHost: x\r\n');
    const stalled = rawConnection(port, `POST /v2/telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[`);
    expect(await slow.closed).toMatch(/^HTTP\/1\.1 408 /);
    expect(await stalled.closed).toMatch(/^HTTP\/1\.1 408 /);
  });
});
