import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import mqttPacket from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';
import { MqttSink } from '../../src/mqtt/sink.js';
import { systemClock } from '../../src/util/clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { silentLogger } from '../helpers/logger.js';
import { testSession, TEST_UUID, until, type TestSession } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Issue 20: each PUBACK is credited to the message it answers, whatever order the broker answers in
 * and whatever it says about each one. A scripted MQTT 5 broker (mqtt-packet on a socket) holds the
 * PUBACKs of a burst and answers them in reverse order, each with the reason code its message asks
 * for: a refused message is parked with the broker's reason, a transiently refused one stays queued,
 * and every other message is acknowledged, on the real session, sink and outbox (real SQLite).
 */

const dirs = tempDirs();
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  dirs.cleanup();
});

/** What each message asks the broker to answer, by a marker in its payload. */
function reasonFor(payload: string): number {
  if (payload.includes('refuse')) return 0x87; // not authorized: permanent
  if (payload.includes('quota')) return 0x97; // quota exceeded: transient
  return 0x00;
}

interface Answered {
  messageId: number;
  payloadId: string;
  reasonCode: number;
}

/** An MQTT 5 broker that answers each burst of PUBLISHes in reverse order, after `holdMs`. */
async function reorderingBroker(holdMs = 100): Promise<{ url: string; answered: Answered[]; close(): Promise<void> }> {
  const answered: Answered[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const parser = mqttPacket.parser({ protocolVersion: 5 });
    const send = (p: mqttPacket.Packet): void => void socket.write(mqttPacket.generate(p, { protocolVersion: 5 }));
    let held: Answered[] = [];
    let timer: NodeJS.Timeout | undefined;
    const release = (): void => {
      timer = undefined;
      const batch = held.reverse();
      held = [];
      for (const a of batch) {
        answered.push(a);
        send({ cmd: 'puback', messageId: a.messageId, reasonCode: a.reasonCode, ...(a.reasonCode >= 0x80 ? { properties: { reasonString: `scripted refusal of ${a.payloadId}` } } : {}) });
      }
    };
    parser.on('packet', (p) => {
      switch (p.cmd) {
        case 'connect':
          send({ cmd: 'connack', sessionPresent: false, reasonCode: 0, properties: { receiveMaximum: 100 } });
          break;
        case 'subscribe':
          send({ cmd: 'suback', messageId: p.messageId, granted: p.subscriptions.map((s) => s.qos) });
          break;
        case 'publish': {
          if (p.qos !== 1 || p.messageId === undefined) break;
          const payload = p.payload.toString();
          let payloadId = '';
          try {
            payloadId = String((JSON.parse(payload) as { id?: unknown }).id ?? '');
          } catch {
            // not ours (e.g. the birth message): answered like the rest
          }
          held.push({ messageId: p.messageId, payloadId, reasonCode: reasonFor(payload) });
          timer ??= setTimeout(release, holdMs);
          break;
        }
        case 'pingreq':
          send({ cmd: 'pingresp' });
          break;
        case 'disconnect':
          socket.end();
          break;
        default:
          break;
      }
    });
    socket.on('data', (d) => parser.parse(d));
    socket.on('close', () => timer && clearTimeout(timer));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    answered,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function setup(): Promise<{ broker: Awaited<ReturnType<typeof reorderingBroker>>; s: TestSession; outbox: Outbox; sink: MqttSink }> {
  const broker = await reorderingBroker();
  closers.push(() => broker.close());
  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: broker.url, mqtt: { protocolVersion: 5, maxInflight: 50 } });
  s.start();
  closers.push(() => s.close());
  await until('connected', () => s.session.connected);
  const outbox = new Outbox({
    store: s.store,
    clock: systemClock,
    ids: new IdGenerator(() => systemClock.now()),
    logger: silentLogger(),
    limits: { maxCount: 10_000, maxBytes: 64 * 1_048_576 },
    disk: { minFreeBytes: 0 },
  });
  closers.push(() => outbox.close());
  return { broker, s, outbox, sink: new MqttSink(s.session) };
}

describe('PUBACKs credited to the message they answer (MQTT 5, reordered, per-message reason codes)', () => {
  it('a burst answered in reverse order, with refusals mixed in: each message gets its own outcome', async () => {
    const { broker, s, outbox, sink } = await setup();
    const kinds = ['ok', 'refuse', 'ok', 'quota', 'ok', 'ok', 'refuse', 'ok', 'ok', 'quota', 'ok', 'ok'];
    await outbox.enqueueMany(kinds.map((kind, i) => ({ channel: 'telemetry', payload: { stream: 's', payload: { kind, i } } })));
    const batch: OutboxMessage[] = outbox.peekBatch({ maxCount: 100 });
    const kindOf = new Map(batch.map((m) => [m.id, (m.payload as { payload: { kind: string } }).payload.kind]));
    // The kind is in the payload the broker sees; the sink's topic body carries it.
    const result = await sink.send(batch);
    const ids = (kind: string): string[] => batch.filter((m) => kindOf.get(m.id) === kind).map((m) => m.id);

    // The broker answered out of order (reversed within the burst): the test means something.
    const order = broker.answered.filter((a) => kindOf.has(a.payloadId)).map((a) => a.payloadId);
    expect(order).toEqual(batch.map((m) => m.id).reverse());

    expect(new Set(result.accepted)).toEqual(new Set(ids('ok')));
    expect(new Set(result.rejected.map((r) => r.id))).toEqual(new Set(ids('refuse')));
    for (const r of result.rejected) expect(r.reason).toContain(`scripted refusal of ${r.id}`);
    expect(result.retryLater).toBeDefined(); // the quota-exceeded ones: put back, tried later

    // What the flusher does with it: acked deleted, refused parked with the broker's reason, the rest queued.
    outbox.ack(result.accepted);
    outbox.park(result.rejected.map((r) => r.id), 'refused');
    outbox.nack(batch.map((m) => m.id));
    expect(outbox.stats()).toMatchObject({ depth: ids('quota').length, parked: ids('refuse').length, delivered: ids('ok').length });
    expect(new Set(outbox.peekBatch({ maxCount: 100 }).map((m) => m.id))).toEqual(new Set(ids('quota')));
    expect(s.session.stats()).toMatchObject({ inflight: 0 });
  }, 15_000);

  it('publishes answered in reverse order across separate calls resolve each with its own answer', async () => {
    const { s } = await setup();
    const kinds = ['refuse', 'ok', 'quota', 'ok', 'refuse', 'ok'];
    const outcomes = await Promise.all(
      kinds.map((kind, i) => s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: JSON.stringify({ id: `m${i}`, kind }), id: `m${i}` })),
    );
    expect(outcomes.map((o) => (o.ok ? 'ok' : o.permanent ? `permanent ${o.reasonCode}` : `later ${o.reasonCode}`))).toEqual([
      'permanent 135',
      'ok',
      'later 151',
      'ok',
      'permanent 135',
      'ok',
    ]);
    for (const [i, o] of outcomes.entries()) if (!o.ok && o.permanent) expect(o.reason).toContain(`scripted refusal of m${i}`);
  }, 15_000);
});
