import { afterEach, describe, expect, it } from 'vitest';
import { fakeApiView } from '../helpers/api-view.js';
import { bearerMatcher } from '../../src/api/auth.js';

const bearerMatches = (header: string | undefined, key: string): boolean => bearerMatcher(key)(header);
import { startApi, type ApiRoute, type ApiView } from '../../src/api/server.js';
import { silentLogger } from '../helpers/logger.js';

/**
 * Auth of the local API, from its route table: every route the API serves (HEAD too) needs the key, except the
 * ones docs/api.md lists as open. A route added later is checked without anyone editing this test.
 */

const KEY = 'k3y-0123456789abcdef-0123456789ABCDEF';
/** docs/api.md: "Without a key only GET /ping, GET /v1/healthy and the dashboard page answer". */
const DOCUMENTED_OPEN = new Set(['GET /ping', 'HEAD /ping', 'GET /v1/healthy', 'HEAD /v1/healthy', 'GET /', 'HEAD /']);

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

function view(shadow: boolean): ApiView {
  return fakeApiView({
    setLocalTarget: () => ({ ok: false, issues: [], message: 'refused in this test' }),
    shadow: shadow ? { get: () => ({}), patch: () => ({}), clearOverrides: () => ({}) } : undefined,
  });
}

async function api(shadow: boolean): Promise<{ url: string; routes: readonly ApiRoute[] }> {
  const { app, url, routes } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: true, view: view(shadow) });
  closers.push(() => app.close());
  return { url, routes };
}

/** A concrete request for a route: a body where the method takes one. */
function send(url: string, r: ApiRoute, authorization?: string, query = ''): Promise<Response> {
  const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
  const hasBody = r.method === 'POST' || r.method === 'PATCH';
  if (hasBody) headers['content-type'] = 'application/json';
  return fetch(`${url}${r.url}${query}`, {
    method: r.method,
    headers,
    ...(hasBody ? { body: r.url === '/v2/telemetry' ? JSON.stringify({ stream: 's', payload: 1 }) : '{}' } : {}),
  });
}

const WRONG_KEYS: [string, string][] = [
  ['no header', ''],
  ['another key', 'Bearer nope'],
  ['a prefix of the key', `Bearer ${KEY.slice(0, -1)}`],
  ['the first character of the key', `Bearer ${KEY[0]}`],
  ['the key and more', `Bearer ${KEY}x`],
  ['the key in another scheme', `Basic ${KEY}`],
  ['the scheme alone', 'Bearer'],
  ['the key without a scheme', KEY],
];

describe('local API auth, every route from the route table', () => {
  it.each([true, false])('refuses every route but the documented open ones without the exact key (shadow %s)', async (shadow) => {
    const { url, routes } = await api(shadow);
    const served = routes.map((r) => `${r.method} ${r.url}`);
    // The table is the API's own: all of docs/api.md's routes are in it.
    for (const r of ['GET /v2/state', 'POST /v1/update', 'POST /v2/local/target-state', 'DELETE /v2/local/target-state', 'POST /v2/telemetry', 'PATCH /v2/shadow', 'DELETE /v2/shadow/overrides', 'POST /v2/queue/parked/retry', 'GET /metrics']) {
      expect(served).toContain(r);
    }
    expect(served.length).toBeGreaterThanOrEqual(19);
    for (const r of routes) {
      const name = `${r.method} ${r.url}`;
      if (DOCUMENTED_OPEN.has(name)) {
        expect((await send(url, r)).status, name).toBe(200);
        expect((await send(url, r, undefined, '?x=1')).status, `${name}?x=1`).toBe(200);
        continue;
      }
      for (const [what, header] of WRONG_KEYS) {
        const res = await send(url, r, header === '' ? undefined : header);
        expect(res.status, `${name} with ${what}`).toBe(401);
        expect(res.headers.get('www-authenticate'), name).toBe('Bearer realm="iotistic-agent"');
        if (r.method !== 'HEAD') expect(((await res.json()) as { error: string }).error, name).toBe('unauthorized');
      }
      // A query string does not make a route one of the open ones.
      expect((await send(url, r, undefined, '?/ping')).status, `${name}?/ping`).toBe(401);
      const ok = await send(url, r, `Bearer ${KEY}`);
      expect(ok.status, `${name} with the key`).not.toBe(401);
      expect(ok.status, `${name} with the key`).toBeLessThan(500);
    }
  });
});

describe('bearerMatcher', () => {
  it('accepts the exact key, with the scheme in any case and spaces around the token', () => {
    expect(bearerMatches(`Bearer ${KEY}`, KEY)).toBe(true);
    expect(bearerMatches(`bearer ${KEY}`, KEY)).toBe(true);
    expect(bearerMatches(`BEARER   ${KEY}  `, KEY)).toBe(true);
    expect(bearerMatches(`Bearer\t${KEY}`, KEY)).toBe(true);
  });

  it('refuses anything but the exact key', () => {
    for (const [what, header] of WRONG_KEYS) expect(bearerMatches(header, KEY), what).toBe(false);
    expect(bearerMatches(undefined, KEY)).toBe(false);
    expect(bearerMatches(`Bearer ${KEY} ${KEY}`, KEY)).toBe(false);
    expect(bearerMatches(`xBearer ${KEY}`, KEY)).toBe(false);
    expect(bearerMatches(`Bearer${KEY}`, KEY)).toBe(false);
    expect(bearerMatches(`Bearer ${KEY.toUpperCase()}`, KEY)).toBe(false);
  });
});
