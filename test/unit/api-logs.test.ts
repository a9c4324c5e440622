import { request, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseLogsQuery, parseSince, resolveService, type LogsView } from '../../src/api/logs-route.js';
import { startApi, type ApiOptions } from '../../src/api/server.js';
import { LogEvents } from '../../src/logs/collector.js';
import { LogStore } from '../../src/logs/log-store.js';
import type { LogLine, LogStream } from '../../src/logs/types.js';
import { fakeApiView } from '../helpers/api-view.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { chunkCommit } from '../helpers/log-chunks.js';
import { tempDirs } from '../helpers/tmp.js';

/** GET /v2/logs and /v2/logs/services (docs/api.md, "Logs") on a real LogStore (temp SQLite) and a real LogEvents. */

const KEY = 'logs-key-0123456789abcdef';
const auth = { authorization: `Bearer ${KEY}` };
const dirs = tempDirs();
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  dirs.cleanup();
});

/** A tail and an event channel as the collector has them; `commit` stores a chunk and announces it, as a ServiceLog's commit does. */
function logs(tailLines = 1000) {
  const clock = new FakeClock(Date.UTC(2026, 0, 2, 3, 4, 5));
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  closers.push(() => store.close());
  const tail = new LogStore(store.db, tailLines);
  const events = new LogEvents();
  const stats: ReturnType<LogsView['serviceStats']> = {};
  const commit = (service: string, texts: string[], stream: LogStream = 'stdout'): LogLine[] => {
    const first = tail.nextSeq(service);
    const lines = texts.map((line, i) => ({ service, seq: first + i, ts: clock.now(), stream, line }));
    tail.commit(chunkCommit(service, first + lines.length, lines));
    const s = (stats[service] ??= { lines: 0, dropped: {}, backlogBytes: 0 });
    s.lines += lines.length;
    events.committed(lines);
    return lines;
  };
  const view: LogsView = { tail, events, serviceStats: () => stats, clock };
  return { clock, tail, events, stats, commit, view };
}

async function api(view: LogsView, over: Partial<ApiOptions> = {}): Promise<string> {
  const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: false, view: fakeApiView({ logs: () => view }), ...over });
  closers.push(() => app.close());
  return url;
}

const get = async (url: string): Promise<{ status: number; body: Record<string, unknown> }> => {
  const r = await fetch(url, { headers: auth });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
};

/** A follow request on a raw socket: what arrived so far, and how to stop reading or hang up. */
function follow(url: string): Promise<{ res: IncomingMessage; text: () => string; objects: () => Record<string, unknown>[]; until: (check: (t: string) => boolean) => Promise<void>; close: () => void }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: auth }, (res) => {
      let text = '';
      const waiters: (() => void)[] = [];
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
        for (const w of waiters.splice(0)) w();
      });
      resolve({
        res,
        text: () => text,
        objects: () => text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>),
        until: async (check) => {
          const deadline = Date.now() + 10_000;
          while (!check(text)) {
            if (Date.now() > deadline) throw new Error(`timed out; got ${text.slice(-300)}`);
            await new Promise<void>((r) => {
              waiters.push(r);
              setTimeout(r, 50);
            });
          }
        },
        close: () => req.destroy(),
      });
    });
    req.on('error', (err) => (err.message === 'socket hang up' ? undefined : reject(err)));
    req.end();
  });
}

async function waitUntil(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('GET /v2/logs parameters', () => {
  const NOW = Date.UTC(2026, 0, 2, 12);
  const q = (s: string, known: string[] = ['edge/web', 'edge/db', 'agent']) => parseLogsQuery(new URLSearchParams(s), () => known, NOW);

  it('reads since as epoch ms, an ISO time or a duration ago', () => {
    expect(parseSince('1767225600000', NOW)).toBe(1767225600000);
    expect(parseSince('2026-01-02T11:00:00Z', NOW)).toBe(NOW - 3_600_000);
    expect(parseSince('2026-01-02T13:00:00+02:00', NOW)).toBe(NOW - 3_600_000);
    expect(parseSince('30s', NOW)).toBe(NOW - 30_000);
    expect(parseSince('10m', NOW)).toBe(NOW - 600_000);
    expect(parseSince('2h', NOW)).toBe(NOW - 7_200_000);
    expect(parseSince('1d', NOW)).toBe(NOW - 86_400_000);
  });

  it.each(['yesterday', '10x', '-5', '1.5h', '2026-13-45T00:00:00Z', ''])('refuses since=%j naming the parameter, the value and what it takes', (v) => {
    expect(() => parseSince(v, NOW)).toThrow(`since: expected epoch milliseconds, an ISO time (2026-01-02T03:04:05Z) or a duration ago (30s, 10m, 2h, 1d), got ${JSON.stringify(v)}`);
  });

  it('takes limit from 1 to 10000 (default 1000) and follow as 1/true', () => {
    expect(q('')).toEqual({ limit: 1000, follow: false });
    expect(q('limit=10000&follow=1')).toEqual({ limit: 10000, follow: true });
    expect(q('follow=true&limit=1')).toEqual({ limit: 1, follow: true });
    expect(q('follow=0')).toEqual({ limit: 1000, follow: false });
    for (const bad of ['0', '10001', 'abc', '5.5', '-1']) expect(() => q(`limit=${bad}`)).toThrow(`limit: expected an integer from 1 to 10000, got "${bad}"`);
    expect(() => q('follow=yes')).toThrow('follow: expected 1 or true (0 or false: no), got "yes"');
    expect(() => q('folow=1')).toThrow('unknown parameter "folow": expected service, since, limit, follow');
    expect(() => q('limit=1&limit=2')).toThrow('limit: given 2 times, expected once');
  });

  it('resolves a bare service name to the one <app>/<service> that has it, agent to itself', () => {
    expect(q('service=web')).toMatchObject({ service: 'edge/web' });
    expect(q('service=agent')).toMatchObject({ service: 'agent' });
    // A full name is taken as given: a follower may wait for a service's first line.
    expect(q('service=other/new')).toMatchObject({ service: 'other/new' });
    expect(() => resolveService('web', ['a/web', 'b/web', 'b/db'])).toThrow('service: "web" is a service of 2 apps (a/web, b/web): name one as <app>/<service>');
    expect(() => resolveService('cache', ['a/web', 'agent'])).toThrow('service: no service named "cache" has logs here (services with logs: a/web, agent); expected <app>/<service>, a service name or "agent"');
    expect(() => resolveService('cache', [])).toThrow('(services with logs: none yet)');
    expect(() => resolveService('a/b/c', [])).toThrow('service: expected <app>/<service>, a service name or "agent", got "a/b/c"');
  });
});

describe('GET /v2/logs', () => {
  it('answers the last lines, all services or one, since a time, up to limit; 400s say why', async () => {
    const l = logs();
    l.commit('edge/web', ['w0', 'w1']);
    await l.clock.advance(60_000);
    l.commit('agent', ['a0'], 'warn');
    l.commit('edge/web', ['w2', 'w3', 'w4']);
    const url = await api(l.view);

    const all = await get(`${url}/v2/logs`);
    expect(all.status).toBe(200);
    expect((all.body.lines as LogLine[]).map((x) => x.line)).toEqual(['w0', 'w1', 'a0', 'w2', 'w3', 'w4']);
    expect((all.body.lines as LogLine[])[2]).toEqual({ service: 'agent', seq: 0, ts: Date.UTC(2026, 0, 2, 3, 5, 5), stream: 'warn', line: 'a0' });

    const web = await get(`${url}/v2/logs?service=web&limit=2`);
    expect((web.body.lines as LogLine[]).map((x) => `${x.service}:${x.seq}:${x.line}`)).toEqual(['edge/web:3:w3', 'edge/web:4:w4']);
    const recent = await get(`${url}/v2/logs?since=30s`);
    expect((recent.body.lines as LogLine[]).map((x) => x.line)).toEqual(['a0', 'w2', 'w3', 'w4']);

    const bad = await get(`${url}/v2/logs?service=db`);
    expect(bad).toEqual({ status: 400, body: { error: 'bad_request', message: 'service: no service named "db" has logs here (services with logs: agent, edge/web); expected <app>/<service>, a service name or "agent"' } });
    expect((await get(`${url}/v2/logs?since=soon`)).status).toBe(400);
  });

  it('answers per service its counts and last 10 lines on /v2/logs/services', async () => {
    const l = logs();
    l.commit('edge/web', Array.from({ length: 12 }, (_, i) => `line ${i}`));
    l.stats['edge/web']!.dropped = { 'lines-rate': 4 };
    const url = await api(l.view);
    const r = await get(`${url}/v2/logs/services`);
    expect(r.body).toMatchObject({ services: [{ service: 'edge/web', lines: 12, dropped: { 'lines-rate': 4 }, backlogBytes: 0 }] });
    const last = (r.body.services as { last: LogLine[] }[])[0]!.last;
    expect(last.map((x) => x.line)).toEqual(Array.from({ length: 10 }, (_, i) => `line ${i + 2}`));
  });
});

describe('GET /v2/logs?follow=1', () => {
  it('streams the tail, then the new lines of its service as NDJSON, with keep-alives; a hang-up unsubscribes', async () => {
    const l = logs();
    l.commit('edge/web', ['before']);
    l.commit('edge/db', ['db before']);
    const url = await api(l.view);
    const f = await follow(`${url}/v2/logs?service=web&follow=1`);
    expect(f.res.statusCode).toBe(200);
    expect(f.res.headers['content-type']).toBe('application/x-ndjson; charset=utf-8');
    await f.until((t) => t.includes('before'));
    expect(l.events.listenerCount('lines')).toBe(1);

    l.commit('edge/db', ['not this one']);
    l.commit('edge/web', ['after 1', 'after 2']);
    await f.until((t) => t.includes('after 2'));
    // A chunk announced again (committed while the tail was read) is not sent twice.
    l.events.committed(l.tail.read({ service: 'edge/web' }));
    await l.clock.advance(15_000);
    await f.until((t) => t.endsWith('\n\n'));
    expect(f.objects().map((o) => `${o.service}:${o.seq}:${o.line}`)).toEqual(['edge/web:0:before', 'edge/web:1:after 1', 'edge/web:2:after 2']);
    expect(f.objects()[1]).toEqual({ service: 'edge/web', seq: 1, ts: l.clock.now() - 15_000, stream: 'stdout', line: 'after 1' });

    f.close();
    await waitUntil('the follower to unsubscribe', () => l.events.listenerCount('lines') === 0);
    expect(l.clock.pendingSleepers).toBe(0);
  });

  it('ends every follower when the API stops', async () => {
    const l = logs();
    const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: false, view: fakeApiView({ logs: () => l.view }) });
    const followers = await Promise.all([follow(`${url}/v2/logs?follow=1`), follow(`${url}/v2/logs?follow=1&service=agent`)]);
    expect(l.events.listenerCount('lines')).toBe(2);
    const ended = followers.map((f) => new Promise((r) => f.res.once('close', r)));
    await app.close();
    await Promise.all(ended);
    await waitUntil('the followers to unsubscribe', () => l.events.listenerCount('lines') === 0);
  });

  it('skips what a reader that does not read cannot take, and says how many once it catches up', async () => {
    const l = logs(10);
    const url = await api(l.view, { follow: { maxBufferedBytes: 64 * 1024 } });
    const f = await follow(`${url}/v2/logs?follow=1&service=edge/web`);
    f.res.pause();
    await waitUntil('the follower', () => l.events.listenerCount('lines') === 1);
    // 40 MiB in chunks of 100 lines: far more than the kernel's socket buffers and the 64 KiB bound.
    const text = 'x'.repeat(16 * 1024);
    let total = 0;
    for (let chunk = 0; chunk < 25; chunk++) total += l.commit('edge/web', Array.from({ length: 100 }, () => text)).length;
    f.res.resume();
    await f.until((t) => t.includes('"stream":"marker"'));
    l.commit('edge/web', ['after the marker']);
    await f.until((t) => t.includes('after the marker'));
    const got = f.objects();
    const marker = got.find((o) => o.stream === 'marker')!;
    const shown = got.filter((o) => o.stream === 'stdout' && o.line === text).length;
    expect(marker).toEqual({ service: 'edge/web', ts: l.clock.now(), stream: 'marker', line: `${marker.dropped} lines not shown (the reader was too slow)`, dropped: expect.any(Number), reason: 'reader' });
    expect(marker.dropped as number).toBeGreaterThan(total / 2);
    expect(shown + (marker.dropped as number)).toBe(total);
    // The lines shown are a prefix, the marker stands for the rest, and the stream goes on after it.
    expect(got.map((o) => o.line).slice(-1)).toEqual(['after the marker']);
    f.close();
    await waitUntil('the follower to unsubscribe', () => l.events.listenerCount('lines') === 0);
  });

  it('outlives the request and keep-alive time bounds: a follower is not a slow request', async () => {
    const l = logs();
    const url = await api(l.view, { timeouts: { headersMs: 200, requestMs: 300, keepAliveMs: 200, checkEveryMs: 100 } });
    const f = await follow(`${url}/v2/logs?follow=1`);
    await new Promise((r) => setTimeout(r, 800));
    l.commit('edge/web', ['still here']);
    await f.until((t) => t.includes('still here'));
    expect(l.events.listenerCount('lines')).toBe(1);
    f.close();
  });

  it('answers HEAD with the stream\'s headers and no body', async () => {
    const l = logs();
    const url = await api(l.view);
    const r = await fetch(`${url}/v2/logs?follow=1`, { method: 'HEAD', headers: auth });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('application/x-ndjson; charset=utf-8');
    expect(l.events.listenerCount('lines')).toBe(0);
  });
});
