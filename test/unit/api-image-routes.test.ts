import { request } from 'node:http';
import type { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import type { ImagesView } from '../../src/api/image-routes.js';
import { startApi } from '../../src/api/server.js';
import { AgentError } from '../../src/util/errors.js';
import { fakeApiView } from '../helpers/api-view.js';
import { silentLogger } from '../helpers/logger.js';

/**
 * POST /v2/images/import on the real router and server (the importer behind it is a view: the
 * integration test drives the real one): a slow upload outlives the request timeout that still holds
 * everywhere else, and the importer's refusals become their statuses.
 */

const KEY = 'image-route-key-0123456789';
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

async function api(images: ImagesView): Promise<string> {
  const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: false, view: fakeApiView({ images }), timeouts: { requestMs: 800, headersMs: 800, checkEveryMs: 100 } });
  closers.push(() => app.close());
  return url;
}

/** Sends `chunks` one every `everyMs`; resolves with the status and body (or the error). */
function slowPost(url: string, path: string, chunks: number, everyMs: number, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request(`${url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-length': String(chunks * 100), ...headers } });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', (err) => resolve({ status: 0, body: err.message }));
    void (async () => {
      for (let i = 0; i < chunks; i++) {
        if (req.destroyed) return;
        req.write(Buffer.alloc(100, 0x61));
        await new Promise((r) => setTimeout(r, everyMs));
      }
      req.end();
    })();
  });
}

const counting: ImagesView = {
  import: async ({ body }: { body: Readable }) => {
    let bytes = 0;
    for await (const c of body) bytes += (c as Buffer).length;
    return { loaded: ['app:1'], bytes, sha256: 'x' };
  },
  list: async () => ({ images: [] }),
};

describe('POST /v2/images/import', () => {
  it('lets an upload take longer than the request timeout, which still cuts a slow JSON body', async () => {
    const url = await api(counting);
    const slow = await slowPost(url, '/v2/images/import', 8, 250);
    expect(slow.status).toBe(200);
    expect(JSON.parse(slow.body)).toEqual({ loaded: ['app:1'], bytes: 800, sha256: 'x' });
    const json = await slowPost(url, '/v2/local/target-state', 8, 250, { 'content-type': 'application/json' });
    expect([0, 408]).toContain(json.status);
  });

  it('answers each refusal with its status and the reason', async () => {
    const refusing = (code: string, message: string): ImagesView => ({ import: () => Promise.reject(new AgentError(code, message)), list: () => Promise.reject(new AgentError('IMAGE_IMPORT_ENGINE_DOWN', 'the container engine does not answer')) });
    for (const [code, status, error] of [
      ['IMAGE_IMPORT_BUSY', 409, 'busy'],
      ['IMAGE_IMPORT_TOO_LARGE', 413, 'too_large'],
      ['IMAGE_IMPORT_NO_SPACE', 507, 'insufficient_storage'],
      ['IMAGE_ARCHIVE_INVALID', 400, 'bad_request'],
      ['IMAGE_IMPORT_DIGEST_MISMATCH', 400, 'digest_mismatch'],
      ['IMAGE_IMPORT_ENGINE_DOWN', 503, 'engine_unavailable'],
    ] as const) {
      const url = await api(refusing(code, `why ${code}`));
      const r = await slowPost(url, '/v2/images/import', 3, 1);
      expect(r.status).toBe(status);
      expect(JSON.parse(r.body)).toEqual({ error, message: `why ${code}` });
    }
    const url = await api(refusing('X', 'x'));
    const list = await fetch(`${url}/v2/images`, { headers: { authorization: `Bearer ${KEY}` } });
    expect(list.status).toBe(503);
    const both = await slowPost(url, `/v2/images/import?sha256=${'a'.repeat(64)}`, 1, 1, { 'x-content-sha256': 'b'.repeat(64) });
    expect(both.status).toBe(400);
    expect(both.body).toContain('differ');
  });
});
