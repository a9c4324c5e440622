import { join } from 'node:path';
import { expect, it } from 'vitest';
import { startNatsCluster } from '../helpers/brokers.js';
import { mosquittoSub, testSession, TEST_UUID, until, type MosquittoSub } from '../helpers/mqtt.js';
import { captureLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// A real three-node NATS cluster (JetStream, MQTT) on loopback, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

const TOPIC = `iot/${TEST_UUID}/telemetry/temp`;

/** The ids in `topic payload` lines of mosquitto_sub -v. */
function idsOf(sub: MosquittoSub): string[] {
  return sub.lines.flatMap((line) => {
    try {
      const id = (JSON.parse(line.slice(line.indexOf(' ') + 1)) as { id?: unknown }).id;
      return typeof id === 'string' ? [id] : [];
    } catch {
      return [];
    }
  });
}

/** mosquitto_sub with a persistent session; the cluster's JetStream may take a moment to take MQTT sessions after the ports open. */
async function persistentSubscriber(host: string, port: number): Promise<MosquittoSub> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await mosquittoSub(host, port, `iot/${TEST_UUID}/telemetry/#`, ['-c', '-i', 'cloud-consumer', '-V', 'mqttv311']);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

it('a three-node NATS cluster: the node the agent is on is killed while a backlog drains; the agent moves to another node and a persistent subscriber gets every acknowledged message', async () => {
  const cluster = await startNatsCluster(3);
  cleanup(() => cluster.dispose());
  const [n1, n2, n3] = cluster.nodes as [(typeof cluster.nodes)[0], (typeof cluster.nodes)[0], (typeof cluster.nodes)[0]];
  const sub = await persistentSubscriber(n3.host, n3.port);
  cleanup(() => sub.stop());

  const log = captureLogger('info');
  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: '', logger: log.logger, mqtt: { urls: [n1.url, n2.url, n3.url], returnToPreferredSeconds: 0 } });
  cleanup(() => s.close());
  s.start();
  await until('connected to the first node', () => s.session.stats().connected, 30_000);
  expect(s.session.stats()).toMatchObject({ broker: n1.url, brokerIndex: 0 });

  const backlog = Array.from({ length: 2_000 }, (_, i) => `m-${String(i).padStart(5, '0')}`);
  const drained = s.session.publishMany(backlog.map((id) => ({ topic: TOPIC, payload: JSON.stringify({ id, v: 21.5 }), id })));
  await until('part of the backlog acknowledged by the first node', () => s.session.stats().acknowledged >= 200, 30_000);
  await n1.kill();
  const killedAt = Date.now();
  const ackedBeforeKill = s.session.stats().acknowledged;
  expect(ackedBeforeKill).toBeLessThan(backlog.length);
  await until('connected to another node', () => s.session.stats().connected && s.session.stats().brokerIndex !== 0, 30_000);
  const movedAfterMs = Date.now() - killedAt;
  // How the move went: each failed attempt after the kill, by node and cause.
  const nodeOf = (url: unknown): string => cluster.nodes.find((n) => n.url === url)?.name ?? String(url);
  const attempts = log.records().filter((r) => 'retryInMs' in r).map((r) => `${nodeOf(r.url)}: ${String(r.error).slice(0, 80)}`);
  const movedTo = cluster.nodes.find((n) => n.url === s.session.stats().broker)!;
  expect([n2.name, n3.name]).toContain(movedTo.name);
  const outcomes = await drained;
  expect(outcomes.filter((o) => !o.ok)).toEqual([]);

  await until('every acknowledged message at the subscriber', () => new Set(idsOf(sub)).size >= backlog.length, 30_000).catch(() => undefined);
  const received = idsOf(sub);
  const unique = new Set(received);
  const missing = backlog.filter((id) => !unique.has(id));
  console.log(
    `mqtt failover (nats cluster x3): failed attempts ${JSON.stringify(attempts)}; ${backlog.length} acknowledged, ${ackedBeforeKill} before the kill of ${n1.name}, the agent moved to ${movedTo.name} in ${movedAfterMs} ms, subscriber on ${n3.name} received ${unique.size} unique, ${missing.length} missing, ${received.length - unique.size} duplicates`,
  );
  expect(missing).toEqual([]);
}, 120_000);
