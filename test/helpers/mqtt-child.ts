/**
 * An MqttSession in a process of its own, for tests that SIGKILL it (in-flight messages, last will).
 * Run with `node --import tsx test/helpers/mqtt-child.ts '<json>'`, the JSON being `ChildConfig`.
 * Commands arrive on stdin, one JSON object a line:
 *   { "publish": [ { "id", "topic", "payload" } ] }   publish each (outcomes are printed)
 *   { "stop": true }                                    stop gracefully and exit 0
 * Events go to stdout, one JSON object a line: { "event": "started" | "connected" | "disconnected" |
 * "outcome" | "stopped", ... }. When stdin closes (the test process died) the child exits.
 */
import { createInterface } from 'node:readline';
import type { AgentConfig } from '../../src/config/schema.js';
import { testSession } from './mqtt.js';

export interface ChildConfig {
  dbPath: string;
  url: string;
  uuid: string;
  mqtt?: Partial<AgentConfig['mqtt']>;
}

export interface ChildPublish {
  id: string;
  topic: string;
  payload: string;
}

const config = JSON.parse(process.argv[2] ?? '{}') as ChildConfig;
const print = (event: string, fields: object = {}): void => {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
};

const t = testSession({ dbPath: config.dbPath, url: config.url, uuid: config.uuid, mqtt: config.mqtt });
t.session.on('connected', (e) => print('connected', { ...e, inflight: t.session.stats().inflight }));
t.session.on('disconnected', (e) => print('disconnected', e));
t.start();
print('started', { inflight: t.session.stats().inflight });

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const cmd = JSON.parse(line) as { publish?: ChildPublish[]; stop?: boolean };
  for (const p of cmd.publish ?? []) {
    void t.session.publish(p).then((outcome) => print('outcome', { id: p.id, outcome }));
  }
  if (cmd.stop) {
    void t.close().then(() => {
      print('stopped');
      process.exit(0);
    });
  }
});
lines.on('close', () => process.exit(0));
