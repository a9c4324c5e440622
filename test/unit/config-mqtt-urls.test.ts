import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { formatIssues, loadConfig } from '../../src/config/load.js';
import { mqttBrokerUrls } from '../../src/config/schema.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function load(content: unknown, env: NodeJS.ProcessEnv = {}): ReturnType<typeof loadConfig> {
  const file = join(dirs.make(), 'config.json');
  writeFileSync(file, JSON.stringify(content));
  return loadConfig({ file, env });
}

const errors = (r: ReturnType<typeof loadConfig>): string => (r.ok ? '' : formatIssues(r.issues));

describe('config: mqtt.urls', () => {
  it('takes a list of brokers, the first the preferred, with a default return to it after 300 s', () => {
    const r = load({ mqtt: { urls: ['mqtts://a.test:8883', 'mqtt://b.test'] } });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(mqttBrokerUrls(r.config.mqtt)).toEqual(['mqtts://a.test:8883', 'mqtt://b.test']);
    expect(r.config.mqtt.returnToPreferredSeconds).toBe(300);
    expect(mqttBrokerUrls({ url: 'mqtt://one.test' })).toEqual(['mqtt://one.test']);
    expect(mqttBrokerUrls({})).toEqual([]);
  });

  it('names the index of a bad URL, and what a broker URL must be', () => {
    const r = load({ mqtt: { urls: ['mqtt://a.test', 'mqtt://b.test', 'http://c.test'] } });
    expect(errors(r)).toContain('mqtt.urls.2: expected an mqtt:// or mqtts:// URL, got "http://c.test" (a string)');
    expect(errors(load({ mqtt: { url: 'ws://x.test' } }))).toContain('mqtt.url: expected an mqtt:// or mqtts:// URL, got "ws://x.test"');
  });

  it('refuses an empty list, more than 16 brokers, and both mqtt.url and mqtt.urls', () => {
    expect(errors(load({ mqtt: { urls: [] } }))).toContain('mqtt.urls: expected at least 1 items');
    const many = Array.from({ length: 17 }, (_, i) => `mqtt://b${i}.test`);
    expect(errors(load({ mqtt: { urls: many } }))).toContain('mqtt.urls: expected at most 16 items');
    expect(errors(load({ mqtt: { url: 'mqtt://a.test', urls: ['mqtt://b.test'] } }))).toContain('mqtt.urls: expected mqtt.url or mqtt.urls, not both');
  });

  it('takes the list from the environment as JSON', () => {
    const r = load({}, { IOTISTIC_MQTT_URLS: '["mqtt://a.test","mqtt://b.test"]', IOTISTIC_MQTT_RETURN_TO_PREFERRED_SECONDS: '0' });
    expect(r.ok && r.config.mqtt).toMatchObject({ urls: ['mqtt://a.test', 'mqtt://b.test'], returnToPreferredSeconds: 0 });
  });

  it('says TLS files go unused only when no broker of the list is mqtts://', () => {
    const none = load({ mqtt: { urls: ['mqtt://a.test', 'mqtt://b.test'], caFile: '/ca.pem' } });
    expect(none.warnings).toContain('mqtt.caFile is set but no URL of mqtt.urls is mqtts://: not used');
    const one = load({ mqtt: { urls: ['mqtt://a.test', 'mqtts://b.test'], caFile: '/ca.pem' } });
    expect(one.warnings.filter((w) => w.includes('caFile'))).toEqual([]);
  });
});
