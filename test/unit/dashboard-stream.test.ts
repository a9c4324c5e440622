import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { bearerMatcher } from '../../src/api/auth.js';
import { DashboardHub, dashboardRoutes, STREAM_BOUNDS, StreamTokens, type StreamBounds } from '../../src/api/dashboard-stream.js';
import { Router } from '../../src/api/http-router.js';
import { serveHttp } from '../../src/api/http-server.js';
import { startApi, type ApiView } from '../../src/api/server.js';
import { fakeApiView } from '../helpers/api-view.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

/** GET /v2/dashboard/stream: its auth (stream tokens), its schedule on the injected clock, its bounds per client. */

const KEY = 'stream-key-0123456789abcdef';
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

/** A stream client over fetch: the parsed `data:` events as they come. */
function reader(url: string, headers: Record<string, string> = {}) {
  const events: Record<string, unknown>[] = [];
  const abort = new AbortController();
  const status = fetch(url, { headers, signal: abort.signal }).then(async (res) => {
    if (!res.ok || !res.body) return res.status;
    void (async () => {
      let buf = '';
      const dec = new TextDecoder();
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buf += dec.decode(chunk, { stream: true });
          for (let i = buf.indexOf('\n\n'); i !== -1; i = buf.indexOf('\n\n')) {
            const ev = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (ev.startsWith('data: ')) events.push(JSON.parse(ev.slice(6)) as Record<string, unknown>);
          }
        }
      } catch {
        // aborted
      }
    })();
    return res.status;
  });
  closers.push(() => abort.abort());
  return { events, status, close: () => abort.abort() };
}

async function until(what: string, ok: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The stream routes on a real server, with the hub in reach (its client count). */
async function served(view: ApiView, bounds: Partial<StreamBounds> = {}) {
  const b = { ...STREAM_BOUNDS, ...bounds };
  const clock = view.clock as FakeClock;
  const router = new Router({ logger: silentLogger(), bodyLimit: { bytes: 1024, setting: 'x' }, maxJsonDepth: 8, drain: { maxBytes: 0, maxMs: 0 } });
  const hub = new DashboardHub(view, clock, b);
  const tokens = new StreamTokens(clock, b);
  dashboardRoutes(router, hub, tokens, bearerMatcher(KEY));
  hub.start();
  const { app, url } = await serveHttp(router.listener, { host: '127.0.0.1', port: 0 });
  closers.push(() => app.close(), () => hub.close());
  return { hub, tokens, url, clock };
}

describe('dashboard stream auth', () => {
  it('opens with a single-use token from POST /v2/dashboard/token, which expires; never with the key in the query', async () => {
    const clock = new FakeClock(Date.UTC(2026, 11, 6, 8, 0, 0));
    const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: true, view: fakeApiView({ clock }) });
    closers.push(() => app.close());
    expect((await fetch(`${url}/v2/dashboard/token`, { method: 'POST' })).status).toBe(401);
    expect(await reader(`${url}/v2/dashboard/stream`).status).toBe(401);
    expect(await reader(`${url}/v2/dashboard/stream?key=${KEY}`).status).toBe(401);
    const issue = async () => ((await (await fetch(`${url}/v2/dashboard/token`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` } })).json()) as { token: string; expiresInMs: number });
    const t = await issue();
    expect(t.expiresInMs).toBe(30_000);
    const first = reader(`${url}/v2/dashboard/stream?token=${t.token}`);
    expect(await first.status).toBe(200);
    await until('the first snapshot', () => first.events.length > 0);
    expect(first.events[0]).toMatchObject({ at: clock.now(), device: { uuid: 'dev-1', version: '9.9.9' }, hasCloud: false });
    // Used once: a second open with it is refused.
    expect(await reader(`${url}/v2/dashboard/stream?token=${t.token}`).status).toBe(401);
    const late = await issue();
    await clock.advance(30_000);
    expect(await reader(`${url}/v2/dashboard/stream?token=${late.token}`).status).toBe(401);
    // The bearer key in the header opens it too (curl).
    expect(await reader(`${url}/v2/dashboard/stream`, { authorization: `Bearer ${KEY}` }).status).toBe(200);
  });
});

describe('dashboard stream schedule and bounds', () => {
  it('sends every intervalMs of the injected clock, and at once on a change', async () => {
    let status = 'online';
    const view = fakeApiView({ clock: new FakeClock(Date.UTC(2026, 11, 6, 8, 0, 0)), connection: () => ({ status, channels: {} }) });
    const { url, tokens, clock } = await served(view);
    const r = reader(`${url}/v2/dashboard/stream?token=${tokens.issue()}`);
    await until('the first snapshot', () => r.events.length === 1);
    await clock.advance(1_500);
    await new Promise((res) => setTimeout(res, 50));
    expect(r.events).toHaveLength(1); // nothing changed, the interval not up
    await clock.advance(500);
    await until('the interval snapshot', () => r.events.length === 2);
    status = 'offline';
    await clock.advance(500);
    await until('the change', () => r.events.length === 3);
    expect(r.events[2]).toMatchObject({ connection: { status: 'offline' } });
    expect((r.events[2]!.events as { text: string }[])[0]?.text).toBe('connection online → offline');
  });

  it('keeps one depth sample per sampleEveryMs, clients or not, up to `samples`', async () => {
    let depth = 0;
    const view = fakeApiView({ clock: new FakeClock(Date.UTC(2026, 11, 6, 8, 0, 0)), queue: () => ({ depth, channels: { telemetry: { depth } } }) });
    const { url, tokens, clock } = await served(view, { samples: 3 });
    for (let i = 0; i < 5; i++) {
      depth = i * 10;
      await clock.advance(10_000);
    }
    const r = reader(`${url}/v2/dashboard/stream?token=${tokens.issue()}`);
    await until('the snapshot', () => r.events.length === 1);
    const samples = (r.events[0]!.depth as { samples: { depths: Record<string, number> }[] }).samples;
    expect(samples.map((s) => s.depths.telemetry)).toEqual([20, 30, 40]);
  });

  it('unsubscribes a client that closes, and drops one that does not read', async () => {
    const view = fakeApiView({ clock: new FakeClock(Date.UTC(2026, 11, 6, 8, 0, 0)), state: () => ({ filler: 'x'.repeat(256 * 1024) }) });
    const { hub, url, tokens, clock } = await served(view, { maxBufferedBytes: 64 * 1024 });
    const reading = reader(`${url}/v2/dashboard/stream?token=${tokens.issue()}`);
    const leaving = reader(`${url}/v2/dashboard/stream?token=${tokens.issue()}`);
    await until('two clients', () => hub.size === 2 && leaving.events.length > 0);
    leaving.close();
    await until('the closed one unsubscribed', () => hub.size === 1);

    // A raw client that never reads: its socket's buffers fill, then it is dropped.
    const port = Number(new URL(url).port);
    const stalled: Socket = connect(port, '127.0.0.1');
    closers.push(() => void stalled.destroy());
    stalled.pause();
    stalled.write(`GET /v2/dashboard/stream?token=${tokens.issue()} HTTP/1.1\r\nhost: x\r\n\r\n`);
    await until('the stalled one subscribed', () => hub.size === 2);
    let closed = false;
    stalled.once('close', () => (closed = true));
    for (let i = 0; i < 400 && hub.size === 2; i++) {
      await clock.advance(2_000);
      await new Promise((res) => setTimeout(res, 5));
    }
    expect(hub.size).toBe(1);
    // Reading what was buffered, the client finds its stream ended.
    stalled.resume();
    await until('the stalled socket closed', () => closed);
    const before = reading.events.length;
    await clock.advance(2_000);
    await until('the reading client still fed', () => reading.events.length > before);
  }, 30_000);

  it('skips a tick whose views throw, and answers 500 to a client whose first snapshot cannot be read', async () => {
    let fail = false;
    const view = fakeApiView({
      clock: new FakeClock(Date.UTC(2026, 11, 6, 8, 0, 0)),
      jobs: () => {
        if (fail) throw new Error('database busy');
        return { enabled: false, reason: 'features.jobs is false' };
      },
    });
    const { url, tokens, clock } = await served(view);
    const r = reader(`${url}/v2/dashboard/stream?token=${tokens.issue()}`);
    await until('the first snapshot', () => r.events.length === 1);
    fail = true;
    expect(await reader(`${url}/v2/dashboard/stream?token=${tokens.issue()}`).status).toBe(500);
    await clock.advance(2_000);
    fail = false;
    await clock.advance(2_000);
    await until('the stream going on', () => r.events.length === 2);
  });
});
