import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../util/logger.js';
import { depthMessage, jsonDeeperThan } from '../util/json-limits.js';
import { drainBody, type DrainBounds } from './drain-body.js';

/**
 * The local API's router on node:http: a route table keyed by method and path, JSON bodies read within
 * a byte limit per route and measured before they are parsed, answers as JSON, errors as
 * `{ error, message }`. About twenty fixed routes need nothing more (no parameters, no schemas).
 */

/** An answer: status, body and headers. A handler returns one, or a plain value (200, JSON). */
export class Reply {
  constructor(
    readonly status: number,
    readonly contentType: string,
    readonly body: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {}
}

/**
 * An answer the handler writes itself, over time (GET /v2/logs?follow=1): `start` takes the response
 * once the request is routed and owns it from then on (status, headers, the end).
 */
export class Streamed {
  constructor(readonly start: (res: ServerResponse, req: IncomingMessage) => void) {}
}

export const JSON_TYPE = 'application/json; charset=utf-8';

/** A JSON answer. */
export function json(status: number, value: unknown, headers: Record<string, string> = {}): Reply {
  return new Reply(status, JSON_TYPE, stringify(value), headers);
}

/** A text answer in its own content type. */
export function text(status: number, contentType: string, body: string, headers: Record<string, string> = {}): Reply {
  return new Reply(status, contentType, body, headers);
}

function stringify(value: unknown): string {
  // A handler that returns nothing answers `null` rather than an empty body that is not JSON.
  return JSON.stringify(value) ?? 'null';
}

/** An error answered with its status and `{ error, message, ...details }`. */
export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    readonly error: string,
    message: string,
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

/** A body over its limit, after the rest of it was read and thrown away (`drained`) or not (`cut`: the connection closes). */
class BodyTooLarge extends HttpError {
  constructor(
    limit: BodyLimit,
    readonly drained: boolean,
  ) {
    super(413, 'too_large', `body is larger than ${limitName(limit)}`);
  }
}

/** The client went away before its body ended: nobody is left to answer. */
class ClientGone extends HttpError {
  constructor() {
    // Stryker disable next-line StringLiteral: never answered (the client is gone) nor logged.
    super(400, 'bad_request', 'the client closed the connection before the body ended');
  }
}

/** How many bytes a body may have, and the setting that says so (named in the 413). */
export interface BodyLimit {
  bytes: number;
  setting: string;
}

const limitName = (l: BodyLimit) => `${l.setting} (${l.bytes} bytes)`;

/** What a handler gets: the parsed JSON body (undefined when the request had none). */
export interface RouteRequest {
  readonly method: string;
  /** The path, without the query string. */
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: unknown;
  readonly raw: IncomingMessage;
}

export type Handler = (req: RouteRequest) => unknown;

/** A route the API serves (HEAD included for every GET). */
export interface ApiRoute {
  method: string;
  url: string;
}

export interface RouterOptions {
  logger: Logger;
  /** Every route's, unless the route has its own. */
  bodyLimit: BodyLimit;
  maxJsonDepth: number;
  /** A refused body is read (and thrown away) within these bounds before the 413 goes out. */
  drain: DrainBounds;
  /** Runs first, for every request (unknown paths too): an answer ends the request there. */
  guard?: (req: IncomingMessage, path: string) => Reply | undefined;
}

/**
 * Holds a route's bodies back while it is paused (the LoopShare, while the outbox delivers): a body
 * waits unread, then parsing it and the handler's synchronous part are timed as one turn.
 */
export interface RouteGate {
  /** Resolves once bodies may be read; undefined when they may now. */
  ready(): Promise<void> | undefined;
  /** Starts timing a turn; the function returned ends it. */
  begin(): () => void;
}

export interface RouteOptions {
  bodyLimit?: BodyLimit;
  gate?: RouteGate;
  /** The handler reads the body itself from `raw` (a stream of any type: POST /v2/images/import). */
  rawBody?: boolean;
}

interface Route {
  handler: Handler;
  bodyLimit: BodyLimit | undefined;
  gate: RouteGate | undefined;
  rawBody?: boolean;
}

const EMPTY_JSON = "Body cannot be empty when content-type is set to 'application/json'";
const INVALID_JSON = "body is not valid JSON: Body is not valid JSON but content-type is set to 'application/json'";

export class Router {
  /** In registration order, so that a test can walk every route (for auth, say). */
  readonly routes: ApiRoute[] = [];
  private readonly table = new Map<string, Map<string, Route>>();
  /** Connections whose request a rawBody route is reading: the route bounds it (see serveHttp's `untimed`). */
  private readonly streaming = new WeakSet<object>();
  /** Routes of `prefix + one path segment` (`/v2/secrets/{name}`); the handler reads the segment from the path. */
  private readonly segmentTable = new Map<string, Map<string, Route>>();
  private readonly patterns: { pattern: RegExp; route: Route }[] = [];

  constructor(private readonly o: RouterOptions) {}

  /** Whether a rawBody route is reading this connection's request now. */
  readonly untimed = (socket: object): boolean => this.streaming.has(socket);

  /** A GET route, and HEAD for it (same answer, no body). */
  get(path: string, handler: Handler): void {
    this.add('GET', path, handler);
    this.add('HEAD', path, handler);
  }

  post(path: string, handler: Handler, opts: RouteOptions = {}): void {
    this.add('POST', path, handler, opts);
  }

  patch(path: string, handler: Handler): void {
    this.add('PATCH', path, handler);
  }

  delete(path: string, handler: Handler): void {
    this.add('DELETE', path, handler);
  }

  /** A route for every `prefix + SEGMENT` (a segment without "/"), e.g. `segment('PUT', '/v2/secrets/', h)`. */
  segment(method: 'PUT' | 'DELETE' | 'GET', prefix: string, handler: Handler): void {
    const byMethod = this.segmentTable.get(prefix) ?? new Map<string, Route>();
    byMethod.set(method, { handler, bodyLimit: undefined, gate: undefined });
    this.segmentTable.set(prefix, byMethod);
    this.routes.push({ method, url: `${prefix}x` });
  }

  /** A POST route for every path `pattern` matches (`/v2/apps/{app}/restart`); `example` goes in the route table. */
  pattern(pattern: RegExp, example: string, handler: Handler): void {
    this.patterns.push({ pattern, route: { handler, bodyLimit: undefined, gate: undefined } });
    this.routes.push({ method: 'POST', url: example });
  }

  private segmentRoute(path: string, method: string): Route | undefined {
    if (method === 'POST') for (const p of this.patterns) if (p.pattern.test(path)) return p.route;
    for (const [prefix, byMethod] of this.segmentTable) {
      const rest = path.slice(prefix.length);
      if (path.startsWith(prefix) && rest.length > 0 && !rest.includes('/')) return byMethod.get(method);
    }
    return undefined;
  }

  /** The request listener for node:http. */
  readonly listener = (req: IncomingMessage, res: ServerResponse): void => {
    // A response whose socket is gone must not take the process with an unhandled 'error'.
    // Stryker disable next-line StringLiteral,ArrowFunction: no test can make node:http's response emit 'error' on demand.
    res.on('error', () => undefined);
    this.dispatch(req, res).catch((err: unknown) => {
      this.o.logger.error({ err: messageOf(err), url: req.url }, 'local API: answering failed');
      res.destroy();
    });
  };

  private add(method: string, path: string, handler: Handler, opts: RouteOptions = {}): void {
    const byMethod = this.table.get(path) ?? new Map<string, Route>();
    if (byMethod.has(method)) throw new Error(`route ${method} ${path} is registered twice`);
    byMethod.set(method, { handler, bodyLimit: opts.bodyLimit, gate: opts.gate, rawBody: opts.rawBody });
    this.table.set(path, byMethod);
    this.routes.push({ method, url: path });
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Stryker disable next-line StringLiteral,LogicalOperator: node:http sets both on every request it hands a server.
    const url = req.url ?? '/';
    // Stryker disable next-line StringLiteral,LogicalOperator: as above.
    const method = req.method ?? 'GET';
    // Routing ignores the query string; the path is matched as sent (no decoding, a trailing slash counts).
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    try {
      const guarded = this.o.guard?.(req, path);
      if (guarded) return send(res, guarded);
      const route = this.table.get(path)?.get(method) ?? this.segmentRoute(path, method);
      if (!route) throw new HttpError(404, 'not_found', `no route ${method} ${path}`);
      const ready = route.gate?.ready();
      if (ready) await ready;
      if (route.rawBody) this.untime(req);
      const bytes = route.rawBody ? undefined : await this.readBody(req, route.bodyLimit ?? this.o.bodyLimit);
      const end = route.gate?.begin();
      let pending: unknown;
      try {
        const body = bytes === undefined ? undefined : this.parseJson(req, bytes);
        pending = route.handler({ method, path, headers: req.headers, body, raw: req });
      } finally {
        end?.();
      }
      const out = await pending;
      if (out instanceof Streamed) return res.destroyed ? undefined : out.start(res, req);
      send(res, out instanceof Reply ? out : json(200, out));
    } catch (err) {
      this.fail(req, res, err);
    }
  }

  private untime(req: IncomingMessage): void {
    const socket = req.socket;
    this.streaming.add(socket);
    const done = (): void => void this.streaming.delete(socket);
    req.once('end', done);
    req.once('close', done);
  }

  /** The JSON body's bytes, undefined when there is none; a 415 or 413 when it cannot be taken. */
  private async readBody(req: IncomingMessage, limit: BodyLimit): Promise<Buffer | undefined> {
    const kind = bodyKind(req);
    if (kind === 'none') return undefined;
    if (kind === 'unsupported') {
      const got = req.headers['content-type'] ?? 'no content-type';
      throw new HttpError(415, 'unsupported_media_type', `body must be JSON (content-type: application/json), got ${got}`);
    }
    const declared = Number(req.headers['content-length'] ?? 0);
    const bytes = declared > limit.bytes ? 'over' : await readUpTo(req, limit.bytes);
    if (bytes === 'over') {
      this.o.logger.warn({ url: req.url, length: req.headers['content-length'] }, `local API: body refused, over ${limitName(limit)}`);
      // The answer waits for the rest of the body (thrown away), or the client never reads it.
      throw new BodyTooLarge(limit, (await drainBody(req, this.o.drain)) === 'drained');
    }
    return bytes;
  }

  private parseJson(req: IncomingMessage, bytes: Buffer): unknown {
    if (bytes.length === 0) throw new HttpError(400, 'bad_request', EMPTY_JSON);
    // A leading byte-order mark is allowed, as most JSON parsers allow it.
    const body = bytes.toString('utf8').replace(/^\uFEFF/, '');
    // Measured before it is parsed: what handles a body (schemas, stringify) recurses.
    const max = this.o.maxJsonDepth;
    if (jsonDeeperThan(body, max)) {
      this.o.logger.warn({ url: req.url }, `local API: body refused, ${depthMessage('it', 'limits.maxJsonDepth', max)}`);
      throw new HttpError(400, 'bad_request', depthMessage('body', 'limits.maxJsonDepth', max));
    }
    let value: unknown;
    try {
      value = JSON.parse(body);
    } catch {
      throw new HttpError(400, 'bad_request', INVALID_JSON);
    }
    const poisoned = /proto|constructor|\\u/.test(body) ? forbiddenKey(value) : undefined;
    if (poisoned) throw new HttpError(400, 'bad_request', `${poisoned}: this key is refused (it would set an object's prototype)`);
    return value;
  }

  /** An error as JSON: its own status, 400 `bad_request`, or a logged 500. */
  private fail(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    const status = statusOf(err);
    const message = messageOf(err);
    if (status >= 500) this.o.logger.error({ err: message, url: req.url }, 'local API error');
    // Stryker disable next-line ConditionalExpression: without it send() finds the response destroyed and writes nothing either.
    if (err instanceof ClientGone) return;
    const body = err instanceof HttpError ? { error: err.error, message, ...err.details } : { error: status === 400 ? 'bad_request' : 'error', message };
    // A body not read to its end (a bound hit while draining) is not read further: the connection closes.
    send(res, json(status, body, err instanceof BodyTooLarge && !err.drained ? { connection: 'close' } : {}));
  }
}

function send(res: ServerResponse, r: Reply): void {
  // Stryker disable next-line ConditionalExpression: a shortcut: ending a destroyed response writes nothing.
  if (res.destroyed) return;
  res.statusCode = r.status;
  for (const [name, value] of Object.entries(r.headers)) res.setHeader(name, value);
  res.setHeader('content-type', r.contentType);
  // Set for HEAD too: node leaves the body out, the length says what GET would send.
  res.setHeader('content-length', Buffer.byteLength(r.body));
  res.end(r.body);
}

/** An error's status: its own `statusCode` when it is a 4xx or 5xx (BadRequest's 400, say), else 500. */
function statusOf(err: unknown): number {
  const code = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof code === 'number' && Number.isInteger(code) && code >= 400 && code <= 599 ? code : 500;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Which requests carry a body to parse, as fastify decided before: GET and HEAD never; DELETE only
 * a framed one with a content type; POST and PATCH one with a content type, or framed and not empty.
 * Only application/json is taken (any parameters, any case); any other type is a 415.
 */
function bodyKind(req: IncomingMessage): 'none' | 'json' | 'unsupported' {
  const { method, headers } = req;
  if (method === 'GET' || method === 'HEAD') return 'none';
  const type = headers['content-type'];
  const framed = headers['transfer-encoding'] !== undefined || headers['content-length'] !== undefined;
  if (method === 'DELETE' && (type === undefined || !framed)) return 'none';
  if (type === undefined) return framed && headers['content-length'] !== '0' ? 'unsupported' : 'none';
  return type.split(';')[0]!.trim().toLowerCase() === 'application/json' ? 'json' : 'unsupported';
}

/** The body's bytes, or 'over' as soon as they pass `max` (the rest is left unread). */
function readUpTo(req: IncomingMessage, max: number): Promise<Buffer | 'over'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= max) return void chunks.push(chunk);
      finish();
      resolve('over');
    };
    const onEnd = () => {
      finish();
      resolve(Buffer.concat(chunks, size));
    };
    const onClose = () => {
      finish();
      reject(new ClientGone());
    };
    req.on('data', onData);
    req.once('end', onEnd);
    // Stryker disable next-line StringLiteral: a client gone mid-body makes node emit 'error' (aborted) before 'close'; either ends the read.
    req.once('close', onClose);
    req.once('error', onClose);
  });
}

/**
 * The path of the first key that could change a prototype once the value is merged or assigned:
 * `__proto__`, or `constructor` holding `prototype` (the keys fastify's parser refused).
 */
function forbiddenKey(value: unknown): string | undefined {
  const stack: { v: unknown; path: string }[] = [{ v: value, path: 'body' }];
  while (stack.length > 0) {
    const { v, path } = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    for (const [key, child] of Object.entries(v)) {
      if (key === '__proto__') return `${path}.__proto__`;
      if (key === 'constructor' && child instanceof Object && Object.hasOwn(child, 'prototype')) return `${path}.constructor.prototype`;
      stack.push({ v: child, path: `${path}.${key}` });
    }
  }
  return undefined;
}
