import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkLedger } from '../../devcloud/ledger-check.js';
import type { IncomingLogLine, IncomingLogMessage } from '../../devcloud/log-store.js';
import { logFilter, logFilterFromQuery, parseLogBatch } from '../../devcloud/logs.js';
import { DevCloudStore } from '../../devcloud/store.js';
import { digestHex, digestOf } from '../../src/outbox/ledger.js';
import { tempDirs } from '../helpers/tmp.js';

/** The devcloud's device logs: storage in a real SQLite file, the body's validation, the admin filters. */

const dirs = tempDirs();
const stores: DevCloudStore[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  dirs.cleanup();
});

function openStore(path = join(dirs.make(), 'devcloud.db')): DevCloudStore {
  const store = DevCloudStore.open(path, () => 1_000);
  stores.push(store);
  return store;
}

const line = (seq: number, ts: number, text = `line ${seq}`): IncomingLogLine => ({ seq, ts, stream: 'stdout', line: text });
const msg = (id: string, service: string, lines: IncomingLogLine[]): IncomingLogMessage => ({ id, ts: lines[0]?.ts ?? 0, service, lines });

/** The message text of what `fn` throws. */
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected an error');
}

describe('devcloud log storage', () => {
  it('stores every line of a new message; a message id seen before keeps its first lines and counts as a duplicate', () => {
    const store = openStore();
    expect(store.logs.add('dev-1', [msg('m-1', 'main/web', [line(0, 10), line(1, 11)])], 0)).toEqual({ stored: 1, duplicates: 0 });
    expect(store.logs.add('dev-1', [msg('m-1', 'main/web', [line(0, 10, 'other text')]), msg('m-2', 'agent', [line(0, 12)])], 0)).toEqual({
      stored: 1,
      duplicates: 1,
    });
    const page = store.logs.lines('dev-1', { limit: 100 });
    expect(page.more).toBe(false);
    expect(page.lines.map((l) => [l.service, l.seq, l.line, l.messageId])).toEqual([
      ['agent', 0, 'line 0', 'm-2'],
      ['main/web', 0, 'line 0', 'm-1'],
      ['main/web', 1, 'line 1', 'm-1'],
    ]);
    expect(store.received('dev-1').logs).toEqual({ received: 3, unique: 2, duplicates: 1, rejected: 0, batches: 2, lines: 3 });
    // Another device's ids are its own.
    expect(store.logs.add('dev-2', [msg('m-1', 'main/web', [line(0, 10)])], 0).stored).toBe(1);
  });

  it('does not dedup by seq: one seq under two message ids is stored twice, in arrival order; markers keep dropped and reason', () => {
    const store = openStore();
    const marker: IncomingLogLine = { seq: 6, ts: 21, stream: 'marker', line: '40 lines dropped', dropped: 40, reason: 'lines-rate' };
    store.logs.add('dev-1', [msg('a', 'main/web', [line(5, 20, 'first')])], 0);
    store.logs.add('dev-1', [msg('b', 'main/web', [line(5, 20, 'second'), marker])], 0);
    const lines = store.logs.lines('dev-1', { service: 'main/web', limit: 10 }).lines;
    expect(lines.map((l) => [l.seq, l.line, l.messageId])).toEqual([
      [5, 'first', 'a'],
      [5, 'second', 'b'],
      [6, '40 lines dropped', 'b'],
    ]);
    expect(lines[0]).not.toHaveProperty('dropped');
    expect(lines[2]).toEqual({ service: 'main/web', seq: 6, ts: 21, stream: 'marker', line: '40 lines dropped', dropped: 40, reason: 'lines-rate', messageId: 'b' });
  });

  it('filters by service, line ts (since inclusive, until exclusive), afterSeq and limit, and says when there is more', () => {
    const store = openStore();
    store.logs.add('dev-1', [msg('w', 'main/web', [0, 1, 2, 3, 4].map((s) => line(s, 100 + s))), msg('g', 'agent', [line(0, 102)])], 0);
    const seqs = (f: Parameters<typeof store.logs.lines>[1]): unknown[] => store.logs.lines('dev-1', f).lines.map((l) => `${l.service}:${l.seq}`);
    expect(seqs({ service: 'main/web', limit: 100 })).toEqual(['main/web:0', 'main/web:1', 'main/web:2', 'main/web:3', 'main/web:4']);
    expect(seqs({ since: 102, until: 104, limit: 100 })).toEqual(['agent:0', 'main/web:2', 'main/web:3']);
    expect(seqs({ service: 'main/web', afterSeq: 2, limit: 100 })).toEqual(['main/web:3', 'main/web:4']);
    expect(store.logs.lines('dev-1', { service: 'main/web', limit: 2 })).toMatchObject({ more: true, lines: [{ seq: 0 }, { seq: 1 }] });
    expect(store.logs.lines('dev-1', { service: 'main/web', afterSeq: 2, limit: 2 }).more).toBe(false);
    expect(store.logs.lines('unknown-device', { limit: 10 })).toEqual({ lines: [], more: false });
  });

  it('sums up each service: lines, first and last seq, newest ts, messages', () => {
    const store = openStore();
    store.logs.add('dev-1', [msg('1', 'main/web', [line(3, 50), line(4, 40)]), msg('2', 'main/web', [line(5, 45)]), msg('3', 'agent', [line(0, 7)])], 0);
    expect(store.logs.services('dev-1')).toEqual([
      { service: 'agent', lines: 1, firstSeq: 0, lastSeq: 0, lastTs: 7, messages: 1 },
      { service: 'main/web', lines: 3, firstSeq: 3, lastSeq: 5, lastTs: 50, messages: 2 },
    ]);
    expect(store.logs.services('nobody')).toEqual([]);
  });

  it('the loss ledger checks channel logs against the stored log message ids', () => {
    const store = openStore();
    store.logs.add('dev-1', [msg('l-1', 'agent', [line(0, 1)]), msg('l-2', 'main/web', [line(0, 1)])], 0);
    store.addMessages('dev-1', [{ id: 'l-3', channel: 'logs', ts: 1, payload: null }], 0);
    const health = { ledger: { channels: { logs: { accepted: 2, delivered: 2, queued: 0, unaccounted: 0, digest: digestHex(digestOf(['l-1', 'l-2'])) } } } };
    expect(checkLedger(health, 1, (c) => store.idsOf('dev-1', c)).channels.logs).toMatchObject({ verdict: 'match', cloud: { stored: 2 } });
    const short = { ledger: { channels: { logs: { accepted: 3, delivered: 3, queued: 0, unaccounted: 0, digest: digestHex(digestOf(['l-1', 'l-2', 'l-9'])) } } } };
    expect(checkLedger(short, 1, (c) => store.idsOf('dev-1', c)).channels.logs?.verdict).toBe('mismatch');
  });

  it('a schema-4 file gets the log tables when opened, keeping what it held', () => {
    const path = join(dirs.make(), 'devcloud.db');
    const first = DevCloudStore.open(path);
    first.addMessages('dev-1', [{ id: 'm-1', channel: 'telemetry', ts: 1, payload: 1 }], 0);
    first.close();
    const raw = new BetterSqlite3(path);
    raw.exec('DROP TABLE log_lines; DROP TABLE log_messages;');
    // What later schemas added goes too: a schema-4 file had none of it.
    raw.exec('DROP TABLE device_secrets; ALTER TABLE devices DROP COLUMN secrets_version;');
    raw.exec('DROP TABLE provisioning_keys; ALTER TABLE devices DROP COLUMN provisioning_key; ALTER TABLE devices DROP COLUMN key_revoked_at;');
    raw.pragma('user_version = 4');
    raw.close();
    const again = openStore(path);
    expect(again.messages('dev-1', 0, 10).messages.map((m) => m.id)).toEqual(['m-1']);
    expect(again.logs.add('dev-1', [msg('x', 'agent', [line(0, 1)])], 0).stored).toBe(1);
  });
});

describe('devcloud log validation', () => {
  const valid = (): { messages: Record<string, unknown>[] } => ({
    messages: [
      { id: 'a', ts: 1, service: 'main/web', lines: [{ seq: 0, ts: 1, stream: 'stdout', line: 'x' }] },
      { id: 'b', ts: 1, service: 'agent', backfill: true, lines: [{ seq: 0, ts: 1, stream: 'warn', line: 'y' }] },
    ],
  });
  /** The error for a valid body with one change made by `edit`. */
  const errorFor = (edit: (body: { messages: Record<string, unknown>[] }) => void): string => {
    const body = valid();
    edit(body);
    return errorOf(() => parseLogBatch(body));
  };
  const lineOf = (body: { messages: Record<string, unknown>[] }, i: number): Record<string, unknown> =>
    (body.messages[i]!.lines as Record<string, unknown>[])[0]!;

  it('takes a valid body, keeping backfill only when true', () => {
    const parsed = parseLogBatch(valid());
    expect(parsed[0]).toEqual({ id: 'a', ts: 1, service: 'main/web', lines: [{ seq: 0, ts: 1, stream: 'stdout', line: 'x' }] });
    expect(parsed[1]?.backfill).toBe(true);
    expect(parseLogBatch({ messages: [] })).toEqual([]);
  });

  it('names the field, the value and what was expected', () => {
    expect(errorFor((b) => (lineOf(b, 1).seq = 'x'))).toBe('messages[1].lines[0].seq: expected an integer >= 0, got "x"');
    expect(errorFor((b) => (lineOf(b, 0).seq = -1))).toBe('messages[0].lines[0].seq: expected an integer >= 0, got number -1');
    expect(errorFor((b) => (lineOf(b, 0).seq = 1.5))).toBe('messages[0].lines[0].seq: expected an integer >= 0, got number 1.5');
    expect(errorFor((b) => (b.messages[0]!.id = ''))).toBe('messages[0].id: expected a non-empty string of at most 128 characters, got ""');
    expect(errorFor((b) => (b.messages[0]!.service = 'Main/web'))).toMatch(/^messages\[0\]\.service: expected "agent" or "<app>\/<service>" .*, got "Main\/web"$/);
    expect(errorFor((b) => (b.messages[0]!.service = 'main'))).toMatch(/^messages\[0\]\.service: .* got "main"$/);
    expect(errorFor((b) => (b.messages[0]!.service = 'a/b/c'))).toMatch(/got "a\/b\/c"$/);
    expect(errorFor((b) => (b.messages[0]!.service = 'main/we..b'))).toMatch(/got "main\/we\.\.b"$/);
    expect(errorFor((b) => (b.messages[1]!.backfill = 'yes'))).toBe('messages[1].backfill: expected a boolean when present, got "yes"');
    expect(errorFor((b) => (lineOf(b, 0).ts = 'now'))).toBe('messages[0].lines[0].ts: expected a finite number, got "now"');
  });

  it('levels are streams of the agent only; markers need dropped and reason, other lines take neither', () => {
    expect(errorFor((b) => (lineOf(b, 0).stream = 'warn'))).toBe(
      'messages[0].lines[0].stream: expected one of stdout, stderr, marker (levels are for service "agent" only), got "warn"',
    );
    expect(errorFor((b) => (lineOf(b, 1).stream = 'notice'))).toBe(
      'messages[1].lines[0].stream: expected one of stdout, stderr, marker, trace, debug, info, warn, error, fatal, got "notice"',
    );
    expect(errorFor((b) => (lineOf(b, 0).stream = 'marker'))).toBe('messages[0].lines[0].dropped: expected an integer >= 1 on a marker, got nothing');
    expect(errorFor((b) => Object.assign(lineOf(b, 0), { stream: 'marker', dropped: 0 }))).toBe(
      'messages[0].lines[0].dropped: expected an integer >= 1 on a marker, got number 0',
    );
    expect(errorFor((b) => Object.assign(lineOf(b, 0), { stream: 'marker', dropped: 3 }))).toBe(
      'messages[0].lines[0].reason: expected a non-empty string of at most 256 characters, got nothing',
    );
    expect(errorFor((b) => (lineOf(b, 0).dropped = 3))).toBe('messages[0].lines[0].dropped: expected nothing on a line that is not a marker, got number 3');
    const marker = parseLogBatch({ messages: [{ id: 'm', ts: 1, service: 'agent', lines: [{ seq: 2, ts: 1, stream: 'marker', line: '3 dropped', dropped: 3, reason: 'bytes-rate' }] }] });
    expect(marker[0]?.lines[0]).toEqual({ seq: 2, ts: 1, stream: 'marker', line: '3 dropped', dropped: 3, reason: 'bytes-rate' });
  });

  it('limits the line length, the lines per message and the messages per request', () => {
    expect(errorFor((b) => (lineOf(b, 0).line = 'a'.repeat(65_537)))).toBe(
      `messages[0].lines[0].line: expected a string of at most 65536 characters, got "${'a'.repeat(40)}…" (65537 characters)`,
    );
    expect(parseLogBatch({ messages: [{ id: 'a', ts: 1, service: 'agent', lines: [{ seq: 0, ts: 1, stream: 'info', line: 'a'.repeat(65_536) }] }] })).toHaveLength(1);
    expect(errorFor((b) => (b.messages[0]!.lines = []))).toBe('messages[0].lines: expected an array of 1 to 5000 lines, got an array of 0');
    const many = Array.from({ length: 5001 }, (_, seq) => ({ seq, ts: 1, stream: 'stdout', line: '' }));
    expect(errorFor((b) => (b.messages[0]!.lines = many))).toBe('messages[0].lines: expected an array of 1 to 5000 lines, got an array of 5001');
    const tooMany = Array.from({ length: 1001 }, () => valid().messages[0]);
    expect(errorOf(() => parseLogBatch({ messages: tooMany }))).toBe('messages: expected an array of at most 1000 log messages, got an array of 1001');
    expect(errorOf(() => parseLogBatch({ msgs: [] }))).toBe('messages: expected an array of at most 1000 log messages, got nothing');
    expect(errorOf(() => parseLogBatch([]))).toBe('body: expected a JSON object, got an array of 0');
  });

  it('checks the admin filters, from a query string and as method arguments', () => {
    expect(logFilterFromQuery({})).toEqual({ limit: 1000 });
    expect(logFilterFromQuery({ service: 'main/web', since: '5', until: '9', afterSeq: '3', limit: '10000' })).toEqual({
      service: 'main/web',
      since: 5,
      until: 9,
      afterSeq: 3,
      limit: 10_000,
    });
    expect(errorOf(() => logFilterFromQuery({ limit: '10001' }))).toBe('limit: expected an integer from 1 to 10000, got "10001"');
    expect(errorOf(() => logFilterFromQuery({ limit: '0' }))).toBe('limit: expected an integer from 1 to 10000, got "0"');
    expect(errorOf(() => logFilterFromQuery({ since: 'yesterday' }))).toBe('since: expected an integer from 0 to 9007199254740991, got "yesterday"');
    expect(errorOf(() => logFilterFromQuery({ service: 'web' }))).toMatch(/^service: expected "agent" or "<app>\/<service>" .*, got "web"$/);
    expect(errorOf(() => logFilterFromQuery({ afterSeq: '4' }))).toBe('afterSeq: only with service (seq counts per service), got afterSeq 4 and no service');
    expect(logFilter({ service: 'agent', afterSeq: 0 })).toEqual({ service: 'agent', afterSeq: 0, limit: 1000 });
    expect(errorOf(() => logFilter({ until: -1 }))).toBe('until: expected an integer from 0 to 9007199254740991, got number -1');
  });
});
