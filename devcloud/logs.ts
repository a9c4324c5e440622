import type { IncomingLogLine, IncomingLogMessage, LogFilter, LogStream } from './log-store.js';
import { badRequest, fail, isObject, queryInt, requireFiniteNumber, requireId, requireInt, requireObject } from './validate.js';

/**
 * Validation of device logs (docs/protocol.md, "Logs"): the body of `POST /device/v1/:uuid/logs` and
 * the filters of `GET /admin/devices/:uuid/logs`. Every error names the field, the value and what was
 * expected, e.g. `messages[3].lines[7].seq: expected an integer >= 0, got "x"`.
 */

/** Log messages per request. `POST …/messages` has no count of its own (only the body limit); logs have this one. */
export const MAX_LOG_MESSAGES = 1000;
export const MAX_LOG_LINES = 5000;
export const MAX_LINE_CHARS = 65_536;
export const MAX_REASON_CHARS = 256;

/** An app or service name, as the agent's target schema has it (docs/workloads.md, "Names"). */
const NAME = /^(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62}$/;
const WORKLOAD_STREAMS: readonly LogStream[] = ['stdout', 'stderr', 'marker'];
/** The agent's own log may also carry its levels as the stream. */
const AGENT_STREAMS: readonly LogStream[] = [...WORKLOAD_STREAMS, 'trace', 'debug', 'info', 'warn', 'error', 'fatal'];

/** `agent`, or `<app>/<service>` with both parts a workload name. */
export function isLogService(value: unknown): value is string {
  if (value === 'agent') return true;
  if (typeof value !== 'string') return false;
  const parts = value.split('/');
  return parts.length === 2 && parts.every((p) => NAME.test(p));
}

export function requireService(value: unknown, field: string): string {
  if (!isLogService(value)) fail(field, `"agent" or "<app>/<service>" (each part matching ${String(NAME)})`, value);
  return value;
}

function requireSeq(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) fail(field, 'an integer >= 0', value);
  return value;
}

/** The body of `POST …/logs`; the first bad field makes the whole request a 400. */
export function parseLogBatch(body: unknown): IncomingLogMessage[] {
  const obj = requireObject(body, 'body');
  if (!Array.isArray(obj.messages) || obj.messages.length > MAX_LOG_MESSAGES) {
    fail('messages', `an array of at most ${MAX_LOG_MESSAGES} log messages`, obj.messages);
  }
  return obj.messages.map((raw: unknown, i) => parseLogMessage(raw, `messages[${i}]`));
}

function parseLogMessage(raw: unknown, at: string): IncomingLogMessage {
  const m = requireObject(raw, at);
  const id = requireId(m.id, `${at}.id`);
  const ts = requireFiniteNumber(m.ts, `${at}.ts`);
  const service = requireService(m.service, `${at}.service`);
  if (m.backfill !== undefined && typeof m.backfill !== 'boolean') fail(`${at}.backfill`, 'a boolean when present', m.backfill);
  if (!Array.isArray(m.lines) || m.lines.length < 1 || m.lines.length > MAX_LOG_LINES) {
    fail(`${at}.lines`, `an array of 1 to ${MAX_LOG_LINES} lines`, m.lines);
  }
  const streams = service === 'agent' ? AGENT_STREAMS : WORKLOAD_STREAMS;
  const lines = m.lines.map((l: unknown, j) => parseLine(l, `${at}.lines[${j}]`, streams));
  return { id, ts, service, ...(m.backfill === true ? { backfill: true as const } : {}), lines };
}

function parseLine(raw: unknown, at: string, streams: readonly LogStream[]): IncomingLogLine {
  const l = requireObject(raw, at);
  const seq = requireSeq(l.seq, `${at}.seq`);
  const ts = requireFiniteNumber(l.ts, `${at}.ts`);
  const stream = l.stream as LogStream;
  if (typeof stream !== 'string' || !streams.includes(stream)) {
    fail(`${at}.stream`, `one of ${streams.join(', ')}${streams === WORKLOAD_STREAMS ? ' (levels are for service "agent" only)' : ''}`, l.stream);
  }
  if (typeof l.line !== 'string' || l.line.length > MAX_LINE_CHARS) fail(`${at}.line`, `a string of at most ${MAX_LINE_CHARS} characters`, l.line);
  if (stream !== 'marker') {
    if (l.dropped !== undefined) fail(`${at}.dropped`, 'nothing on a line that is not a marker', l.dropped);
    if (l.reason !== undefined) fail(`${at}.reason`, 'nothing on a line that is not a marker', l.reason);
    return { seq, ts, stream, line: l.line };
  }
  if (typeof l.dropped !== 'number' || !Number.isSafeInteger(l.dropped) || l.dropped < 1) fail(`${at}.dropped`, 'an integer >= 1 on a marker', l.dropped);
  const reason = requireId(l.reason, `${at}.reason`, MAX_REASON_CHARS);
  return { seq, ts, stream, line: l.line, dropped: l.dropped, reason };
}

/** The filters of `GET /admin/devices/:uuid/logs`, as the in-process admin method takes them. */
export interface LogQuery {
  service?: string;
  since?: number;
  until?: number;
  afterSeq?: number;
  limit?: number;
}

export const DEFAULT_LOG_PAGE = 1000;
export const MAX_LOG_PAGE = 10_000;

/** Validates the admin method's filters (numbers as numbers). */
export function logFilter(query: LogQuery): LogFilter {
  if (!isObject(query)) fail('query', 'a JSON object', query);
  const opt = (value: unknown, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined =>
    value === undefined ? undefined : requireInt(value, field, min, max);
  return checked({
    service: query.service === undefined ? undefined : requireService(query.service, 'service'),
    since: opt(query.since, 'since'),
    until: opt(query.until, 'until'),
    afterSeq: opt(query.afterSeq, 'afterSeq'),
    limit: opt(query.limit, 'limit', 1, MAX_LOG_PAGE) ?? DEFAULT_LOG_PAGE,
  });
}

/** Validates the admin route's query string (every value a string, or absent). */
export function logFilterFromQuery(query: Record<string, string | undefined>): LogFilter {
  const opt = (field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined =>
    query[field] === undefined || query[field] === '' ? undefined : queryInt(query[field], field, min, max, 0);
  return checked({
    service: query.service === undefined || query.service === '' ? undefined : requireService(query.service, 'service'),
    since: opt('since'),
    until: opt('until'),
    afterSeq: opt('afterSeq'),
    limit: opt('limit', 1, MAX_LOG_PAGE) ?? DEFAULT_LOG_PAGE,
  });
}

/** afterSeq needs a service; absent filters are left out (exactOptionalPropertyTypes). */
function checked(filter: { [K in keyof LogFilter]: LogFilter[K] | undefined } & { limit: number }): LogFilter {
  if (filter.afterSeq !== undefined && filter.service === undefined) {
    throw badRequest(`afterSeq: only with service (seq counts per service), got afterSeq ${filter.afterSeq} and no service`);
  }
  const out: LogFilter = { limit: filter.limit };
  if (filter.service !== undefined) out.service = filter.service;
  if (filter.since !== undefined) out.since = filter.since;
  if (filter.until !== undefined) out.until = filter.until;
  if (filter.afterSeq !== undefined) out.afterSeq = filter.afterSeq;
  return out;
}
