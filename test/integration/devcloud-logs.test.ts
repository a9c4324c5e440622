import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { adminClient, type AdminClient, type AdminHttpError } from '../helpers/devcloud.js';
import { tempDirs } from '../helpers/tmp.js';

/** `POST /device/v1/:uuid/logs` over real HTTP into a devcloud on a real SQLite file, read back through the admin HTTP API. */

const dirs = tempDirs();
let cloud: DevCloud;
let admin: AdminClient;

beforeAll(async () => {
  cloud = await startDevCloud({ dbPath: join(dirs.make('devcloud-logs-'), 'devcloud.db') });
  admin = adminClient(cloud.adminUrl);
});
afterAll(async () => {
  await cloud.close();
  dirs.cleanup();
});

let n = 0;
const newUuid = (): string => `logs-${process.pid}-${++n}`;

/** Posts a logs body, gzipped as the agent sends it, with the device key. */
async function postLogs(uuid: string, body: unknown, key = `key-${uuid}`): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await request(`${cloud.url}/device/v1/${uuid}/logs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-encoding': 'gzip' },
    body: gzipSync(JSON.stringify(body)),
  });
  return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
}

const webLines = (from: number, count: number) =>
  Array.from({ length: count }, (_, i) => ({ seq: from + i, ts: 1_700_000_000_000 + from + i, stream: i % 2 ? 'stderr' : 'stdout', line: `web ${from + i}` }));

describe('devcloud device logs over HTTP', () => {
  it('stores a gzipped request, answers like /messages, and a retried id is not stored twice', async () => {
    const uuid = newUuid();
    const body = {
      messages: [
        { id: 'log-1', ts: 1_700_000_000_003, service: 'main/web', lines: webLines(0, 3) },
        {
          id: 'log-2',
          ts: 1_700_000_000_010,
          service: 'agent',
          backfill: true,
          lines: [
            { seq: 0, ts: 1_700_000_000_010, stream: 'warn', line: 'disk nearly full' },
            { seq: 1, ts: 1_700_000_000_011, stream: 'marker', line: '40 lines dropped (rate limit: 100 lines/s)', dropped: 40, reason: 'lines-rate' },
          ],
        },
      ],
    };
    expect(await postLogs(uuid, body)).toEqual({ status: 200, json: { accepted: ['log-1', 'log-2'], rejected: [], duplicates: 0 } });
    // The agent retries after a lost answer: same ids, plus a new message.
    const retry = { messages: [...body.messages, { id: 'log-3', ts: 1_700_000_000_020, service: 'main/web', lines: webLines(3, 2) }] };
    expect(await postLogs(uuid, retry)).toEqual({ status: 200, json: { accepted: ['log-1', 'log-2', 'log-3'], rejected: [], duplicates: 2 } });

    const web = await admin.logs(uuid, { service: 'main/web' });
    expect(web.more).toBe(false);
    expect(web.lines.map((l) => [l.seq, l.stream, l.line, l.messageId])).toEqual([
      [0, 'stdout', 'web 0', 'log-1'],
      [1, 'stderr', 'web 1', 'log-1'],
      [2, 'stdout', 'web 2', 'log-1'],
      [3, 'stdout', 'web 3', 'log-3'],
      [4, 'stderr', 'web 4', 'log-3'],
    ]);
    const agent = await admin.logs(uuid, { service: 'agent', afterSeq: 0 });
    expect(agent.lines).toEqual([
      { service: 'agent', seq: 1, ts: 1_700_000_000_011, stream: 'marker', line: '40 lines dropped (rate limit: 100 lines/s)', dropped: 40, reason: 'lines-rate', messageId: 'log-2' },
    ]);
    expect((await admin.logs(uuid, { since: 1_700_000_000_002, until: 1_700_000_000_004, limit: 1 })).more).toBe(true);
    expect(await admin.logServices(uuid)).toEqual({
      services: [
        { service: 'agent', lines: 2, firstSeq: 0, lastSeq: 1, lastTs: 1_700_000_000_011, messages: 1 },
        { service: 'main/web', lines: 5, firstSeq: 0, lastSeq: 4, lastTs: 1_700_000_000_004, messages: 2 },
      ],
    });
    expect((await admin.received(uuid)).logs).toEqual({ received: 5, unique: 3, duplicates: 2, rejected: 0, batches: 2, lines: 7 });
  });

  it('answers a malformed body with 400 naming the field and value, and stores nothing of it', async () => {
    const uuid = newUuid();
    const lines = webLines(0, 8) as Record<string, unknown>[];
    lines[7]!.seq = 'x';
    const bad = { messages: [{ id: 'ok', ts: 1, service: 'main/web', lines: webLines(0, 1) }, { id: 'bad', ts: 1, service: 'main/web', lines }] };
    const res = await postLogs(uuid, bad);
    expect(res.status).toBe(400);
    expect(res.json.message).toBe('messages[1].lines[7].seq: expected an integer >= 0, got "x"');
    expect((await admin.logs(uuid)).lines).toEqual([]);
  });

  it('takes the device key like /messages, and the faults of the device API', async () => {
    const uuid = newUuid();
    const one = (id: string) => ({ messages: [{ id, ts: 1, service: 'agent', lines: [{ seq: 0, ts: 1, stream: 'info', line: id }] }] });
    expect((await postLogs(uuid, one('first'))).status).toBe(200);
    expect((await postLogs(uuid, one('stranger'), 'another-key')).status).toBe(401);

    await cloud.admin.setFaults({ poisonMessageIds: ['poisoned'] });
    const poisoned = await postLogs(uuid, { messages: [...one('poisoned').messages, ...one('fine').messages] });
    expect(poisoned.json).toMatchObject({ accepted: ['fine'], rejected: [{ id: 'poisoned', status: 422 }] });
    await cloud.admin.setFaults({ poisonMessageIds: null, fail: { count: 1, status: 503, path: '/logs$' } });
    expect((await postLogs(uuid, one('during-fail'))).status).toBe(503);
    await cloud.admin.clearFaults();
    expect((await admin.logs(uuid)).lines.map((l) => l.line)).toEqual(['first', 'fine']);
  });

  it('answers bad admin query values with 400 naming them; an unknown device has no lines', async () => {
    const bad = async (query: Parameters<AdminClient['logs']>[1]): Promise<unknown> =>
      admin.logs('dev-x', query).then(
        () => 'no error',
        (err: AdminHttpError) => [err.status, (err.body as { message: string }).message],
      );
    expect(await bad({ limit: 10_001 })).toEqual([400, 'limit: expected an integer from 1 to 10000, got "10001"']);
    expect(await bad({ afterSeq: 2 })).toEqual([400, 'afterSeq: only with service (seq counts per service), got afterSeq 2 and no service']);
    expect(await bad({ service: 'Web' })).toEqual([400, expect.stringMatching(/^service: expected "agent" or "<app>\/<service>" .*got "Web"$/) as string]);
    expect(await admin.logs('never-seen')).toEqual({ lines: [], more: false });
    expect(await admin.logServices('never-seen')).toEqual({ services: [] });
  });
});
