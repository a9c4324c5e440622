import { HttpError, json, type Router } from './http-router.js';

/** What the secrets routes use; values go in, never out. */
export interface SecretsView {
  /** Names, sources, times and users: never values. */
  list(): unknown;
  /** Sets a local value (overrides the cloud's); throws an error with code SECRET_INVALID for a bad name or value. */
  set(name: string, value: string): void;
  /** Removes a local value; false when there was none. */
  remove(name: string): boolean;
}

const PREFIX = '/v2/secrets/';

/** The value of a `{ "value": "..." }` body; the error never quotes what was sent (it may be the secret). */
function valueOf(body: unknown): string {
  const b = body as { value?: unknown } | null | undefined;
  const extra = b !== null && typeof b === 'object' ? Object.keys(b).filter((k) => k !== 'value') : [];
  if (b === null || typeof b !== 'object' || Array.isArray(b) || typeof b.value !== 'string' || extra.length > 0) {
    const got = b === undefined ? 'no body' : extra.length > 0 ? `unknown keys ${extra.join(', ')}` : `body.value of type ${b === null || typeof b !== 'object' ? typeof b : typeof b.value}`;
    throw new HttpError(400, 'bad_request', `body: expected { "value": "<the secret, a string>" }, got ${got}`);
  }
  return b.value;
}

function nameOf(path: string): string {
  try {
    return decodeURIComponent(path.slice(PREFIX.length));
  } catch {
    throw new HttpError(400, 'bad_request', 'the secret name in the path is not valid percent-encoding');
  }
}

/** `GET /v2/secrets`, `PUT /v2/secrets/{name}` (`{ "value": "..." }`), `DELETE /v2/secrets/{name}`. */
export function secretRoutes(r: Router, view: SecretsView): void {
  r.get('/v2/secrets', () => view.list());
  r.segment('PUT', PREFIX, (req) => {
    const name = nameOf(req.path);
    const value = valueOf(req.body);
    try {
      view.set(name, value);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'SECRET_INVALID') throw new HttpError(400, 'bad_request', (err as Error).message);
      throw err;
    }
    // Never echoes the value.
    return { name, source: 'local' };
  });
  r.segment('DELETE', PREFIX, (req) => {
    const name = nameOf(req.path);
    if (!view.remove(name)) return json(404, { error: 'not_found', message: `no local secret ${JSON.stringify(name)} (a cloud secret is removed in the cloud)` });
    return { name, removed: true };
  });
}
