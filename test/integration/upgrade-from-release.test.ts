import { chmodSync, cpSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { waitFor } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// The data dir each release leaves behind (made by scripts/upgrade-fixture.ts with that release's
// build, committed under test/fixtures/releases/<version>/) must carry over to this build: the
// same identity, the target in force, and the queue, delivered once. Add a fixture at each release.
const env = agentsWithDevCloud();
const RELEASES = join(import.meta.dirname, '../fixtures/releases');

interface Fixture {
  agentVersion: string;
  uuid: string;
  localApiKey: string;
  deviceApiKey: string;
  telemetryIds: string[];
  target: { version: number; apps: Record<string, { services: Record<string, unknown> }> };
  /** Local secrets the release held (0.2.0 on). */
  secrets?: string[];
}

/** Git keeps no modes but the exec bit: give the copy the modes the agent left (it refuses looser ones for secrets). */
function tighten(path: string): void {
  const dir = statSync(path).isDirectory();
  chmodSync(path, dir ? 0o700 : 0o600);
  if (dir) for (const name of readdirSync(path)) tighten(join(path, name));
}

for (const version of readdirSync(RELEASES)) {
  it(`the data dir of release ${version} carries over: identity, target in force, secrets, queued telemetry delivered once`, async () => {
    const fixture = JSON.parse(readFileSync(join(RELEASES, version, 'fixture.json'), 'utf8')) as Fixture;
    const dataDir = env.dirs.make();
    for (const name of readdirSync(join(RELEASES, version))) {
      if (name !== 'fixture.json') cpSync(join(RELEASES, version, name), join(dataDir, name), { recursive: true });
    }
    tighten(dataDir);
    env.cloud.admin.createDevice({ uuid: fixture.uuid, apiKey: fixture.deviceApiKey });
    const agent = await env.spawn({
      dataDir,
      config: {
        device: { apiKey: fixture.deviceApiKey },
        cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 5_000 },
        features: { metrics: false },
        settings: { offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2, probeMaxIntervalSeconds: 1 } },
      },
    });
    // The local API key of the release answers: the identity was kept, not made anew.
    expect(agent.key).toBe(fixture.localApiKey);
    const identity = JSON.parse(readFileSync(join(dataDir, 'identity.json'), 'utf8')) as { uuid: string };
    expect(identity.uuid).toBe(fixture.uuid);

    const [app, spec] = Object.entries(fixture.target.apps)[0] as [string, { services: Record<string, unknown> }];
    const service = Object.keys(spec.services)[0] as string;
    await waitFor(`${app}/${service} running from the stored target`, async () => {
      const state = (await agent.get('/v2/state')).body as {
        mode: string;
        target: { version: number } | null;
        current: { apps: Record<string, { services: Record<string, { status: string }> }> };
      };
      return state.mode === 'local' && state.target?.version === fixture.target.version && state.current.apps[app]?.services[service]?.status === 'running';
    }, 30_000);

    // Its secrets are still there and still decrypt (the key file came along).
    if (fixture.secrets?.length) {
      const held = (await agent.get('/v2/secrets')).body as { secrets: { name: string; source: string }[] };
      expect(held.secrets.map((x) => x.name).sort()).toEqual([...fixture.secrets].sort());
      expect(agent.records().filter((r) => r.movedTo !== undefined)).toEqual([]);
    }

    await waitFor('the queued telemetry at the devcloud', () => env.storedMessages(fixture.uuid).filter((m) => m.channel === 'telemetry').length >= fixture.telemetryIds.length, 40_000, 250);
    const ids = env.storedMessages(fixture.uuid).filter((m) => m.channel === 'telemetry').map((m) => m.id);
    expect(ids.length).toBe(fixture.telemetryIds.length);
    expect(new Set(ids)).toEqual(new Set(fixture.telemetryIds));
  });
}
