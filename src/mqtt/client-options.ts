import { readFileSync } from 'node:fs';
import { trustWithDefaults } from '../util/tls-trust.js';
import { UniqueMessageIdProvider, type IClientOptions, type IStore } from 'mqtt';
import type { AgentConfig } from '../config/schema.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { MqttVersion } from './negotiation.js';

export interface ClientOptionsInput {
  mqtt: AgentConfig['mqtt'];
  uuid: string;
  apiKey?: string | undefined;
  /** MQTT credentials issued at registration: used where mqtt.username / mqtt.password are not set. */
  issued?: { username: string; password: string } | undefined;
  url: URL;
  /** The version of this attempt (see ProtocolNegotiator). */
  version: MqttVersion;
  /** Start a clean session: the broker drops what it kept for the agent (see `IncomingGuard.cleanSessionNeeded`). */
  clean?: boolean;
  /** Topic of the last will. */
  statusTopic: string;
  now: number;
  outgoingStore: IStore;
  incomingStore: IStore;
  /** Largest packet the broker may send (MQTT 5 says so in the CONNECT; 3.1.1 cannot, `IncomingGuard`'s frame scan closes the link). */
  maxPacketBytes: number;
}

const noop = (): void => undefined;

/** mqtt.js options for one connection attempt of the session (its own reconnect loop, persistent session). */
export function clientOptions(i: ClientOptionsInput): IClientOptions {
  const m = i.mqtt;
  const options: IClientOptions = {
    protocolVersion: i.version,
    clientId: m.clientId ?? i.uuid,
    username: m.username ?? i.issued?.username ?? i.uuid,
    clean: i.clean ?? false,
    keepalive: m.keepAliveSeconds,
    connectTimeout: m.connectTimeoutMs,
    reconnectPeriod: 0,
    resubscribe: false,
    queueQoSZero: false,
    // A PINGREQ every keep-alive, busy or not, rather than re-arming the ping timer on every packet
    // (a clearTimeout and a setTimeout per PUBACK: close to a tenth of a drain's CPU). One ping a
    // minute costs nothing, and the session's watchdog judges the link by what arrives either way.
    reschedulePings: false,
    // No number cache in mqtt-packet: see util/mqtt-packet-cache.ts (this turns it off for the whole
    // process when the session connects first).
    writeCache: false,
    outgoingStore: i.outgoingStore,
    incomingStore: i.incomingStore,
    // Tracks the ids in use, so a new publish never takes the id of a stored packet being re-sent.
    messageIdProvider: new UniqueMessageIdProvider(),
    will: {
      topic: i.statusTopic,
      // The broker cannot fill in the time: ts is when this connection was made.
      payload: Buffer.from(JSON.stringify({ state: 'offline', ts: i.now })),
      qos: 1,
      retain: true,
    },
    rejectUnauthorized: true,
  };
  // mqtt.js logs through the debug module, whose calls collect their arguments into an array even
  // when debug output is off: about a fifth of what a drain allocates. Kept when DEBUG is set.
  if (!process.env.DEBUG) options.log = noop;
  const password = m.password ?? i.issued?.password ?? i.apiKey;
  if (password !== undefined) options.password = password;
  if (i.version === 5) options.properties = { sessionExpiryInterval: m.sessionExpirySeconds, maximumPacketSize: i.maxPacketBytes };
  if (i.url.protocol === 'mqtts:') {
    // Files are read at every attempt, so renewed certificates are picked up without a restart.
    // A CA file adds trust to the system roots; it never replaces them, and nothing turns checks off.
    if (m.caFile) options.ca = trustWithDefaults(readConfigFile('caFile', m.caFile));
    if (m.certFile && m.keyFile) {
      options.cert = readConfigFile('certFile', m.certFile);
      options.key = readConfigFile('keyFile', m.keyFile);
    }
  }
  return options;
}

function readConfigFile(field: 'caFile' | 'certFile' | 'keyFile', path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.${field}: cannot read ${path}: ${errorMessage(err)}`, { cause: err });
  }
}
