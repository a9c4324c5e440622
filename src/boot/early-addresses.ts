import { readFileSync } from 'node:fs';

/** The local API's and the local broker's default addresses (config/schema.ts takes its defaults from here). */
export const API_ADDRESS = { host: '127.0.0.1', port: 48_484 } as const;
export const LOCAL_BROKER_ADDRESS = { host: '127.0.0.1', port: 1884 } as const;

export interface Address {
  host: string;
  port: number;
}

export interface EarlyAddresses {
  api: Address;
  /** Set when the file turns the local broker on. */
  broker?: Address;
}

/**
 * Where the config asks the local API and the local broker to listen, read from the file as plain
 * JSON, before the config's schema is loaded (which costs more than the rest of a start up to
 * then), so their ports can be bound first. Undefined when it cannot tell: an unreadable or invalid
 * file, a field of the wrong type, or an `IOTISTIC_*` variable that may override one of them. It is
 * only a hint: a listener the validated config does not ask for is closed, and the part binds its own.
 */
export function earlyAddresses(file: string | undefined, env: NodeJS.ProcessEnv): EarlyAddresses | undefined {
  if (Object.keys(env).some((k) => /^IOTISTIC_(API|LOCAL_?BROKER|FEATURES)/i.test(k))) return undefined;
  let raw: unknown = {};
  if (file !== undefined) {
    try {
      raw = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    } catch {
      return undefined;
    }
  }
  const obj = (v: unknown): Record<string, unknown> | undefined => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);
  const config = obj(raw);
  if (!config) return undefined;
  const api = address(config.api, API_ADDRESS);
  const features = config.features === undefined ? {} : obj(config.features);
  const brokerOn = features?.localBroker ?? false;
  if (!api || !features || typeof brokerOn !== 'boolean') return undefined;
  if (!brokerOn) return { api };
  const broker = address(config.localBroker, LOCAL_BROKER_ADDRESS);
  return broker ? { api, broker } : undefined;
}

/** `{ host, port }` of a config section with the defaults filled in; undefined when a field is not what the schema takes. */
function address(section: unknown, defaults: Address): Address | undefined {
  if (section === undefined) return { ...defaults };
  if (typeof section !== 'object' || section === null || Array.isArray(section)) return undefined;
  const { host = defaults.host, port = defaults.port } = section as { host?: unknown; port?: unknown };
  if (typeof host !== 'string' || host === '' || typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65_535) return undefined;
  return { host, port };
}
