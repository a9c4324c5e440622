import { afterEach, describe, expect, it } from 'vitest';
import { fakeApiView } from '../helpers/api-view.js';
import { startApi, type ApiView } from '../../src/api/server.js';
import { ShadowError } from '../../src/shadow/shadow.js';
import { silentLogger } from '../helpers/logger.js';
import { HeldListener } from '../../src/util/held-listener.js';

const KEY = 'k'.repeat(32);
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

function view(over: Partial<ApiView> = {}): ApiView {
  return fakeApiView({
    loops: () => [{ name: 'target-state', state: 'running', restarts: 0, lastError: null, lastErrorAt: null }],
    connection: () => ({ status: 'offline', offlineSince: 1 }),
    ...over,
  });
}

async function api(v: ApiView = view()): Promise<string> {
  const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: true, view: v });
  closers.push(() => app.close());
  return url;
}

const auth = { authorization: `Bearer ${KEY}` };

describe('local API', () => {
  it('listens on loopback', async () => {
    expect(await api()).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('requires the key on every route but /ping, /v1/healthy and the dashboard page', async () => {
    const url = await api();
    for (const path of ['/v2/connection', '/v2/state', '/v2/loops', '/v2/device', '/metrics']) {
      const anon = await fetch(`${url}${path}`);
      expect(anon.status, path).toBe(401);
      const wrong = await fetch(`${url}${path}`, { headers: { authorization: 'Bearer nope' } });
      expect(wrong.status, path).toBe(401);
      const ok = await fetch(`${url}${path}`, { headers: auth });
      expect(ok.status, path).toBe(200);
    }
    expect((await fetch(`${url}/ping`)).status).toBe(200);
    expect((await fetch(`${url}/v1/healthy`)).status).toBe(200);
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).not.toContain(KEY);
    const post = await fetch(`${url}/v1/update`, { method: 'POST' });
    expect(post.status).toBe(401);
  });

  it('is healthy while the cloud is offline, and unhealthy when a loop is down', async () => {
    let loopsUp = true;
    const url = await api(
      view({
        connection: () => ({ status: 'offline' }),
        healthy: () => loopsUp,
        loops: () => [{ name: 'target-state', state: loopsUp ? 'running' : 'restarting', restarts: 1, lastError: 'boom', lastErrorAt: 1 }],
      }),
    );
    const up = await fetch(`${url}/v1/healthy`);
    expect(up.status).toBe(200);
    loopsUp = false;
    const down = await fetch(`${url}/v1/healthy`);
    expect(down.status).toBe(503);
    expect(await down.json()).toEqual({ healthy: false, down: [{ loop: 'target-state', state: 'restarting', lastError: 'boom' }] });
  });

  it('answers 400 naming the field for a bad body, and for a body that is not JSON', async () => {
    const url = await api();
    const bad = await fetch(`${url}/v1/update`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ force: 'yes' }) });
    expect(bad.status).toBe(400);
    expect((await bad.json()) as { message: string }).toMatchObject({ message: 'body.force: expected a boolean, got "yes" (a string)' });
    const junk = await fetch(`${url}/v1/update`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"force": tru' });
    expect(junk.status).toBe(400);
    expect(((await junk.json()) as { message: string }).message).toMatch(/not valid JSON/);
  });

  it('triggers a poll on POST /v1/update, and says so when there is no cloud', async () => {
    let polls = 0;
    const url = await api(view({ pollNow: () => (polls++, true) }));
    const r = await fetch(`${url}/v1/update`, { method: 'POST', headers: auth });
    expect(r.status).toBe(202);
    expect(polls).toBe(1);
    const local = await api(view({ pollNow: () => false }));
    const r2 = await fetch(`${local}/v1/update`, { method: 'POST', headers: auth });
    expect(r2.status).toBe(409);
  });

  it('serves the shadow: 404 saying why when it is off, 400 or 413 with the shadow\'s message for bad input', async () => {
    const off = await api();
    const r = await fetch(`${off}/v2/shadow`, { headers: auth });
    expect(r.status).toBe(404);
    expect(await r.json()).toEqual({ error: 'not_found', message: 'the device shadow is off here (features.shadow is false)' });
    const on = await api(
      view({
        shadow: {
          get: () => ({ reportedVersion: 0 }),
          patch: (body) => {
            if ((body as { big?: boolean }).big) throw new ShadowError('SHADOW_TOO_LARGE', 'reported: 70000 bytes as JSON, over the 65536-byte limit');
            throw new ShadowError('SHADOW_INVALID', 'reported: expected an object (a JSON merge patch), got 5 (a number)');
          },
          clearOverrides: () => ({ overrides: null }),
        },
      }),
    );
    expect(await (await fetch(`${on}/v2/shadow`, { headers: auth })).json()).toEqual({ reportedVersion: 0 });
    const patch = (body: unknown) => fetch(`${on}/v2/shadow`, { method: 'PATCH', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const bad = await patch({ reported: 5 });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: 'bad_request', message: 'reported: expected an object (a JSON merge patch), got 5 (a number)' });
    const big = await patch({ big: true });
    expect(big.status).toBe(413);
    expect(await big.json()).toEqual({ error: 'too_large', message: 'reported: 70000 bytes as JSON, over the 65536-byte limit' });
    expect((await fetch(`${on}/v2/shadow/overrides`, { method: 'DELETE', headers: auth })).status).toBe(200);
  });

  it('answers unknown routes with a JSON 404', async () => {
    const url = await api();
    const r = await fetch(`${url}/v9/nothing`, { headers: auth });
    expect(r.status).toBe(404);
    expect(await r.json()).toMatchObject({ error: 'not_found' });
  });
});

describe('local API on a port bound early in the start', () => {
  it('answers the requests made before it was built, then serves as usual, and closing it frees the port', async () => {
    const held = await HeldListener.bind('127.0.0.1', 0);
    if (!held) throw new Error('could not bind a port');
    const base = `http://127.0.0.1:${held.port}`;
    // Sent while the agent is still starting: accepted and held (not refused), answered once the API is up.
    const pending = fetch(`${base}/v1/healthy`);
    const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: false, view: view(), listener: held });
    expect(url).toBe(base);
    expect((await pending).status).toBe(200);
    expect((await fetch(`${url}/v2/loops`, { headers: auth })).status).toBe(200);
    await app.close();
    expect(held.available).toBe(false);
    await expect(fetch(`${url}/ping`)).rejects.toThrow();
  });

  it('is not used for another address: the API binds its own, and the early one is let go', async () => {
    const held = await HeldListener.bind('127.0.0.1', 0);
    if (!held) throw new Error('could not bind a port');
    const heldUrl = `http://127.0.0.1:${held.port}`;
    const { app, url } = await startApi({ host: 'localhost', port: 0, key: KEY, logger: silentLogger(), dashboard: false, view: view(), listener: held });
    closers.push(() => app.close());
    expect(url).not.toBe(heldUrl);
    expect((await fetch(`${url}/ping`)).status).toBe(200);
    expect(held.available).toBe(false);
    await expect(fetch(`${heldUrl}/ping`)).rejects.toThrow();
  });
});
