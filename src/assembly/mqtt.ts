import { MqttSession } from '../mqtt/session.js';
import { MqttSink } from '../mqtt/sink.js';
import { backoffFromSettings, refusedRetryMaxMs } from '../resilience/backoff.js';
import type { Registrar } from '../cloud/registration.js';
import type { Shadow } from '../shadow/shadow.js';
import type { Core } from './core.js';
import { addFlusher, type Queueing } from './outbox.js';
import { mqttBrokerUrls } from '../config/schema.js';

/** The MQTT session (`mqtt.url` or `mqtt.urls`) and the flusher that publishes the channels it carries. */
export function buildMqtt(core: Core, q: Queueing, registrar?: Registrar): MqttSession | undefined {
  const { config, store, monitor, probes, clock, random, logger } = core;
  if (mqttBrokerUrls(config.mqtt).length === 0) return undefined;
  const mqtt = new MqttSession({
    config: {
      mqtt: config.mqtt,
      uuid: core.uuid,
      // Read at each attempt: the key (and credentials) registration brings are used without a restart.
      apiKey: registrar ? () => registrar.apiKey() : config.device.apiKey,
      ...(registrar ? { issued: () => registrar.mqttCredentials() } : {}),
      limits: config.limits,
    },
    store,
    monitor,
    backoff: backoffFromSettings(config.settings.offline, { clock, random }),
    refusedRetryMaxMs: refusedRetryMaxMs(config.settings.offline),
    wakeup: probes.wakeup('mqtt'),
    // The offline floor, as the API's loops have it: refused or black-holed, the probe's handshake is
    // the way back, and the session's reconnects would only meet a returning broker in a crowd. A broker
    // behind a load balancer or proxy (whose port stays open while the broker is down) lifts the floor at
    // the probe's first handshake (offlineFloorApplies), so the backoff paces the session there.
    floorMs: core.offlineFloorMs('mqtt'),
    clock,
    clockSynced: () => core.clockSync.synced,
    random,
    logger: logger.child({ part: 'mqtt' }),
  });
  addFlusher(core, q, new MqttSink(mqtt));
  return mqtt;
}

/** What the cloud pushes over MQTT: notifies that cut a poll's wait short, the shadow's desired state. */
export interface MqttRoutes {
  pollTarget(): void;
  pollJobs(): void;
  shadow: Pick<Shadow, 'applyCloudDesired'> | undefined;
}

export function routeMqttMessages(mqtt: Pick<MqttSession, 'on'>, to: MqttRoutes): void {
  mqtt.on('message', (m) => {
    if (m.kind === 'target-notify') to.pollTarget();
    else if (m.kind === 'jobs-notify') to.pollJobs();
    else if (m.kind === 'shadow-desired') to.shadow?.applyCloudDesired(m.payload);
  });
}
