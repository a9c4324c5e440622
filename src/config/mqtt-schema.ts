import { z } from 'zod';

/** The `mqtt` section of the config: the broker(s) and the session's settings. */

/** What a broker URL must be (the config issue's words). */
const MQTT_URL_EXPECTED = 'an mqtt:// or mqtts:// URL';
const mqttUrl = (): z.ZodURL => z.url({ protocol: /^mqtts?$/, error: MQTT_URL_EXPECTED });

export const mqttSchema = z.strictObject({
  url: mqttUrl()
    .optional()
    .describe('Broker URL (mqtt:// or mqtts://). Without it (and without mqtt.urls) the agent does not use MQTT.'),
  urls: z
    .array(mqttUrl())
    .min(1)
    .max(16)
    .optional()
    .describe(
      'Brokers to fail over between (mqtt:// or mqtts://), the first the preferred: the session connects to one at a time and moves to the next when an attempt fails or the connection is lost. Instead of mqtt.url, not with it.',
    ),
  returnToPreferredSeconds: z
    .number()
    .int()
    .min(0)
    .max(86_400)
    .default(300)
    .describe(
      'With mqtt.urls: once connected to another broker this long, check the first (preferred) one and move back to it if it accepts a connection; checked again this often, and a move back happens at most once per this time. 0: never move back (stay until the connection is lost).',
    ),
  protocolVersion: z
    .union([z.literal('auto'), z.literal(4), z.literal(5)])
    .default('auto')
    .describe(
      '"auto": try MQTT 5, fall back to 3.1.1 when the broker does not speak 5, and remember it (MQTT 5 is tried again after a day or for another broker). 5 or 4 (3.1.1) force that version.',
    ),
  clientId: z.string().min(1).max(128).optional().describe('Client id; defaults to the device uuid.'),
  username: z.string().optional().describe('User name; defaults to the device uuid.'),
  password: z.string().optional().describe('Password; defaults to device.apiKey. Never logged.'),
  keepAliveSeconds: z.number().int().min(5).max(3600).default(60).describe('Keep-alive; a connection that stops answering is torn down within 1.5 x this.'),
  connectTimeoutMs: z.number().int().min(1000).default(30_000).describe('A CONNECT not acknowledged in this time counts as a failure.'),
  maxInflight: z.number().int().min(1).max(65_535).default(100).describe('Most QoS 1 publishes awaiting PUBACK at once.'),
  sessionExpirySeconds: z
    .number()
    .int()
    .min(0)
    .default(604_800)
    .describe('MQTT 5: how long the broker keeps the session (subscriptions, queued messages) while the device is away.'),
  caFile: z.string().optional().describe('CA certificate (PEM) for mqtts://, on top of the system roots.'),
  certFile: z.string().optional().describe('Client certificate (PEM) for mutual TLS.'),
  keyFile: z.string().optional().describe('Client private key (PEM) for mutual TLS.'),
}).superRefine((m, ctx) => {
  // Two sources of truth for the broker would leave the reader guessing which one wins: refused.
  if (m.url !== undefined && m.urls !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['urls'], message: 'mqtt.url or mqtt.urls, not both: list every broker in mqtt.urls (the first is the preferred) and remove mqtt.url' });
  }
  // The MQTT session refuses one without the other; caught here, it is a config error with a fallback, not a failed start.
  if ((m.certFile === undefined) === (m.keyFile === undefined)) return;
  const missing = m.certFile === undefined ? 'certFile' : 'keyFile';
  ctx.addIssue({ code: 'custom', path: [missing], message: 'a path as well: mutual TLS needs both the client certificate (certFile) and its key (keyFile)' });
});

/** The brokers of the MQTT session, the preferred first: `mqtt.urls`, else `mqtt.url`; none without MQTT. */
export function mqttBrokerUrls(m: Pick<z.output<typeof mqttSchema>, 'url' | 'urls'>): string[] {
  return m.urls ?? (m.url ? [m.url] : []);
}
