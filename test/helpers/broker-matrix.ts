import { readFileSync } from 'node:fs';
import type { IClientOptions } from 'mqtt';
import { startNats, startRabbitMq } from './brokers.js';
import { makeCa, type TestCa } from './certs.js';
import { startMosquitto } from './mosquitto.js';

/**
 * The broker configurations of the compatibility matrix (test/integration/broker-matrix.test.ts): each
 * starts its broker privately (free loopback ports, its own data dir, stopped by pid) and says how the
 * agent and the cloud-side client reach it, and which MQTT version the agent must end up speaking.
 */

export interface Device {
  uuid: string;
  apiKey: string;
}

export interface ProtocolView {
  setting: 'auto' | 4 | 5;
  version: 4 | 5;
  negotiated: boolean;
}

export interface MatrixBroker {
  url: string;
  /** The agent's `mqtt` config besides `url` (TLS files, a forced version). */
  agentMqtt: Record<string, unknown>;
  /** mqtt.js options of the cloud-side client (credentials, TLS). */
  clientOptions: IClientOptions;
  log(): string;
  /** A clean stop; sessions, queued and retained messages are kept. */
  stop(): Promise<void>;
  /** Starts again on the same port with the same data. */
  start(): Promise<void>;
  dispose(): Promise<void>;
}

export interface BrokerConfiguration {
  name: string;
  /** What `/v2/connection` shows as `mqtt.protocol` once connected. */
  protocol: ProtocolView;
  /**
   * What the broker does with a "." in a topic level (a device uuid or a telemetry stream may have
   * one): `kept` delivers it as published; `split` delivers it with each "." turned into "/" (RabbitMQ
   * maps MQTT topics to AMQP routing keys); `closes` closes the publisher's connection without a PUBACK
   * (NATS 2.9: "." separates NATS subject tokens).
   */
  dottedTopic: 'kept' | 'split' | 'closes';
  /** Slow to start: the test starts it ahead, while the other configurations run. */
  slowStart?: boolean;
  start(device: Device): Promise<MatrixBroker>;
}

/**
 * Mosquitto 2 with persistence (the cloud's persistent session and its queued messages survive a
 * restart). Mosquitto has no setting to refuse MQTT 5, so the 3.1.1 configurations force the agent's
 * `mqtt.protocolVersion: 4`; the others keep the default `auto`, which settles on 5.
 */
function mosquitto(version: 4 | 5, tls: boolean): BrokerConfiguration {
  return {
    name: `Mosquitto, MQTT ${version === 4 ? '3.1.1' : '5'} over ${tls ? 'TLS' : 'TCP'}`,
    protocol: version === 4 ? { setting: 4, version: 4, negotiated: true } : { setting: 'auto', version: 5, negotiated: true },
    dottedTopic: 'kept',
    async start(device) {
      const ca: TestCa | undefined = tls ? makeCa('Iotistic Matrix CA') : undefined;
      try {
        const broker = await startMosquitto({
          persistence: true,
          ...(ca ? { tls: { caFile: ca.caFile, certFile: ca.server.certFile, keyFile: ca.server.keyFile, requireCertificate: true } } : {}),
        });
        // Mutual TLS, as a device presents itself: a client certificate for the device, another for the cloud.
        const deviceCert = ca?.client(device.uuid);
        const cloudCert = ca?.client('cloud');
        return {
          url: broker.url,
          agentMqtt: {
            ...(version === 4 ? { protocolVersion: 4 } : {}),
            ...(ca && deviceCert ? { caFile: ca.caFile, certFile: deviceCert.certFile, keyFile: deviceCert.keyFile } : {}),
          },
          clientOptions:
            ca && cloudCert
              ? { ca: readFileSync(ca.caFile), cert: readFileSync(cloudCert.certFile), key: readFileSync(cloudCert.keyFile), rejectUnauthorized: true }
              : {},
          log: broker.log,
          stop: broker.stop,
          start: async () => {
            await broker.start();
          },
          async dispose() {
            await broker.dispose();
            ca?.dispose();
          },
        };
      } catch (err) {
        ca?.dispose();
        throw err;
      }
    },
  };
}

/** RabbitMQ 3.10's MQTT plugin and NATS 2.9 speak 3.1.1 only: the agent (mqtt.protocolVersion "auto") must find that by itself. */
const rabbitMq: BrokerConfiguration = {
  name: 'RabbitMQ 3.10 (rabbitmq_mqtt), TCP',
  protocol: { setting: 'auto', version: 4, negotiated: true },
  dottedTopic: 'split',
  slowStart: true,
  async start(device) {
    const broker = await startRabbitMq({ user: { name: device.uuid, password: device.apiKey } });
    // The node has the device's user only (no guest): the cloud-side client logs in with it too.
    return { ...broker, agentMqtt: {}, clientOptions: { username: device.uuid, password: device.apiKey } };
  },
};

const nats: BrokerConfiguration = {
  name: 'NATS 2.9 (MQTT listener, JetStream), TCP',
  protocol: { setting: 'auto', version: 4, negotiated: true },
  dottedTopic: 'closes',
  async start() {
    const broker = await startNats();
    return { ...broker, agentMqtt: {}, clientOptions: {} };
  },
};

export const BROKER_MATRIX: readonly BrokerConfiguration[] = [mosquitto(4, false), mosquitto(5, false), mosquitto(4, true), mosquitto(5, true), nats, rabbitMq];
