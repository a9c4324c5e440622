import type { Readable } from 'node:stream';
import { drainBody, type DrainBounds } from './drain-body.js';
import { HttpError, json, type Reply, type RouteRequest, type Router } from './http-router.js';

/** What the image routes use (assembly/api.ts builds it from the workloads' importer and engine). */
export interface ImagesView {
  /** Spools, verifies and loads a `docker save` archive; rejects with an error whose `code` names why. */
  import(req: { body: Readable; sha256?: string; declaredBytes?: number }): Promise<{ loaded: string[]; bytes: number; sha256: string }>;
  /** The images the target in force names: present or not, with their sizes. */
  list(): Promise<unknown>;
}

export const IMAGE_IMPORT_ROUTE = '/v2/images/import';
const STALL_MS = 60_000;

/** The answer for each refusal's code (workloads/image-import.ts); anything else is a 500. */
const STATUS: Readonly<Record<string, [number, string]>> = {
  IMAGE_IMPORT_BUSY: [409, 'busy'],
  IMAGE_IMPORT_TOO_LARGE: [413, 'too_large'],
  IMAGE_IMPORT_NO_SPACE: [507, 'insufficient_storage'],
  IMAGE_ARCHIVE_INVALID: [400, 'bad_request'],
  IMAGE_IMPORT_DIGEST_MISMATCH: [400, 'digest_mismatch'],
  IMAGE_IMPORT_ENGINE_DOWN: [503, 'engine_unavailable'],
  // Nobody is left to read it; answered so that it is not logged as the agent's error.
  IMAGE_IMPORT_CLIENT_GONE: [400, 'bad_request'],
};

/** `?sha256=HEX` or the `X-Content-SHA256` header (both: they must agree). */
function expectedSha256(req: RouteRequest): string | undefined {
  const query = new URL(req.raw.url ?? '/', 'http://local').searchParams.get('sha256') ?? undefined;
  const raw = req.headers['x-content-sha256'];
  const header = Array.isArray(raw) ? raw[0] : raw;
  if (query !== undefined && header !== undefined && query.toLowerCase() !== header.toLowerCase()) {
    throw new HttpError(400, 'bad_request', `sha256: the query's ${JSON.stringify(query)} and the X-Content-SHA256 header's ${JSON.stringify(header)} differ`);
  }
  return query ?? header;
}

/** `POST /v2/images/import` (the body: a `docker save` archive, streamed) and `GET /v2/images`. */
export function imageRoutes(r: Router, view: ImagesView | undefined, drain: DrainBounds): void {
  const noEngine = () => json(404, { error: 'not_found', message: 'image import needs the Docker runtime, which this agent does not have' });
  r.get('/v2/images', view ? () => view.list().catch((err: unknown) => refusal(undefined, err, drain)) : noEngine);
  r.post(
    IMAGE_IMPORT_ROUTE,
    view
      ? async (req) => {
          const length = req.headers['content-length'];
          // No bound on the whole upload (gigabytes over a slow stick take their time), but one on a stall.
          req.raw.setTimeout(STALL_MS, () => req.raw.destroy(new Error(`no byte of the archive for ${STALL_MS / 1000} s`)));
          // Received whole: the engine's load may take longer than that, and the client waits for it.
          req.raw.once('end', () => req.raw.setTimeout(0));
          try {
            const sha256 = expectedSha256(req);
            return await view.import({ body: req.raw, ...(sha256 !== undefined ? { sha256 } : {}), ...(length !== undefined ? { declaredBytes: Number(length) } : {}) });
          } catch (err) {
            return refusal(req, err, drain);
          }
        }
      : noEngine,
    { rawBody: true },
  );
}

/** A refusal's answer, once the rest of the body (if any) was read and thrown away, so the client sees it. */
async function refusal(req: RouteRequest | undefined, err: unknown, drain: DrainBounds): Promise<Reply> {
  const code = (err as { code?: unknown }).code;
  const known = typeof code === 'string' ? STATUS[code] : undefined;
  const bad = err instanceof HttpError ? ([err.statusCode, err.error] as const) : undefined;
  if (!known && !bad) throw err;
  const [status, error] = known ?? bad!;
  const cut = !req || req.raw.complete ? 'drained' : await drainBody(req.raw, drain);
  return json(status, { error, message: (err as Error).message }, cut === 'cut' ? { connection: 'close' } : {});
}
