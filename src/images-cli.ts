/** `iotistic-agent images import FILE | ls` (docs/api.md, "The CLI"; docs/workloads.md, "Air-gapped updates"). */
import { createReadStream, statSync } from 'node:fs';
import { request } from 'node:http';
import type { Writable } from 'node:stream';
import type { AgentApi, ApiAccess } from './cli-client.js';
import { noAnswer } from './status-target.js';
import { errorMessage } from './util/errors.js';

/** Exit codes: 0 done, 1 the agent did not answer or refused the archive, 2 a wrong use of the command. */
export const IMAGES_EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export interface ImagesIo {
  out: Writable;
  err: Writable;
}

interface ImportAnswer {
  loaded: string[];
  bytes: number;
  sha256: string;
}

interface ListAnswer {
  images: { image: string; services: string[]; present: boolean; sizeBytes: number | null }[];
  missing: { image: string; lastError: string | null }[];
}

/** Streams FILE to POST /v2/images/import (never read whole into memory); prints what was loaded. */
export async function runImageImport(access: ApiAccess, file: string, o: { sha256?: string; json?: boolean }, io: ImagesIo): Promise<number> {
  let size: number;
  try {
    const st = statSync(file);
    if (!st.isFile()) throw new Error('not a regular file');
    size = st.size;
  } catch (err) {
    io.err.write(`iotistic-agent: images import: cannot read ${file}: ${errorMessage(err)}\n`);
    return IMAGES_EXIT.usage;
  }
  const path = `/v2/images/import${o.sha256 !== undefined ? `?sha256=${encodeURIComponent(o.sha256)}` : ''}`;
  let res: { status: number; body: string };
  try {
    res = await upload(access, path, file, size);
  } catch (err) {
    io.err.write(`iotistic-agent: ${noAnswer(access.base, err) ?? `no answer from the agent at ${access.base}: ${errorMessage(err)}`}\n`);
    return IMAGES_EXIT.failed;
  }
  if (res.status === 401) {
    io.err.write(`iotistic-agent: the agent at ${access.base} refused the local API key (401): the key was read from ${access.keyFrom}; pass --key KEY, or --data-dir DIR of the agent\n`);
    return IMAGES_EXIT.failed;
  }
  if (res.status !== 200) {
    io.err.write(`iotistic-agent: the agent at ${access.base} refused ${file} (${res.status}): ${messageOf(res.body)}\n`);
    return IMAGES_EXIT.failed;
  }
  const a = JSON.parse(res.body) as ImportAnswer;
  io.out.write(o.json ? `${res.body}\n` : `loaded ${a.loaded.length === 0 ? 'an untagged image' : a.loaded.join(', ')} (${a.bytes} bytes, sha256 ${a.sha256})\n`);
  return IMAGES_EXIT.ok;
}

/** `images ls`: the images the target names, present or missing, with sizes. */
export async function runImageList(api: AgentApi, o: { json?: boolean }, io: ImagesIo): Promise<number> {
  try {
    const a = (await api.get('/v2/images')) as ListAnswer;
    if (o.json) {
      io.out.write(`${JSON.stringify(a)}\n`);
      return IMAGES_EXIT.ok;
    }
    if (a.images.length === 0) io.out.write('the target names no images\n');
    for (const i of a.images) {
      const missing = a.missing.find((m) => m.image === i.image);
      const what = i.present ? `${i.sizeBytes ?? '?'} bytes` : `MISSING${missing?.lastError ? ` (${missing.lastError})` : ''}`;
      io.out.write(`${i.image}  ${what}  used by ${i.services.join(', ')}\n`);
    }
    return IMAGES_EXIT.ok;
  } catch (err) {
    io.err.write(`iotistic-agent: ${errorMessage(err)}\n`);
    return IMAGES_EXIT.failed;
  }
}

/**
 * node:http rather than fetch: fetch cannot send a file stream with its Content-Length, and the
 * agent refuses an archive that cannot fit before it reads a byte only when it knows the length.
 */
function upload(access: ApiAccess, path: string, file: string, size: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${access.base}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${access.key}`, 'content-type': 'application/x-tar', 'content-length': String(size) },
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    const src = createReadStream(file);
    src.on('error', (err) => req.destroy(err));
    src.pipe(req);
  });
}

function messageOf(body: string): string {
  try {
    return (JSON.parse(body) as { message?: string }).message ?? body;
  } catch {
    return body;
  }
}
