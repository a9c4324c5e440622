import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudHttpClient } from '../../src/cloud/http-client.js';
import { CloudAnswerRefused } from '../../src/resilience/cloud-error.js';
import { jsonDeeperThan, valueDeeperThan } from '../../src/util/json-limits.js';
import { MqttFrameScanner } from '../../src/util/mqtt-frames.js';

describe('jsonDeeperThan', () => {
  it('counts nesting outside strings only, in text and in bytes', () => {
    expect(jsonDeeperThan('[[1]]', 2)).toBe(false);
    expect(jsonDeeperThan('[[[1]]]', 2)).toBe(true);
    expect(jsonDeeperThan('{"a":"[[[[\\"[[["}', 1)).toBe(false);
    expect(jsonDeeperThan(Buffer.from('{"é":[{"x":"ü[["}]}'), 3)).toBe(false);
    expect(jsonDeeperThan(Buffer.from('{"é":[{"x":[]}]}'), 3)).toBe(true);
    expect(jsonDeeperThan('['.repeat(1_000_000), 64)).toBe(true);
  });

  it('agrees with the depth of the parsed value for any JSON', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), fc.integer({ min: 0, max: 9 }), (v, max) => {
        const text = JSON.stringify(v);
        expect(jsonDeeperThan(text, max)).toBe(valueDeeperThan(v, max));
        expect(jsonDeeperThan(Buffer.from(text), max)).toBe(valueDeeperThan(v, max));
      }),
    );
  });
});

describe('MqttFrameScanner', () => {
  it('finds the first packet over the limit from its header, however the bytes are split', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 3000 }), { minLength: 1, maxLength: 6 }), fc.array(fc.nat({ max: 50 }), { maxLength: 10 }), (sizes, cuts) => {
        const packets = sizes.map((n, i) => mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(n), qos: 0, retain: false, dup: false, messageId: i }));
        const limit = 1_500;
        const firstOver = packets.find((p) => p.length > limit)?.length;
        const all = Buffer.concat(packets);
        const scanner = new MqttFrameScanner(limit);
        let at = 0;
        let found: number | undefined;
        for (const cut of [...cuts, all.length]) {
          const end = Math.min(all.length, at + cut);
          found ??= scanner.feed(all.subarray(at, end));
          at = end;
        }
        found ??= scanner.feed(all.subarray(at));
        expect(found).toBe(firstOver);
      }),
    );
  });

  it('refuses a remaining length of more than 4 bytes', () => {
    expect(new MqttFrameScanner(100).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))).toBe(-1);
  });
});

describe('CloudHttpClient limits', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise((r) => server?.close(r));
  });

  async function serve(handler: Parameters<typeof createServer>[1]): Promise<CloudHttpClient> {
    server = createServer(handler);
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    return new CloudHttpClient({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 5_000, clock: { now: () => Date.now() }, maxResponseBytes: 100_000, maxJsonDepth: 10 });
  }

  it('refuses an answer over the limit by its Content-Length or while reading it, naming the setting', async () => {
    let sent = 0;
    const client = await serve((req, res) => {
      if (req.url === '/declared') {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': 50_000_000 });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', etag: '"big"' });
      const chunk = Buffer.alloc(65_536, 0x20);
      const pump = (): void => {
        while (sent < 50_000_000 && !res.destroyed) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      res.on('close', () => undefined);
      pump();
    });
    await expect(client.request({ method: 'GET', path: '/declared' })).rejects.toMatchObject({ code: 'CLOUD_ANSWER_TOO_LARGE', setting: 'limits.maxCloudResponseBytes', limit: 100_000 });
    const err = await client.request({ method: 'GET', path: '/chunked', maxBytes: { bytes: 200_000, setting: 'limits.maxTargetBytes' } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CloudAnswerRefused);
    expect((err as CloudAnswerRefused).message).toMatch(/over limits\.maxTargetBytes \(200000 bytes\)/);
    expect((err as CloudAnswerRefused).headers.etag).toBe('"big"');
    expect(sent).toBeLessThan(20_000_000);
    await client.close();
  });

  it('refuses JSON nested deeper than the limit', async () => {
    const client = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${'['.repeat(11)}${']'.repeat(11)}`);
    });
    await expect(client.request({ method: 'GET', path: '/' })).rejects.toMatchObject({ code: 'CLOUD_ANSWER_TOO_DEEP', setting: 'limits.maxJsonDepth', limit: 10 });
    await client.close();
  });
});
