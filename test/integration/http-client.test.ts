import { spawn } from 'node:child_process';
import { connect, createServer, type Server } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { CloudHttpClient } from '../../src/cloud/http-client.js';
import { CloudError } from '../../src/resilience/cloud-error.js';

let cloud: DevCloud;
let client: CloudHttpClient;
const dev = { uuid: 'http-client-dev', apiKey: 'http-client-key-0123456789' };

beforeAll(async () => {
  cloud = await startDevCloud();
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  client = new CloudHttpClient({ baseUrl: cloud.url, apiKey: dev.apiKey, timeoutMs: 800, clock: { now: () => Date.now() } });
});
afterAll(async () => {
  await client.close();
  await cloud.close();
});
afterEach(async () => {
  await cloud.admin.clearFaults();
});

async function failure(p: Promise<unknown>): Promise<CloudError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CloudError);
    return err as CloudError;
  }
  throw new Error('expected the request to fail');
}

/**
 * A real black hole on loopback: a socket listening with a backlog of 0 that never accepts (python3,
 * asleep), its accept queue filled by one held connection, so the kernel drops every further SYN.
 */
async function synDroppingListener(): Promise<{ port: number; close(): Promise<void> }> {
  const py = spawn('python3', ['-c', "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(0); print(s.getsockname()[1], flush=True); time.sleep(600)"], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((r) => py.once('exit', () => r()));
  const port = await new Promise<number>((resolve, reject) => {
    py.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
    py.once('error', reject);
  });
  const filler = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => filler.once('connect', () => resolve()).once('error', reject));
  // Proof the hole drops SYNs: a second connect does not complete.
  const probe = connect(port, '127.0.0.1');
  const connected = await new Promise<boolean>((resolve) => {
    probe.once('connect', () => resolve(true));
    setTimeout(() => resolve(false), 300);
  });
  probe.destroy();
  if (connected) throw new Error('the listener accepted a second connection: its SYNs are not dropped');
  return {
    port,
    async close() {
      filler.destroy();
      py.kill();
      await exited;
    },
  };
}

const getState = (headers: Record<string, string> = {}) =>
  client.request({ method: 'GET', path: `/device/v1/${dev.uuid}/state`, headers, accept: [304] });

describe('the cloud HTTP client against the devcloud', () => {
  it('sends the bearer key and handles ETag/304', async () => {
    const first = await getState();
    expect(first.status).toBe(200);
    const etag = first.headers.etag as string;
    const again = await getState({ 'if-none-match': etag });
    expect(again.status).toBe(304);
  });

  it('classifies a 403 as not retryable and a 503 with Retry-After as retryable with its delay', async () => {
    await cloud.admin.setFaults({ fail: { count: 1, status: 403 } });
    const forbidden = await failure(getState());
    expect(forbidden.kind).toBe('http');
    expect(forbidden.status).toBe(403);
    expect(forbidden.retryable).toBe(false);
    expect(forbidden.code).toBe('CLOUD_HTTP_403');

    await cloud.admin.setFaults({ fail: null, throttle: { status: 503, retryAfter: '7', count: 1 } });
    const busy = await failure(getState());
    expect(busy.retryable).toBe(true);
    expect(busy.retryAfterMs).toBe(7_000);

    const date = new Date(Date.now() + 20_000).toUTCString();
    await cloud.admin.setFaults({ throttle: { status: 429, retryAfter: date, count: 1 } });
    const throttled = await failure(getState());
    expect(throttled.status).toBe(429);
    expect(throttled.retryable).toBe(true);
    expect(throttled.retryAfterMs).toBeGreaterThan(17_000);
    expect(throttled.retryAfterMs).toBeLessThanOrEqual(20_000);
    await cloud.admin.clearFaults();
  });

  it('times out a request the server accepts and never answers', async () => {
    await cloud.admin.setFaults({ hang: { count: 1 } });
    const t0 = Date.now();
    const hung = await failure(getState());
    expect(hung.kind).toBe('timeout');
    expect(hung.retryable).toBe(true);
    expect(Date.now() - t0).toBeLessThan(5_000);
    await cloud.admin.clearFaults();
    expect((await getState()).status).toBe(200);
  });

  it('reports a refused connection as a network failure', async () => {
    // A fresh client: a pooled keep-alive socket would fail differently (closed by the other side).
    const fresh = new CloudHttpClient({ baseUrl: cloud.url, apiKey: dev.apiKey, timeoutMs: 800, clock: { now: () => Date.now() } });
    await cloud.admin.setFaults({ refuse: true });
    const refused = await failure(fresh.request({ method: 'GET', path: `/device/v1/${dev.uuid}/state` }));
    expect(refused.kind).toBe('network');
    expect(refused.retryable).toBe(true);
    expect(refused.message).toBe(`GET /device/v1/${dev.uuid}/state failed: connection refused (ECONNREFUSED)`);
    await cloud.admin.clearFaults();
    expect((await fresh.request({ method: 'GET', path: `/device/v1/${dev.uuid}/state` })).status).toBe(200);
    await fresh.close();
  });

  it('gives up a connection through a black hole at connectTimeoutMs, long before the request timeout', async () => {
    const hole = await synDroppingListener();
    try {
      const c = new CloudHttpClient({ baseUrl: `http://127.0.0.1:${hole.port}`, timeoutMs: 20_000, connectTimeoutMs: 600, clock: { now: () => Date.now() } });
      const t0 = Date.now();
      const err = await failure(c.request({ method: 'GET', path: '/device/v1/x/state' }));
      const tookMs = Date.now() - t0;
      expect(err.kind).toBe('timeout');
      expect(err.retryable).toBe(true);
      expect(err.message).toBe('GET /device/v1/x/state failed: no connection within 600 ms (cloud.connectTimeoutMs)');
      expect(tookMs).toBeGreaterThanOrEqual(500);
      expect(tookMs).toBeLessThan(10_000);
      await c.close();
    } finally {
      await hole.close();
    }
  });

  it('reports a connection reset mid-answer as a network failure', async () => {
    const server: Server = createServer((socket) => {
      socket.once('data', () => socket.resetAndDestroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    const c = new CloudHttpClient({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 2_000, clock: { now: () => Date.now() } });
    const reset = await failure(c.request({ method: 'GET', path: '/x' }));
    expect(reset.kind).toBe('network');
    await c.close();
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('gzips a JSON body when asked and the devcloud accepts it', async () => {
    const res = await client.request<{ accepted: string[] }>({
      method: 'POST',
      path: `/device/v1/${dev.uuid}/messages`,
      json: { messages: [{ id: 'm-1', channel: 'telemetry', ts: Date.now(), payload: { t: 21.5 } }] },
      gzip: true,
    });
    expect(res.body?.accepted).toEqual(['m-1']);
  });
});
