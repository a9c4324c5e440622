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
    // No offline floor for the broker: the probe wakes a loop only after it saw the port closed, and a
    // broker behind a load balancer or proxy (whose port stays open while the broker is down) would then
    // hold every reconnect to one per offlineRetryIntervalSeconds (found by the chaos run: no delivery
    // for the rest of the run after a broker kill). The session's backoff and jitter pace it instead.
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
