import { Agent, request, type IncomingMessage } from 'node:http';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HttpError, Router, type RouterOptions } from '../../src/api/http-router.js';
import { serveHttp } from '../../src/api/http-server.js';
import { HeldListener } from '../../src/util/held-listener.js';
import { captureLogger } from '../helpers/logger.js';

/**
 * The local API's HTTP layer on routes of the test's own (src/api/http-router.ts, http-server.ts):
 * which requests carry a body, the body limit at its edge, how a refused body ends its connection,
 * what an error answers, and the URL and port the server ends up on. The API's real routes are
 * tested in api-http.test.ts and the api-*.test.ts files.
 */

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

const LIMIT = { bytes: 1000, setting: 'limits.testBytes' };

async function serve(setup: (r: Router) => void, over: Partial<RouterOptions> = {}) {
  const cap = captureLogger();
  const router = new Router({ logger: cap.logger, bodyLimit: LIMIT, maxJsonDepth: 32, drain: { maxBytes: 1500, maxMs: 10_000 }, ...over });
  setup(router);
  const { app, url } = await serveHttp(router.listener, { host: '127.0.0.1', port: 0 });
  closers.push(() => app.close());
  return { url, port: Number(new URL(url).port), logs: cap };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request on its own connection; `body` sent with a Content-Length unless `chunked`. */
function send(port: number, method: string, path: string, o: { body?: string | Buffer; headers?: Record<string, string>; chunked?: boolean } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.body !== undefined) {
      if (o.chunked) headers['transfer-encoding'] = 'chunked';
      else headers['content-length'] = String(Buffer.byteLength(o.body));
    }
    const agent = new Agent({ keepAlive: true });
    const req = request({ host: '127.0.0.1', port, path, method, agent, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        agent.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      });
    });
    req.on('error', (err) => {
      agent.destroy();
      reject(err);
    });
    if (o.body !== undefined) req.write(o.body);
    req.end();
  });
}

const JSON_TYPE = { 'content-type': 'application/json' };

/** A JSON array of strings exactly `n` bytes long. */
function jsonOfSize(n: number): string {
  const s = `["${'x'.repeat(n - 4)}"]`;
  expect(Buffer.byteLength(s)).toBe(n);
  return s;
}

describe('which requests carry a body', () => {
  /** Routes that answer what they were handed: the body, or "none". */
  const echo = (r: Router) => {
    const seen = (req: { body: unknown }) => ({ body: req.body === undefined ? 'none' : req.body });
    r.get('/e', seen);
    r.post('/e', seen);
    r.patch('/e', seen);
    r.delete('/e', seen);
  };

  it('never reads one on GET or HEAD, whatever the headers say', async () => {
    const { port } = await serve(echo);
    const get = await send(port, 'GET', '/e', { body: 'not json', headers: JSON_TYPE });
    expect(get.status).toBe(200);
    expect(JSON.parse(get.body)).toEqual({ body: 'none' });
    const head = await send(port, 'HEAD', '/e', { body: 'not json', headers: JSON_TYPE });
    expect(head.status).toBe(200);
  });

  it('reads a DELETE body only when it is framed and typed', async () => {
    const { port } = await serve(echo);
    // Typed but not framed (no length, not chunked): nothing to read.
    const bare = await send(port, 'DELETE', '/e', { headers: JSON_TYPE });
    expect(JSON.parse(bare.body)).toEqual({ body: 'none' });
    // Framed but untyped: nothing either (unlike POST, where that is a 415).
    const untyped = await send(port, 'DELETE', '/e', { body: '[1]' });
    expect(JSON.parse(untyped.body)).toEqual({ body: 'none' });
    const framed = await send(port, 'DELETE', '/e', { body: '[1]', headers: JSON_TYPE });
    expect(JSON.parse(framed.body)).toEqual({ body: [1] });
    const chunked = await send(port, 'DELETE', '/e', { body: '[2]', headers: JSON_TYPE, chunked: true });
    expect(JSON.parse(chunked.body)).toEqual({ body: [2] });
  });

  it('takes a POST or PATCH without a type as bodiless only when nothing is sent', async () => {
    const { port } = await serve(echo);
    expect(JSON.parse((await send(port, 'POST', '/e')).body)).toEqual({ body: 'none' });
    expect(JSON.parse((await send(port, 'POST', '/e', { body: '' })).body)).toEqual({ body: 'none' });
    const sent = await send(port, 'PATCH', '/e', { body: '[1]' });
    expect(sent.status).toBe(415);
    expect(JSON.parse(sent.body).message).toMatch(/got no content-type/);
    const chunked = await send(port, 'POST', '/e', { body: '[1]', chunked: true });
    expect(chunked.status).toBe(415);
  });

  it('keeps a byte-order mark inside a value; only a leading one is dropped', async () => {
    const { port } = await serve(echo);
    const r = await send(port, 'POST', '/e', { body: '\uFEFF["a\uFEFFb"]', headers: JSON_TYPE });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ body: ['a\uFEFFb'] });
    const inner = await send(port, 'POST', '/e', { body: '["c\uFEFFd"]', headers: JSON_TYPE });
    expect(JSON.parse(inner.body)).toEqual({ body: ['c\uFEFFd'] });
  });
});

describe('keys that could set a prototype', () => {
  it('refuses constructor.prototype only under a key named constructor, and takes a null or plain constructor', async () => {
    const { port } = await serve((r) => r.post('/k', (req) => ({ body: req.body })));
    const post = (body: string) => send(port, 'POST', '/k', { body, headers: JSON_TYPE });
    const refused = await post('{"a":{"constructor":{"prototype":{}}}}');
    expect(refused.status).toBe(400);
    expect(JSON.parse(refused.body).message).toBe('body.a.constructor.prototype: this key is refused (it would set an object\'s prototype)');
    for (const ok of ['{"a":{"prototype":1}}', '{"constructor":null}', '{"constructor":"x"}', '{"constructor":{"name":"y"}}']) {
      const r = await post(ok);
      expect({ ok, status: r.status }).toEqual({ ok, status: 200 });
      expect(JSON.parse(r.body)).toEqual({ body: JSON.parse(ok) });
    }
  });
});

describe('the body limit', () => {
  const take = (r: Router) => r.post('/t', (req) => ({ got: Buffer.byteLength(JSON.stringify(req.body)) }));

  it('takes a body of exactly the limit, with a length or chunked; one byte more is a 413 naming the setting', async () => {
    const { port, logs } = await serve(take);
    for (const chunked of [false, true]) {
      const ok = await send(port, 'POST', '/t', { body: jsonOfSize(LIMIT.bytes), headers: JSON_TYPE, chunked });
      expect(ok.status).toBe(200);
      expect(JSON.parse(ok.body)).toEqual({ got: LIMIT.bytes });
      const over = await send(port, 'POST', '/t', { body: jsonOfSize(LIMIT.bytes + 1), headers: JSON_TYPE, chunked });
      expect(over.status).toBe(413);
      expect(JSON.parse(over.body)).toEqual({ error: 'too_large', message: 'body is larger than limits.testBytes (1000 bytes)' });
    }
    expect(logs.text()).toMatch(/local API: body refused, over limits\.testBytes \(1000 bytes\)/);
  });

  it('keeps the connection after a refused body it read to the end; closes it when the rest was over the drain bound', async () => {
    // The drain reads at most 1,500 bytes of a refused body. A declared length over the limit is
    // refused before any byte is read, so all of a 2,000-byte body counts against the drain.
    const { port } = await serve(take);
    const drained = await send(port, 'POST', '/t', { body: jsonOfSize(1200), headers: JSON_TYPE });
    expect(drained.status).toBe(413);
    expect(drained.headers.connection).not.toBe('close');
    const cut = await send(port, 'POST', '/t', { body: jsonOfSize(2000), headers: JSON_TYPE });
    expect(cut.status).toBe(413);
    expect(cut.headers.connection).toBe('close');
  });

  it('lets the route set its own limit', async () => {
    const { port } = await serve((r) => r.post('/big', (req) => ({ n: (req.body as string[])[0]!.length }), { bodyLimit: { bytes: 5000, setting: 'limits.big' } }));
    const r = await send(port, 'POST', '/big', { body: jsonOfSize(4000), headers: JSON_TYPE });
    expect(r.status).toBe(200);
    const over = await send(port, 'POST', '/big', { body: jsonOfSize(5001), headers: JSON_TYPE });
    expect(JSON.parse(over.body).message).toBe('body is larger than limits.big (5000 bytes)');
  });

  it('lets go of the request once its body is read, or once the client is gone mid-body', async () => {
    let captured: IncomingMessage | undefined;
    const listeners = () => ['data', 'end', 'close', 'error'].map((e) => captured!.listeners(e).length);
    let during: number[] = [];
    let base: number[] = [];
    const { port } = await serve((r) => r.post('/t', () => ({ listeners: listeners() })), {
      guard: (req) => {
        captured = req;
        base = listeners();
        return undefined;
      },
    });
    const r = await send(port, 'POST', '/t', { body: '[1]', headers: JSON_TYPE });
    expect(JSON.parse(r.body)).toEqual({ listeners: base });

    // Half a body, then the client goes away: nothing is answered, and nothing stays attached.
    for (const how of ['close', 'error'] as const) {
      const socket: Socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      captured = undefined;
      socket.write('POST /t HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[1,');
      await waitFor(() => captured !== undefined && captured.listeners('data').length > 0);
      during = listeners();
      expect(during[0]).toBeGreaterThan(base[0]!);
      if (how === 'error') captured!.emit('error', new Error('test: the request failed'));
      else socket.destroy();
      await waitFor(() => captured!.listeners('data').length === base[0]);
      expect(listeners()).toEqual(base);
      socket.destroy();
    }
  });
});

async function waitFor(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('answers and errors', () => {
  it('answers null for a handler that returns nothing', async () => {
    const { port } = await serve((r) => r.post('/n', () => undefined));
    const a = await send(port, 'POST', '/n');
    expect(a.status).toBe(200);
    expect(a.body).toBe('null');
    expect(a.headers['content-type']).toMatch(/^application\/json/);
  });

  it('answers an error with its own 4xx or 5xx status, 400 as bad_request, anything else as a logged 500', async () => {
    const withStatus = (statusCode: unknown) => Object.assign(new Error(`status ${String(statusCode)}`), { statusCode });
    const { port, logs } = await serve((r) => {
      r.get('/s400', () => {
        throw withStatus(400);
      });
      r.get('/s418', () => {
        throw withStatus(418);
      });
      r.get('/s599', () => {
        throw withStatus(599);
      });
      r.get('/s399', () => {
        throw withStatus(399);
      });
      r.get('/s600', () => {
        throw withStatus(600);
      });
      r.get('/plain', () => {
        throw new Error('plain failure');
      });
      r.get('/http', () => {
        throw new HttpError(409, 'conflict', 'already there', { id: 'x' });
      });
    });
    const got = async (path: string) => {
      const a = await send(port, 'GET', path);
      return { status: a.status, body: JSON.parse(a.body) as Record<string, unknown> };
    };
    expect(await got('/s400')).toEqual({ status: 400, body: { error: 'bad_request', message: 'status 400' } });
    expect(await got('/s418')).toEqual({ status: 418, body: { error: 'error', message: 'status 418' } });
    expect((await got('/s599')).status).toBe(599);
    expect(await got('/s399')).toEqual({ status: 500, body: { error: 'error', message: 'status 399' } });
    expect((await got('/s600')).status).toBe(500);
    expect(await got('/plain')).toEqual({ status: 500, body: { error: 'error', message: 'plain failure' } });
    expect(await got('/http')).toEqual({ status: 409, body: { error: 'conflict', message: 'already there', id: 'x' } });
    const errors = logs.records().filter((l) => l.msg === 'local API error');
    expect(errors.map((l) => l.err)).toEqual(['status 599', 'status 399', 'status 600', 'plain failure']);
  });

  it('cuts the connection when even the error cannot be answered, logs it, and goes on serving', async () => {
    const { port, logs } = await serve((r) => {
      r.get('/bad', () => {
        throw new HttpError(409, 'conflict', 'x', { n: 1n });
      });
      r.get('/ok', () => ({ ok: true }));
    });
    await expect(send(port, 'GET', '/bad')).rejects.toThrow(/socket hang up|ECONNRESET/);
    expect(logs.records().find((l) => l.msg === 'local API: answering failed')).toMatchObject({ url: '/bad', err: expect.stringMatching(/BigInt/) });
    expect((await send(port, 'GET', '/ok')).status).toBe(200);
  });

  it('refuses to register a route twice', () => {
    const r = new Router({ logger: captureLogger().logger, bodyLimit: LIMIT, maxJsonDepth: 8, drain: { maxBytes: 1, maxMs: 1 } });
    r.post('/x', () => 1);
    expect(() => r.post('/x', () => 2)).toThrow('route POST /x is registered twice');
    r.get('/y', () => 1);
    expect(() => r.get('/y', () => 1)).toThrow('route GET /y is registered twice');
    expect(r.routes).toEqual([
      { method: 'POST', url: '/x' },
      { method: 'GET', url: '/y' },
      { method: 'HEAD', url: '/y' },
    ]);
  });
});

describe('where the server listens', () => {
  const listener = new Router({ logger: captureLogger().logger, bodyLimit: LIMIT, maxJsonDepth: 8, drain: { maxBytes: 1, maxMs: 1 } }).listener;

  it('names the unspecified IPv4 address as loopback, and an IPv6 host in brackets', async () => {
    const any = await serveHttp(listener, { host: '0.0.0.0', port: 0 });
    closers.push(() => any.app.close());
    expect(any.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const v6 = await serveHttp(listener, { host: '::1', port: 0 });
    closers.push(() => v6.app.close());
    expect(v6.url).toMatch(/^http:\/\/\[::1\]:\d+$/);
    const v4 = await serveHttp(listener, { host: '127.0.0.1', port: 0 });
    closers.push(() => v4.app.close());
    expect(v4.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('rejects with the listen error when the port is taken', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', () => resolve()));
    closers.push(() => new Promise((resolve) => taken.close(() => resolve())));
    const port = (taken.address() as AddressInfo).port;
    await expect(serveHttp(listener, { host: '127.0.0.1', port })).rejects.toThrow(/EADDRINUSE/);
  });

  it('adopts the early listener only for the same host and port, and then answers on its port', async () => {
    const held = await HeldListener.bind('::1', 0);
    expect(held).toBeDefined();
    closers.push(() => held!.close());
    // Another host: the early listener is closed and the server binds on its own.
    const other = await serveHttp(listener, { host: '127.0.0.1', port: 0, listener: held });
    closers.push(() => other.app.close());
    expect(held!.available).toBe(false);
    expect(other.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    // It answers there (a 404 from the router: no routes).
    expect((await fetch(`${other.url}/nothing`)).status).toBe(404);

    // The same host, another port asked for: not adopted either.
    const free = createServer();
    await new Promise<void>((resolve) => free.listen(0, '127.0.0.1', () => resolve()));
    const port = (free.address() as AddressInfo).port;
    await new Promise<void>((resolve) => free.close(() => resolve()));
    const held4 = await HeldListener.bind('127.0.0.1', 0);
    closers.push(() => held4!.close());
    const own = await serveHttp(listener, { host: '127.0.0.1', port, listener: held4 });
    closers.push(() => own.app.close());
    expect(own.url).toBe(`http://127.0.0.1:${port}`);
    expect(held4!.available).toBe(false);

    const held2 = await HeldListener.bind('::1', 0);
    closers.push(() => held2!.close());
    const same = await serveHttp(listener, { host: '::1', port: 0, listener: held2 });
    closers.push(() => same.app.close());
    expect(same.url).toBe(`http://[::1]:${held2!.port}`);
  });
});
