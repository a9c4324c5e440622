import { writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import fc from 'fast-check';
import { connectAsync } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { Registry } from 'prom-client';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { startApi, type ApiView } from '../../src/api/server.js';
import { formatIssue } from '../../src/config/issues.js';
import { systemClock } from '../../src/util/clock.js';
import { loadConfig } from '../../src/config/load.js';
import { LocalBroker } from '../../src/telemetry/local-broker.js';
import type { Json } from '../../src/util/json-diff.js';
import { validateTarget } from '../../src/workloads/target-schema.js';
import { runCli } from '../helpers/agent-process.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { fakeApiView } from '../helpers/api-view.js';

// Property-based bad input (issue #21): config files, local API bodies and local broker packets,
// random and mutated from good ones. Each is accepted or refused with a message naming the field;
// never a throw, a 5xx, a crash or a hang, and the state in force stays what it was.
const dirs = tempDirs();
const closers: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});
afterAll(() => dirs.cleanup());

const GOOD_CONFIG = {
  dataDir: '/var/lib/x',
  device: { uuid: 'dev-123', name: 'pump' },
  cloud: { apiUrl: 'https://cloud.example', requestTimeoutMs: 5000 },
  mqtt: { url: 'mqtts://broker.example', keepAliveSeconds: 30 },
  api: { port: 48484, localApiKey: 'k'.repeat(20) },
  jobs: { allowedCommands: ['/bin/true'] },
  settings: { pollIntervalMs: 60000, offline: { maxQueueSize: 1000, channels: { telemetry: { priority: 5 } } } },
  features: { localBroker: true },
  limits: { maxTargetBytes: 1_048_576, maxJsonDepth: 32 },
};

/** Every path to a value of an object, objects included ("settings", "settings.offline"...). */
function paths(v: unknown, prefix: string[] = []): string[][] {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return [prefix];
  return [prefix, ...Object.entries(v).flatMap(([k, c]) => paths(c, [...prefix, k]))];
}
const CONFIG_PATHS = paths(GOOD_CONFIG).filter((p) => p.length > 0);

function setAt(root: Record<string, unknown>, path: string[], value: unknown): Record<string, unknown> {
  const copy = structuredClone(root);
  let cur = copy;
  for (const k of path.slice(0, -1)) cur = cur[k] as Record<string, unknown>;
  cur[path.at(-1)!] = value;
  return copy;
}

/** A config text: the good one with one value replaced, one key added, or its text cut and spliced. */
const mutatedConfig = fc.oneof(
  fc.record({ path: fc.constantFrom(...CONFIG_PATHS), value: fc.jsonValue({ maxDepth: 3 }) }).map(({ path, value }) => ({
    text: JSON.stringify(setAt(GOOD_CONFIG, path, value)),
    path: path.join('.'),
  })),
  fc.record({ path: fc.constantFrom(...CONFIG_PATHS), key: fc.string({ minLength: 1, maxLength: 12 }) }).map(({ path, key }) => {
    const parent = path.slice(0, -1);
    return { text: JSON.stringify(setAt(GOOD_CONFIG, [...parent, `x${key}`], 1)), path: [...parent, `x${key}`].join('.') };
  }),
  fc.record({ at: fc.nat(), cut: fc.nat({ max: 8 }), insert: fc.string({ maxLength: 4 }) }).map(({ at, cut, insert }) => {
    const t = JSON.stringify(GOOD_CONFIG, null, 2);
    const i = at % t.length;
    return { text: t.slice(0, i) + insert + t.slice(i + cut), path: undefined };
  }),
  fc.jsonValue().map((v) => ({ text: JSON.stringify(v), path: undefined })),
  fc.nat({ max: 200_000 }).map((n) => ({ text: `{"settings":${'['.repeat(n)}${']'.repeat(n)}}`, path: undefined })),
);

describe('config files', () => {
  it('are accepted or refused with each issue naming its field; loadConfig never throws', () => {
    const file = join(dirs.make(), 'config.json');
    fc.assert(
      fc.property(mutatedConfig, ({ text, path }) => {
        writeFileSync(file, text);
        const r = loadConfig({ file });
        if (r.ok) return;
        expect(r.issues.length).toBeGreaterThan(0);
        for (const i of r.issues) expect(formatIssue(i)).toMatch(/expected /);
        // A value replaced (or a key added) at a path: an issue names that path, a parent or a child of it.
        if (path !== undefined) {
          const related = r.issues.some((i) => i.path === path || path.startsWith(`${i.path}.`) || i.path.startsWith(`${path}.`));
          expect(related, `${path}: ${r.issues.map(formatIssue).join('; ')}`).toBe(true);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('`config check` exits 0 or 1 with the issues, never a crash', async () => {
    const file = join(dirs.make(), 'config.json');
    await fc.assert(
      fc.asyncProperty(mutatedConfig, async ({ text }) => {
        writeFileSync(file, text);
        const r = await runCli(['config', 'check', '--config', file]);
        expect([0, 1], r.stderr).toContain(r.code);
        if (r.code === 1) expect(r.stderr).toMatch(/expected /);
        expect(r.stderr).not.toMatch(/at .*\.js:\d+|RangeError|TypeError/);
      }),
      { numRuns: 5 },
    );
  });
});

describe('local API bodies', () => {
  const KEY = 'k'.repeat(32);
  const GOOD_TARGET = { version: 7, apps: { web: { services: { main: { image: 'nginx:1.25' } } } } };

  /** A fake agent: the target in force, what was ingested, the shadow's reported state. */
  function fakeView() {
    const state = { target: GOOD_TARGET as unknown, ingested: 0, reported: {} as Record<string, unknown>, parkedCalls: [] as unknown[] };
    const view: ApiView = {
      version: '9.9.9',
      uuid: 'dev-1',
      hasCloud: false,
      clock: systemClock,
      loops: () => [],
      config: () => ({ source: 'file' }),
      healthy: () => true,
      connection: () => ({}),
      state: () => ({ target: state.target }),
      pollNow: () => true,
      setLocalTarget: (doc) => {
        const v = validateTarget(doc, { policy: {} });
        if (v.ok) state.target = v.target;
        return v;
      },
      clearLocalTarget: () => false,
      secrets: { list: () => ({ secrets: [] }), set: () => undefined, remove: () => false },
      ingest: async (items) => {
        for (const i of items) JSON.stringify(i.payload);
        state.ingested += items.length;
        return items.map((_, n) => ({ id: `id-${n}` }));
      },
      queue: () => ({}),
      retryParked: (ids) => (state.parkedCalls.push(['retry', ids ?? 'all']), 0),
      purgeParked: (ids) => (state.parkedCalls.push(['purge', ids ?? 'all']), 0),
      jobs: () => ({}),
      logs: fakeApiView().logs,
      localBroker: () => ({ enabled: false }),
      shadow: {
        get: () => state.reported,
        patch: (body) => {
          if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not a patch');
          return state.reported;
        },
        clearOverrides: () => ({}),
      },
      metrics: new Registry(),
    };
    return { view, state };
  }

  const ROUTES = [
    ['POST', '/v2/telemetry'],
    ['POST', '/v2/local/target-state'],
    ['POST', '/v1/update'],
    ['POST', '/v2/queue/parked/retry'],
    ['POST', '/v2/queue/parked/purge'],
  ] as const;

  const good: Record<string, unknown> = { '/v2/telemetry': { stream: 'temp', payload: { c: 21 } }, '/v2/local/target-state': GOOD_TARGET, '/v1/update': { force: true },
    '/v2/queue/parked/retry': { ids: ['0190a0b1-1111-7000-8000-000000000001'] },
    '/v2/queue/parked/purge': { ids: ['0190a0b1-1111-7000-8000-000000000001'] },
  };

  /** Random bodies, good bodies with one value replaced, and good texts cut and spliced. */
  const body = (route: string) =>
    fc.oneof(
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.string(),
      fc.record({ path: fc.constantFrom(...paths(good[route]).filter((p) => p.length > 0)), value: fc.jsonValue({ maxDepth: 4 }) }).map(({ path, value }) =>
        JSON.stringify(setAt(good[route] as Record<string, unknown>, path, value)),
      ),
      fc.record({ at: fc.nat(), cut: fc.nat({ max: 6 }), insert: fc.string({ maxLength: 3 }) }).map(({ at, cut, insert }) => {
        const t = JSON.stringify(good[route]);
        const i = at % t.length;
        return t.slice(0, i) + insert + t.slice(i + cut);
      }),
      fc.nat({ max: 100_000 }).map((n) => `{"stream":"s","payload":${'{"a":'.repeat(n)}1${'}'.repeat(n)}}`),
    );

  it('never get a 5xx, and a refused body changes nothing', async () => {
    const { view, state } = fakeView();
    const { app, url: base } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: false, view });
    closers.push(() => app.close());
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ROUTES).chain(([method, url]) => fc.tuple(fc.constant(method), fc.constant(url), body(url), fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain'))),
        async ([method, url, payload, type]) => {
          const before = JSON.stringify(state);
          // Over real HTTP, as a local app sends it.
          const r = await fetch(`${base}${url}`, { method, body: payload, headers: { authorization: `Bearer ${KEY}`, 'content-type': type } });
          const answer = await r.text();
          expect(r.status, `${url} ${payload.slice(0, 100)}`).toBeLessThan(500);
          if (r.status >= 400) {
            expect(JSON.stringify(state)).toBe(before);
            expect((JSON.parse(answer) as { message?: unknown }).message, answer).toEqual(expect.any(String));
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('local broker packets', () => {
  async function broker(): Promise<{ port: number; ingested: Json[] }> {
    const ingested: Json[] = [];
    const b = new LocalBroker({ port: 0, logger: silentLogger(), ingest: async (_s, p) => void ingested.push(p), maxPacketBytes: 64 * 1024, maxConnections: 50 });
    const { port } = await b.start();
    closers.push(() => b.stop());
    return { port, ingested };
  }

  /** A good client connects, publishes telemetry at QoS 1 and gets its PUBACK. */
  async function goodClientServed(port: number, ingested: Json[]): Promise<void> {
    const c = await connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 5_000 });
    try {
      const n = ingested.length;
      await c.publishAsync('local/telemetry/ok', JSON.stringify({ n }), { qos: 1 });
      expect(ingested.length).toBe(n + 1);
    } finally {
      await c.endAsync(true);
    }
  }

  /** Valid packets to mutate: CONNECT then PUBLISH. */
  function goodBytes(topic: string, payload: Buffer): Buffer {
    return Buffer.concat([
      mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'fuzz', keepalive: 30 }),
      mqttPacket.generate({ cmd: 'publish', topic, payload, qos: 1, messageId: 1, retain: false, dup: false }),
    ]);
  }

  /** Sends bytes on a raw connection and waits until the broker closes it or a short while passes. */
  function sendRaw(port: number, bytes: Buffer): Promise<void> {
    return new Promise((resolve) => {
      const s = tcpConnect({ port, host: '127.0.0.1' }, () => s.write(bytes));
      s.on('error', () => undefined);
      s.on('data', () => undefined);
      const done = () => {
        clearTimeout(timer);
        s.destroy();
        resolve();
      };
      const timer = setTimeout(done, 100);
      s.once('close', done);
    });
  }

  it('random and mutated raw bytes never crash the broker; a good client is served after each run', async () => {
    const { port, ingested } = await broker();
    const mutated = fc
      .record({ topic: fc.string({ maxLength: 20 }), payload: fc.uint8Array({ maxLength: 200 }), flips: fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 6 }) })
      .map(({ topic, payload, flips }) => {
        const b = goodBytes(`local/telemetry/${topic}`, Buffer.from(payload));
        for (const [at, v] of flips) b[at % b.length] = v;
        return b;
      });
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)), mutated), async (bytes) => {
        await sendRaw(port, bytes);
      }),
      { numRuns: 300 },
    );
    await goodClientServed(port, ingested);
  });

  it('mqtt.js publishes with random topics and payloads never crash the broker; good clients are served after', async () => {
    const { port, ingested } = await broker();
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            topic: fc.oneof(fc.string({ minLength: 1, maxLength: 30 }), fc.string({ minLength: 1, maxLength: 30 }).map((s) => `local/telemetry/${s}`), fc.constant('local/shadow/reported')),
            payload: fc.oneof(fc.uint8Array({ maxLength: 500 }).map((a) => Buffer.from(a)), fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null')), fc.constant(Buffer.alloc(100_000))),
            qos: fc.constantFrom(0, 1) as fc.Arbitrary<0 | 1>,
          }),
          { minLength: 1, maxLength: 5 },
        ),
        async (messages) => {
          const c = await connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 5_000 });
          c.on('error', () => undefined);
          for (const m of messages) {
            if (!c.connected) break;
            // A refusal for the agent's state closes the connection: the promise of that QoS 1 publish never settles.
            await Promise.race([c.publishAsync(m.topic, m.payload, { qos: m.qos }).catch(() => undefined), new Promise((r) => setTimeout(r, 200))]);
          }
          await c.endAsync(true);
        },
      ),
      { numRuns: 60 },
    );
    await goodClientServed(port, ingested);
  });
});
