import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import type { Dispatcher, request as undiciRequest } from 'undici';
import { parseRetryAfter } from '../resilience/backoff.js';
import type { Clock } from '../util/clock.js';
import { LIMIT_DEFAULTS } from '../config/schema.js';
import { AgentError } from '../util/errors.js';
import { trustWithDefaults } from '../util/tls-trust.js';
import { depthMessage, jsonDeeperThan } from '../util/json-limits.js';
import { clockCertProblem, errorCode, NETWORK_REASONS } from '../util/network-errors.js';
import { CloudAnswerRefused, CloudError } from '../resilience/cloud-error.js';

export interface CloudResponse<T = unknown> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T | undefined;
}

export interface CloudRequest {
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  path: string;
  headers?: Record<string, string>;
  json?: unknown;
  /** Compress the JSON body with gzip (batches of messages). */
  gzip?: boolean;
  signal?: AbortSignal;
  /** Statuses that are answers, not failures (304, 204...). 2xx always are. */
  accept?: number[];
  /** A bound on this answer's body other than the client's `maxResponseBytes` (the target document's). */
  maxBytes?: { bytes: number; setting: string };
  /** A bearer token sent instead of the device key (registration sends the provisioning key). */
  bearer?: string;
}

export interface CloudHttpClientOptions {
  baseUrl: string;
  /** The device key, or where to read it at each request (a key issued at registration comes later). */
  apiKey?: string | (() => string | undefined);
  /** A 401 answered to a request sent with the device key `key` (revoked or replaced: registration.ts). */
  onKeyRefused?: (key: string) => void;
  /** An answer other than 401 to a request sent with the device key `key`: the cloud takes it (again). */
  onKeyAccepted?: (key: string) => void;
  /** The whole request's deadline (`cloud.requestTimeoutMs`). */
  timeoutMs: number;
  /**
   * The connection's (TCP and TLS handshakes; `cloud.connectTimeoutMs`), capped by `timeoutMs`: a
   * connect through a black hole fails sooner than the request would, so fewer attempts are in
   * flight, their SYNs resent by the kernel, when the way opens again. Default: `timeoutMs`.
   */
  connectTimeoutMs?: number;
  clock: Pick<Clock, 'now'>;
  caFile?: string;
  userAgent?: string;
  /** Largest answer body read; default `limits.maxCloudResponseBytes`'s. */
  maxResponseBytes?: number;
  /** Deepest JSON nesting parsed; default `limits.maxJsonDepth`'s. */
  maxJsonDepth?: number;
  /** Whether the wall clock is synced: a certificate not yet valid while it is not is a `clock` error (default: synced). */
  clockSynced?: () => boolean;
}


interface Transport {
  request: typeof undiciRequest;
  dispatcher: Dispatcher;
}

/**
 * The one HTTP client of the agent: bearer auth, a hard timeout, errors classified for retry.
 * undici is loaded at the first request, so a device in local mode (no cloud) never holds it.
 */
export class CloudHttpClient {
  private transport: Promise<Transport> | undefined;
  private readonly base: URL;
  private readonly ca: string[] | undefined;

  constructor(private readonly opts: CloudHttpClientOptions) {
    this.base = new URL(opts.baseUrl.endsWith('/') ? opts.baseUrl : `${opts.baseUrl}/`);
    // Read now: a CA file that cannot be read fails the start, not the first request.
    // TLS stays verified; a CA file adds trust to the system roots, it never removes checks.
    this.ca = opts.caFile ? trustWithDefaults(readCaFile(opts.caFile)) : undefined;
  }

  private loadTransport(): Promise<Transport> {
    // `default` (undici's module.exports): named exports of this CommonJS package exist under Node's
    // loader but not in the bundle (scripts/bundle.ts), where esbuild gives a dynamic import of it only `default`.
    this.transport ??= import('undici').then(({ default: { Agent, request } }) => ({
      request,
      dispatcher: new Agent({
        connect: { timeout: this.connectTimeoutMs, ...(this.ca ? { ca: this.ca } : {}) },
        headersTimeout: this.opts.timeoutMs,
        bodyTimeout: this.opts.timeoutMs,
        keepAliveTimeout: 30_000,
      }),
    }));
    return this.transport;
  }

  private deviceKey(): string | undefined {
    const k = this.opts.apiKey;
    return typeof k === 'function' ? k() : k;
  }

  private get connectTimeoutMs(): number {
    return Math.min(this.opts.connectTimeoutMs ?? this.opts.timeoutMs, this.opts.timeoutMs);
  }

  get baseUrl(): string {
    return this.base.href;
  }

  async request<T = unknown>(req: CloudRequest): Promise<CloudResponse<T>> {
    const url = new URL(req.path.replace(/^\//, ''), this.base);
    const headers: Record<string, string> = {
      accept: 'application/json',
      'user-agent': this.opts.userAgent ?? 'iotistic-agent',
      ...req.headers,
    };
    const key = req.bearer === undefined ? this.deviceKey() : undefined;
    const bearer = req.bearer ?? key;
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    let body: Buffer | undefined;
    if (req.json !== undefined) {
      body = Buffer.from(JSON.stringify(req.json));
      headers['content-type'] = 'application/json';
      if (req.gzip) {
        body = gzipSync(body);
        headers['content-encoding'] = 'gzip';
      }
    }
    const { request, dispatcher } = await this.loadTransport();
    const timeout = AbortSignal.timeout(this.opts.timeoutMs);
    const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { method: req.method, headers, body, signal, dispatcher });
    } catch (err) {
      throw this.classify(err, req, timeout);
    }
    const ok = (res.statusCode >= 200 && res.statusCode < 300) || (req.accept ?? []).includes(res.statusCode);
    const limit = req.maxBytes ?? { bytes: this.opts.maxResponseBytes ?? LIMIT_DEFAULTS.maxCloudResponseBytes, setting: 'limits.maxCloudResponseBytes' };
    let text: string;
    try {
      const read = await readLimited(res, limit.bytes);
      if (read.over && ok) {
        throw new CloudAnswerRefused(
          'CLOUD_ANSWER_TOO_LARGE',
          `${req.method} ${url.pathname} answered ${res.statusCode} with ${read.declared !== undefined ? `${read.declared} bytes` : 'a body'} over ${limit.setting} (${limit.bytes} bytes); it was not read further`,
          res.statusCode,
          res.headers,
          limit.setting,
          limit.bytes,
        );
      }
      text = read.text;
    } catch (err) {
      if (err instanceof CloudAnswerRefused) throw err;
      throw this.classify(err, req, timeout);
    }
    if (key) (res.statusCode === 401 ? this.opts.onKeyRefused : this.opts.onKeyAccepted)?.(key);
    if (!ok) {
      const retryAfter = headerValue(res.headers['retry-after']);
      const detail = summarise(text);
      throw new CloudError(
        'http',
        `${req.method} ${url.pathname} answered ${res.statusCode}${detail ? `: ${detail}` : ''}`,
        res.statusCode,
        parseRetryAfter(retryAfter, this.opts.clock.now()),
      );
    }
    let parsed: T | undefined;
    if (text !== '') {
      const maxDepth = this.opts.maxJsonDepth ?? LIMIT_DEFAULTS.maxJsonDepth;
      if (jsonDeeperThan(text, maxDepth)) {
        throw new CloudAnswerRefused(
          'CLOUD_ANSWER_TOO_DEEP',
          `${req.method} ${url.pathname} answered ${res.statusCode} with JSON that ${depthMessage('', 'limits.maxJsonDepth', maxDepth).trimStart()}`,
          res.statusCode,
          res.headers,
          'limits.maxJsonDepth',
          maxDepth,
        );
      }
      try {
        parsed = JSON.parse(text) as T;
      } catch {
        throw new CloudError('http', `${req.method} ${url.pathname} answered ${res.statusCode} with a body that is not JSON`, res.statusCode);
      }
    }
    return { status: res.statusCode, headers: res.headers, body: parsed };
  }

  /**
   * Streams `url` (absolute, or relative to the cloud's base) into `write`, chunk by chunk, and stops
   * at `maxBytes`. The device's key goes only to the cloud's own origin, never to another host; TLS
   * is verified as for every request (cloud.caFile honoured), and the client's timeout bounds each wait.
   */
  async download(url: string, o: { maxBytes: number; setting: string; signal?: AbortSignal; write: (chunk: Buffer) => void | Promise<void> }): Promise<{ bytes: number }> {
    const target = new URL(url, this.base);
    if (target.protocol !== 'https:' && target.protocol !== 'http:') throw new AgentError('DOWNLOAD_REFUSED', `cannot download ${target.protocol} URLs; expected http: or https:`);
    const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'iotistic-agent' };
    if (this.opts.apiKey && target.origin === this.base.origin) headers.authorization = `Bearer ${this.opts.apiKey}`;
    const { request, dispatcher } = await this.loadTransport();
    const req: CloudRequest = { method: 'GET', path: target.pathname, ...(o.signal ? { signal: o.signal } : {}) };
    // No deadline on the whole download (a package may be large on a slow link): the dispatcher's
    // connect, headers and body timeouts bound every wait instead.
    const noDeadline = new AbortController().signal;
    let res: Dispatcher.ResponseData;
    try {
      res = await request(target, { method: 'GET', headers, dispatcher, ...(o.signal ? { signal: o.signal } : {}) });
    } catch (err) {
      throw this.classify(err, req, noDeadline);
    }
    if (res.statusCode < 200 || res.statusCode >= 300) {
      res.body.destroy();
      throw new CloudError('http', `GET ${target.href} answered ${res.statusCode}`, res.statusCode);
    }
    const declared = Number(headerValue(res.headers['content-length']) ?? Number.NaN);
    const tooLarge = (): Error => new AgentError('DOWNLOAD_TOO_LARGE', `GET ${target.href} is larger than ${o.setting} (${o.maxBytes} bytes)`);
    if (Number.isFinite(declared) && declared > o.maxBytes) {
      res.body.destroy();
      throw tooLarge();
    }
    let bytes = 0;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > o.maxBytes) throw tooLarge();
        await o.write(chunk);
      }
    } catch (err) {
      res.body.destroy();
      if ((err as { code?: unknown }).code === 'DOWNLOAD_TOO_LARGE') throw err;
      throw this.classify(err, req, noDeadline);
    }
    return { bytes };
  }

  /**
   * The route to the cloud changed: later requests open connections of their own, from the new link's
   * address; a kept-alive connection would go on using the old link's address, its answers (billed, on a
   * metered link) coming back over the old link. Requests under way finish on the old ones, which then close.
   */
  renewConnections(): void {
    const old = this.transport;
    this.transport = undefined;
    void old?.then((t) => t.dispatcher.close()).catch(() => undefined);
  }

  async close(): Promise<void> {
    if (this.transport) await (await this.transport).dispatcher.destroy();
  }

  private classify(err: unknown, req: CloudRequest, timeout: AbortSignal): Error {
    if (req.signal?.aborted) return err instanceof Error ? err : new Error(String(err));
    const where = `${req.method} ${req.path}`;
    if (!timeout.aborted && (err as { code?: string }).code === 'UND_ERR_CONNECT_TIMEOUT') {
      return new CloudError('timeout', `${where} failed: no connection within ${this.connectTimeoutMs} ms (cloud.connectTimeoutMs)`, undefined, undefined, { cause: err });
    }
    if (timeout.aborted || (err as { code?: string }).code?.startsWith('UND_ERR_') && /timeout/i.test(String((err as Error).message))) {
      return new CloudError('timeout', `${where} timed out after ${this.opts.timeoutMs} ms`, undefined, undefined, { cause: err });
    }
    const clock = clockCertProblem(err, this.opts.clockSynced?.() ?? true, this.opts.clock.now());
    if (clock) return new CloudError('clock', `${where} failed: ${clock}`, undefined, undefined, { cause: err });
    const code = errorCode(err);
    const words = code ? NETWORK_REASONS[code] : undefined;
    const reason = words ? `${words} (${code})` : (err as Error).message;
    return new CloudError('network', `${where} failed: ${reason}`, undefined, undefined, { cause: err });
  }
}

function readCaFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new AgentError('CONFIG_FILE_UNREADABLE', `cloud.caFile: cannot read ${path} (${code}); expected a readable PEM file`, { cause: err });
  }
}

/**
 * Reads an answer's body up to `max` bytes and stops there (the connection is dropped, the rest
 * never held): a declared Content-Length over it is refused before reading anything. An answer
 * over the limit comes back `over` with what was read, for an error's summary.
 */
async function readLimited(res: Dispatcher.ResponseData, max: number): Promise<{ text: string; over: boolean; declared?: number }> {
  const declared = Number(headerValue(res.headers['content-length']) ?? Number.NaN);
  if (Number.isFinite(declared) && declared > max) {
    res.body.destroy();
    return { text: '', over: true, declared };
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) {
      res.body.destroy();
      return { text: Buffer.concat(chunks).toString('utf8'), over: true };
    }
    chunks.push(chunk);
  }
  return { text: Buffer.concat(chunks, size).toString('utf8'), over: false };
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h;
}

function summarise(text: string): string {
  if (text === '') return '';
  try {
    const j = JSON.parse(text) as { message?: unknown; error?: unknown };
    const m = j.message ?? j.error;
    if (typeof m === 'string') return m.slice(0, 200);
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.slice(0, 200);
}
