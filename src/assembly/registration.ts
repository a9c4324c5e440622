import { saveIssuedCredentials, type Identity } from '../boot/identity.js';
import type { CloudHttpClient } from '../cloud/http-client.js';
import { buildHttpClient } from './cloud.js';
import { Registrar } from '../cloud/registration.js';
import { refusedRetryMaxMs } from '../resilience/backoff.js';
import type { Core } from './core.js';
import { mqttBrokerUrls } from '../config/schema.js';

/**
 * The device key's source (docs/lifecycle.md, "Provisioning"): the configured `device.apiKey`, or the
 * key registration brings; and the one HTTP client, which sends it. Built before the MQTT session and
 * the cloud loops, which read the key at each use.
 */
export function buildRegistration(core: Core, identity: Identity): { registrar: Registrar; http: CloudHttpClient } | undefined {
  const { config, clock, random, logger } = core;
  if (!config.cloud.apiUrl) return undefined;
  let kept = identity;
  // The client reads the key at each request, so one registration brings is used without a restart.
  const http = buildHttpClient(core, config.cloud.apiUrl, {
    apiKey: () => registrar.apiKey(),
    keyRefused: (key) => registrar.keyRefused(key),
    keyAccepted: (key) => registrar.keyAccepted(key),
  });
  const registrar: Registrar = new Registrar({
    http,
    uuid: core.uuid,
    name: config.device.name,
    agentVersion: core.version,
    configuredKey: config.device.apiKey,
    provisioningKey: config.device.provisioningKey,
    issued: identity.issued,
    keep: (issued) => {
      kept = saveIssuedCredentials(config.dataDir, kept, issued);
    },
    retry: core.retryFor('api'),
    refusedRetryMaxMs: refusedRetryMaxMs(config.settings.offline),
    monitor: core.monitor,
    clock,
    random,
    logger: logger.child({ part: 'registration' }),
    // Loops that backed off after the refused key try again now (each after its own stagger).
    onRegistered: () => {
      core.probes.wakeup('api').wake('registered');
      if (mqttBrokerUrls(config.mqtt).length > 0) core.probes.wakeup('mqtt').wake('registered');
    },
  });
  return { registrar, http };
}
