import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatIssues, loadConfig } from '../../src/config/load.js';

/**
 * The example configs an operator starts from (examples/*.json): each loads with the agent's own
 * loader (the schema, its strict keys, the warnings for settings that do nothing), points its editor
 * at the shipped schema, and carries secrets that cannot be mistaken for real ones.
 */

const ROOT = new URL('../../', import.meta.url).pathname;
const EXAMPLES = join(ROOT, 'examples');
const files = readdirSync(EXAMPLES).filter((f) => f.endsWith('.json')).sort();

/** A loader's verdict on a file as one line an operator can act on: empty when the file is good. */
function problems(file: string): string {
  const r = loadConfig({ file: join(EXAMPLES, file), env: {} });
  if (!r.ok) return `examples/${file} does not load (${r.failure}):\n${formatIssues(r.issues)}`;
  if (r.warnings.length > 0) return `examples/${file} loads with warnings:\n${r.warnings.map((w) => `  - ${w}`).join('\n')}`;
  return '';
}

/** Every string value under a key named like a secret, with its key path. */
function secrets(value: unknown, path = ''): { path: string; value: string }[] {
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([k, v]) => {
    const p = path ? `${path}.${k}` : k;
    if (typeof v === 'string' && /apiKey|password|localApiKey/i.test(k)) return [{ path: p, value: v }];
    return secrets(v, p);
  });
}

describe('examples/', () => {
  it('holds the four documented examples', () => {
    expect(files).toEqual(['http-only.json', 'local.json', 'metered.json', 'mqtt-tls.json']);
  });

  it.each(files)('%s loads with the agent\'s loader, without errors or warnings', (file) => {
    expect(problems(file)).toBe('');
  });

  it.each(files)('%s points $schema at the shipped schema', (file) => {
    const raw = JSON.parse(readFileSync(join(EXAMPLES, file), 'utf8')) as { $schema?: string };
    expect(raw.$schema, `examples/${file}: $schema`).toBe('../schema/agent-config.schema.json');
    expect(readdirSync(join(ROOT, 'schema'))).toContain('agent-config.schema.json');
  });

  it.each(files)('%s has only placeholder secrets', (file) => {
    const raw = JSON.parse(readFileSync(join(EXAMPLES, file), 'utf8')) as unknown;
    for (const s of secrets(raw)) expect(s.value, `examples/${file}: ${s.path}`).toMatch(/^REPLACE-WITH-[A-Z-]+$/);
  });

  it('each describes its case: cloud over HTTP only, MQTT over TLS with a CA, no cloud, a metered link', () => {
    const load = (f: string) => {
      const r = loadConfig({ file: join(EXAMPLES, f), env: {} });
      if (!r.ok) throw new Error(problems(f));
      return r.config;
    };
    const http = load('http-only.json');
    expect([http.cloud.apiUrl?.startsWith('https://'), http.mqtt.url]).toEqual([true, undefined]);
    const tls = load('mqtt-tls.json');
    expect([tls.mqtt.url?.startsWith('mqtts://'), tls.mqtt.caFile]).toEqual([true, '/etc/iotistic-agent/ca.pem']);
    const local = load('local.json');
    expect([local.cloud.apiUrl, local.mqtt.url, local.api.host]).toEqual([undefined, undefined, '127.0.0.1']);
    const metered = load('metered.json');
    expect(metered.settings.network.meteredBudgetBytes).toBeGreaterThan(0);
  });

  it('a broken example would be reported with its file and the key at fault', () => {
    const r = loadConfig({ file: join(EXAMPLES, 'local.json'), env: { IOTISTIC_API_PORT: 'not-a-port' } });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(formatIssues(r.issues)).toMatch(/api\.port/);
  });
});
