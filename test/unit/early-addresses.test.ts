import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { earlyAddresses } from '../../src/boot/early-addresses.js';
import { defaultConfig } from '../../src/config/schema.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function file(content: unknown): string {
  const path = join(dirs.make(), 'config.json');
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

describe('earlyAddresses (the ports bound before the config is validated)', () => {
  it('are the schema defaults when the file names none, and when there is no file', () => {
    const d = defaultConfig();
    const defaults = { api: { host: d.api.host, port: d.api.port } };
    expect(earlyAddresses(file({ logging: { level: 'warn' } }), {})).toEqual(defaults);
    expect(earlyAddresses(undefined, {})).toEqual(defaults);
    expect(earlyAddresses(file({ features: { localBroker: true } }), {})).toEqual({ ...defaults, broker: { host: d.localBroker.host, port: d.localBroker.port } });
  });

  it('are what the file names', () => {
    expect(earlyAddresses(file({ api: { port: 0 }, localBroker: { host: '::1', port: 1999 }, features: { localBroker: true } }), { IOTISTIC_CONFIG: 'x' })).toEqual({
      api: { host: '127.0.0.1', port: 0 },
      broker: { host: '::1', port: 1999 },
    });
    // The broker off: its port is not bound, whatever its section says.
    expect(earlyAddresses(file({ localBroker: { port: 1999 } }), {})).toEqual({ api: { host: '127.0.0.1', port: 48_484 } });
  });

  it('are unknown (nothing bound early) when the file cannot say or a variable may override them', () => {
    expect(earlyAddresses(join(dirs.make(), 'missing.json'), {})).toBeUndefined();
    expect(earlyAddresses(file('{ not json'), {})).toBeUndefined();
    expect(earlyAddresses(file([1]), {})).toBeUndefined();
    expect(earlyAddresses(file({ api: { port: 'often' } }), {})).toBeUndefined();
    expect(earlyAddresses(file({ api: { port: 70_000 } }), {})).toBeUndefined();
    expect(earlyAddresses(file({ api: { host: '' } }), {})).toBeUndefined();
    expect(earlyAddresses(file({ features: { localBroker: 'yes' } }), {})).toBeUndefined();
    expect(earlyAddresses(file({ features: { localBroker: true }, localBroker: { port: -1 } }), {})).toBeUndefined();
    expect(earlyAddresses(file({}), { IOTISTIC_API_PORT: '9000' })).toBeUndefined();
    expect(earlyAddresses(file({}), { IOTISTIC_FEATURES_LOCAL_BROKER: 'true' })).toBeUndefined();
  });
});
