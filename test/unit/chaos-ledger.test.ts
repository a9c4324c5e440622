import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AppendLog } from '../../bench/chaos/append-log.js';
import type { Delivery } from '../../bench/chaos/cloud-store.js';
import { computeLedger, type AgentInput } from '../../bench/chaos/ledger.js';
import { tempDirs } from '../helpers/tmp.js';

/** The chaos runner's accounting: what counts as lost, as a stored duplicate, and recovery times. */

const dirs = tempDirs();
afterAll(() => dirs.cleanup());

function ledgerFile(records: Array<[string, string, number]>): string {
  const path = join(dirs.make('chaos-ledger-'), 'ledger.log');
  const log = new AppendLog(path);
  for (const [pid, id, at] of records) log.write(['A', pid, id, at]);
  log.close();
  return path;
}

const agent = (over: Partial<AgentInput> = {}): AgentInput => ({
  agent: 'http',
  drops: { count: 0, bytes: 0, disk: 0, ttl: 0, parkedLimit: 0, corrupt: 0 },
  queued: 0,
  parked: 0,
  uuids: ['u1'],
  starts: [{ agent: 'http', at: 0, ok: true, ms: 100 }],
  ...over,
});

const d = (pid: string, id: string, at = 1_000, uuid = 'u1'): Delivery => ({ uuid, id, pid, at });

describe('chaos ledger', () => {
  it('counts acknowledged messages that were neither delivered nor counted as dropped as lost', () => {
    const api = ledgerFile([['http.api.1', 'm1', 1], ['http.api.2', 'm2', 2], ['http.api.3', 'm3', 3], ['http.api.4', 'm4', 4]]);
    const stored = [d('http.api.1', 'm1'), d('http.api.2', 'm2')];
    const lost = computeLedger([{ agent: 'http', ingress: 'api', ledgerPath: api, refused: {} }], [agent()], stored, 0, []);
    expect(lost.agents[0]).toMatchObject({ accepted: 4, delivered: 2, lost: 2 });

    const explained = computeLedger(
      [{ agent: 'http', ingress: 'api', ledgerPath: api, refused: {} }],
      [agent({ drops: { count: 0, bytes: 0, disk: 1, ttl: 0, parkedLimit: 0, corrupt: 0 }, queued: 1 })],
      stored,
      0,
      [],
    );
    expect(explained.agents[0]).toMatchObject({ lost: 0, dropped: { total: 1, disk: 1 } });

    // What the agent's salvage counted as lost with a corrupt database is explained, not lost.
    const corrupt = computeLedger(
      [{ agent: 'http', ingress: 'api', ledgerPath: api, refused: {} }],
      [agent({ drops: { count: 0, bytes: 0, disk: 0, ttl: 0, parkedLimit: 0, corrupt: 2 } })],
      stored,
      0,
      [],
    );
    expect(corrupt.agents[0]).toMatchObject({ lost: 0, dropped: { total: 2, corrupt: 2 } });
  });

  it('counts an id stored under two device uuids, and an API request stored under two ids, as stored duplicates', () => {
    const api = ledgerFile([['http.api.1', 'm1', 1], ['http.api.2', 'm2', 2]]);
    const local = ledgerFile([['http.local-mqtt.1', '-', 1]]);
    const stored = [
      d('http.api.1', 'm1', 1_000, 'u1'),
      d('http.api.1', 'm1', 1_000, 'u2'), // same id, another identity: the cloud cannot dedup it
      d('http.api.2', 'm2'),
      d('http.api.2', 'm9'), // one request, two ids
      d('http.local-mqtt.1', 'm5'),
      d('http.local-mqtt.1', 'm6'), // the producer re-sent after a lost PUBACK: not the agent's doing
    ];
    const l = computeLedger(
      [
        { agent: 'http', ingress: 'api', ledgerPath: api, refused: {} },
        { agent: 'http', ingress: 'local-mqtt', ledgerPath: local, refused: {} },
      ],
      [agent({ uuids: ['u1', 'u2'] })],
      stored,
      7,
      [],
    );
    expect(l.agents[0]).toMatchObject({ accepted: 3, delivered: 3, lost: 0, duplicatesStored: 2, producerResends: 1 });
    expect(l.duplicatesSuppressed).toBe(7);
  });

  it('counts failed starts as bricked and measures delivery after each fault from its end', () => {
    const api = ledgerFile([['http.api.1', 'm1', 1]]);
    const l = computeLedger(
      [{ agent: 'http', ingress: 'api', ledgerPath: api, refused: {} }],
      [agent({ starts: [{ agent: 'http', at: 0, ok: true, ms: 1 }, { agent: 'http', at: 5, ok: false, ms: 30_000, why: 'exited (1)' }] })],
      [d('http.api.1', 'm1', 5_000), d('http.api.9', 'm9', 9_000)],
      0,
      [
        { kind: 'agent-sigkill', target: 'agent http', at: 1_000, endAt: 4_000, affects: ['http'], notes: [], findings: [] },
        { kind: 'broker-kill', target: 'mosquitto', at: 9_500, endAt: 10_000, affects: ['http'], notes: [], findings: [] },
      ],
    );
    expect(l.agents[0]?.brickedStarts).toBe(1);
    expect(l.faults.map((f) => f.deliveringMs.http)).toEqual([1_000, null]);
    expect(l.unacknowledgedStored).toBe(1);
  });
});
