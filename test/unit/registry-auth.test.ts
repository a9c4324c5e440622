import { writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { formatIssues, loadConfig, redactConfig } from '../../src/config/load.js';
import { systemClock } from '../../src/util/clock.js';
import { seededRandom } from '../../src/util/random.js';
import { isRegistryHost } from '../../src/util/registry-host.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { DockerRuntime } from '../../src/workloads/runtimes/docker.js';
import { pullErrorMessage, redactTargetDocument, registryOfImage, registrySecretNames, TargetRegistryCredentials } from '../../src/workloads/registry-auth.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import type { RegistryAuth } from '../../src/workloads/types.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';
import { tempDirs } from '../helpers/tmp.js';

const SECRET = 's3cret-Pa55word';
const REG = 'localhost:5000';
const APPS = { a: { services: { web: { image: `${REG}/app:2` } } } };

/** The rejection's message; its issues (shown in /v2/state's lastRejection, the local API's 400) never hold a password. */
function rejected(doc: unknown): string {
  const v = validateTarget(doc);
  if (v.ok) throw new Error('expected a rejection');
  expect(JSON.stringify(v.issues)).not.toContain(SECRET);
  return v.message;
}

describe('the target\'s registries', () => {
  it('accepts a login or { device: true } per registry host[:port], and keeps them in the parsed target', () => {
    const v = validateTarget({ version: 1, apps: APPS, registries: { [REG]: { username: 'ci', password: SECRET }, 'ghcr.io': { device: true }, '10.0.0.2:5000': { device: true } } });
    expect(v.ok && v.target.registries).toEqual({ [REG]: { username: 'ci', password: SECRET }, 'ghcr.io': { device: true }, '10.0.0.2:5000': { device: true } });
    const without = validateTarget({ version: 1, apps: APPS });
    expect(without.ok && 'registries' in without.target).toBe(false);
  });

  it('refuses a key with a scheme, a path or a bad port, naming the key and what was expected', () => {
    for (const key of ['https://reg.example.com', 'reg.example.com/team', 'reg:99999', 'reg:', 'a b']) {
      const msg = rejected({ version: 1, registries: { [key]: { username: 'u', password: SECRET } } });
      expect(msg).toContain(`registries[${JSON.stringify(key)}]: expected a key that is a registry host[:port]`);
      expect(msg).toContain(JSON.stringify(key));
    }
    for (const key of ['registry.example.com', 'localhost', 'localhost:5000', '127.0.0.1:5000', '[::1]:5000']) expect(isRegistryHost(key)).toBe(true);
  });

  it('names every bad field of an entry and never shows a password', () => {
    const msg = rejected({
      version: 1,
      registries: {
        'a.io': { username: '', password: SECRET },
        'b.io': { username: 'u', password: 42 },
        'c.io': { username: 'u' },
        'd.io': { device: false },
        'e.io': { device: true, password: SECRET },
        'f.io': SECRET,
        'g.io': { username: 'u', password: SECRET, token: 'x' },
      },
    });
    expect(msg).toContain('registries["a.io"].username: expected a non-empty string (the registry\'s username), got "" (a string)');
    expect(msg).toContain('registries["b.io"].password: expected a non-empty string (the registry\'s password), got "[redacted]"');
    expect(msg).toContain('registries["c.io"].password: expected a non-empty string');
    expect(msg).toContain('registries["d.io"].device: expected true');
    expect(msg).toContain('registries["e.io"].password: expected no other key beside "device": true');
    expect(msg).toContain('registries["f.io"]: expected an object { "username": "...", "password": "..." }, { "username": "...", "passwordSecret": "<secret name>" } or { "device": true }, got "[redacted]"');
    expect(msg).toContain('registries["g.io"].token: expected no such key');
    expect(msg).not.toContain(SECRET);
    expect(rejected({ version: 1, registries: [{ password: SECRET }] })).not.toContain(SECRET);
  });

  it('refuses two keys for one registry (Docker Hub has several names)', () => {
    expect(rejected({ version: 1, registries: { 'docker.io': { device: true }, 'index.docker.io': { device: true } } })).toContain('registries["index.docker.io"]: expected one entry per registry ("docker.io" names the same one)');
  });

  it('is shown with its passwords redacted, usernames and registries kept', () => {
    const doc = { version: 1, apps: {}, registries: { [REG]: { username: 'ci', password: SECRET }, 'ghcr.io': { device: true } } };
    expect(redactTargetDocument(doc)).toEqual({ version: 1, apps: {}, registries: { [REG]: { username: 'ci', password: '[redacted]' }, 'ghcr.io': { device: true } } });
    expect(doc.registries[REG].password).toBe(SECRET);
  });
});

describe('which credentials a pull uses', () => {
  const device = { [REG]: { username: 'dev', password: 'device-pw' }, 'docker.io': { username: 'hub', password: 'hub-pw' } };

  it('finds the registry of an image: its domain, or Docker Hub', () => {
    expect(registryOfImage(`${REG}/app:2`)).toBe(REG);
    expect(registryOfImage('busybox')).toBe('docker.io');
    expect(registryOfImage('index.docker.io/library/busybox:1')).toBe('docker.io');
    expect(registryOfImage('Registry.Example.com/x/y@sha256:' + 'a'.repeat(64))).toBe('registry.example.com');
  });

  it('the target\'s login wins, else the device\'s, else none', () => {
    const both = new TargetRegistryCredentials({ [REG]: { username: 'ci', password: SECRET } }, device);
    expect(both.for(REG)).toEqual({ username: 'ci', password: SECRET, source: 'target' });
    expect(both.for('docker.io')).toEqual({ username: 'hub', password: 'hub-pw', source: 'device' });
    expect(both.for('ghcr.io')).toBeUndefined();
    expect(new TargetRegistryCredentials({ [REG]: { device: true } }, device).for(REG)).toEqual({ username: 'dev', password: 'device-pw', source: 'device' });
    expect(new TargetRegistryCredentials({ 'index.docker.io': { username: 'me', password: 'x' } }, undefined).for('docker.io')?.username).toBe('me');
  });

  it('{ device: true } without device credentials is a clear error naming the config key', () => {
    const c = new TargetRegistryCredentials({ [REG]: { device: true } }, {});
    expect(() => c.for(REG)).toThrow(`the target asks for the device's own credentials for ${REG} ({"device": true}), but the device's config has none: set workloads.registries["${REG}"]`);
  });

  it('takes a password from one of the device\'s secrets, and says it waits for a secret it does not hold', () => {
    const held = new Map([['registry-pw', SECRET]]);
    const c = new TargetRegistryCredentials({ [REG]: { username: 'ci', passwordSecret: 'registry-pw' } }, device, { get: (n) => held.get(n) });
    expect(c.for(REG)).toEqual({ username: 'ci', password: SECRET, source: 'target' });
    held.delete('registry-pw');
    expect(() => c.for(REG)).toThrow(`waiting for secret registry-pw: the target's login for ${REG} takes its password from it`);
    expect(registrySecretNames({ [REG]: { username: 'ci', passwordSecret: 'registry-pw' }, 'ghcr.io': { device: true } })).toEqual(['registry-pw']);
  });

  it('accepts { username, passwordSecret } in a target; refuses a bad secret name or a password beside it', () => {
    const ok = validateTarget({ version: 1, registries: { [REG]: { username: 'ci', passwordSecret: 'registry-pw' } }, apps: APPS });
    expect(ok.ok).toBe(true);
    expect(rejected({ version: 1, registries: { [REG]: { username: 'ci', passwordSecret: '../x' } }, apps: APPS })).toContain(`registries["${REG}"].passwordSecret`);
    expect(rejected({ version: 1, registries: { [REG]: { username: 'ci', passwordSecret: 'registry-pw', password: SECRET } }, apps: APPS })).toContain('no password beside passwordSecret');
  });

  it('says whether a refusal was for missing or wrong credentials, and where they came from', () => {
    const reason = 'unauthorized: authentication required';
    expect(pullErrorMessage(`${REG}/app:2`, REG, { username: 'ci', password: SECRET, source: 'target' }, reason)).toBe(
      `pull of ${REG}/app:2 was refused by the registry: wrong credentials for ${REG} (user "ci", from the target); the registry said: ${reason}`,
    );
    expect(pullErrorMessage(`${REG}/app:2`, REG, undefined, 'Head "http://x/v2/app/manifests/2": no basic auth credentials')).toContain(
      `was refused by the registry: authentication required: no credentials for ${REG}`,
    );
    expect(pullErrorMessage(`${REG}/app:2`, REG, undefined, 'connection refused')).toBe(`pull of ${REG}/app:2 failed: connection refused`);
  });
});

describe('the device\'s workloads.registries', () => {
  const dirs = tempDirs();
  afterAll(() => dirs.cleanup());
  const load = (workloads: unknown) => {
    const file = join(dirs.make(), 'config.json');
    writeFileSync(file, JSON.stringify({ workloads }));
    return loadConfig({ file, env: {} });
  };

  it('takes logins keyed by registry, redacted wherever the config is shown', () => {
    const r = load({ registries: { [REG]: { username: 'dev', password: SECRET } } });
    expect(r.ok && r.config.workloads.registries).toEqual({ [REG]: { username: 'dev', password: SECRET } });
    expect(JSON.stringify(r.ok && redactConfig(r.config))).not.toContain(SECRET);
  });

  it('refuses a bad key or entry, naming it, without showing a password', () => {
    const r = load({ registries: { 'https://x.io': { username: 'u', password: SECRET }, [REG]: [SECRET], 'y.io': { username: 'u', password: 7 } } });
    expect(r.ok).toBe(false);
    const text = r.ok ? '' : formatIssues(r.issues);
    expect(text).toContain('workloads.registries.https://x.io: expected a key that is a registry host[:port]');
    expect(text).toContain(`workloads.registries.${REG}: expected an object, got "[redacted]"`);
    expect(text).not.toContain(SECRET);
  });

  it('takes them from IOTISTIC_WORKLOADS_REGISTRIES (JSON); broken JSON there is refused without echoing it', () => {
    const file = join(dirs.make(), 'config.json');
    writeFileSync(file, '{}');
    const ok = loadConfig({ file, env: { IOTISTIC_WORKLOADS_REGISTRIES: JSON.stringify({ [REG]: { username: 'dev', password: SECRET } }) } });
    expect(ok.ok && ok.config.workloads.registries[REG]?.username).toBe('dev');
    const bad = loadConfig({ file, env: { IOTISTIC_WORKLOADS_REGISTRIES: `{"${REG}": {"username": "dev", "password": "${SECRET}"` } });
    const text = bad.ok ? '' : formatIssues(bad.issues);
    expect(text).toContain('workloads.registries (from IOTISTIC_WORKLOADS_REGISTRIES): expected a record');
    expect(text).not.toContain(SECRET);
  });
});

describe('pulls on fake time', () => {
  const stops: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const s of stops.splice(0)) await s();
  });

  function target(version: number, registries?: unknown): TargetState {
    const v = validateTarget({ version, apps: APPS, ...(registries ? { registries } : {}) });
    if (!v.ok) throw new Error(v.message);
    return v.target;
  }

  function setup(t: TargetState, device?: Record<string, { username: string; password: string }>) {
    const clock = new FakeClock();
    const docker = new MemoryRuntime('docker', clock);
    // The registry wants ci / the right password.
    docker.pullBehaviour = (_image, _signal, auth?: RegistryAuth) =>
      auth === undefined
        ? Promise.reject(new Error('Head "http://localhost:5000/v2/app/manifests/2": no basic auth credentials'))
        : auth.username === 'ci' && auth.password === SECRET
          ? Promise.resolve()
          : Promise.reject(new Error('unauthorized: authentication required'));
    const source = new MemoryTargetSource(t);
    const rec = new Reconciler({ source, docker, process: new MemoryRuntime('process', clock), clock, random: seededRandom(1), logger: silentLogger(), reconciliationIntervalMs: 30_000, ...(device ? { deviceRegistries: device } : {}) });
    const ctl = new AbortController();
    const done = rec.run(ctl.signal);
    stops.push(async () => {
      ctl.abort();
      await clock.advance(0);
      await done;
    });
    return { clock, docker, source, rec };
  }

  it('sends the target\'s login for the image\'s registry, as the engine header wants it', async () => {
    const { clock, docker, rec } = setup(target(1, { [REG]: { username: 'ci', password: SECRET }, 'other.io': { username: 'x', password: 'y' } }));
    await clock.advance(0);
    await clock.advance(0);
    expect(docker.pulls[0]?.auth).toEqual({ username: 'ci', password: SECRET, serveraddress: REG });
    expect(rec.currentState().apps.a?.services.web?.status).toBe('running');
  });

  it('pulls anonymously when nothing names the registry, and says authentication is required', async () => {
    const { clock, docker, rec } = setup(target(1));
    await clock.advance(0);
    await clock.advance(0);
    expect(docker.pulls[0]?.auth).toBeUndefined();
    const web = rec.currentState().apps.a?.services.web;
    expect(web?.status).toBe('backoff');
    expect(web?.lastError).toContain(`pull of ${REG}/app:2 was refused by the registry: authentication required: no credentials for ${REG}`);
  });

  it('uses the device\'s login for { device: true }, and reports a missing one without pulling', async () => {
    const ok = setup(target(1, { [REG]: { device: true } }), { [REG]: { username: 'ci', password: SECRET } });
    await ok.clock.advance(0);
    await ok.clock.advance(0);
    expect(ok.docker.pulls[0]?.auth?.username).toBe('ci');
    expect(ok.rec.currentState().apps.a?.services.web?.status).toBe('running');

    const none = setup(target(1, { [REG]: { device: true } }));
    await none.clock.advance(0);
    await none.clock.advance(0);
    expect(none.docker.pulls).toHaveLength(0);
    expect(none.rec.currentState().apps.a?.services.web?.lastError).toContain(`pull of ${REG}/app:2 failed: the target asks for the device's own credentials for ${REG}`);
  });

  it('a wrong password backs off; a corrected one in a new target is tried at once', async () => {
    const { clock, docker, source, rec } = setup(target(1, { [REG]: { username: 'ci', password: 'wrong' } }));
    await clock.advance(0);
    await clock.advance(0);
    const web = rec.currentState().apps.a?.services.web;
    expect(web?.status).toBe('backoff');
    expect(web?.lastError).toContain(`wrong credentials for ${REG} (user "ci", from the target)`);
    expect(web?.lastError).not.toContain('wrong"');
    expect(JSON.stringify(rec.currentState())).not.toContain('"wrong');
    expect(docker.pulls).toHaveLength(1);
    // Same version number, only the password changed: still a new target, applied now, not after the 10 s+ backoff.
    source.set(target(1, { [REG]: { username: 'ci', password: SECRET } }));
    await clock.advance(0);
    await clock.advance(0);
    expect(docker.pulls).toHaveLength(2);
    expect(clock.monotonic()).toBe(0);
    expect(rec.currentState().apps.a?.services.web?.status).toBe('running');
  });
});

describe('the login on the wire', () => {
  it('goes to the engine as the X-Registry-Auth header of the pull only, never in its URL', async () => {
    const seen: { url: string; headers: IncomingHttpHeaders }[] = [];
    // Stands in for the engine's API: answers the pull with one progress line.
    const server = createServer((req, res) => {
      seen.push({ url: req.url ?? '', headers: req.headers });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'Downloaded newer image' }) + '\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const rt = new DockerRuntime({ host: `tcp://127.0.0.1:${(server.address() as AddressInfo).port}`, clock: systemClock, random: seededRandom(1), logger: silentLogger() });
      await rt.pull(`${REG}/app:2`, undefined, { username: 'ci', password: SECRET, serveraddress: REG });
      await rt.pull(`${REG}/app:1`);
      expect(seen).toHaveLength(2);
      const [withLogin, anonymous] = seen;
      expect(withLogin?.url).toContain('/images/create?');
      expect(decodeURIComponent(withLogin?.url ?? '')).not.toContain(SECRET);
      const header = String(withLogin?.headers['x-registry-auth']);
      expect(JSON.parse(Buffer.from(header.replace(/-/g, '+').replace(/_/g, '/'), 'base64').toString('utf8'))).toEqual({ username: 'ci', password: SECRET, serveraddress: REG });
      expect(anonymous?.headers['x-registry-auth']).toBeUndefined();
    } finally {
      server.close();
    }
  });

  it('is redacted by the logger should a target ever be logged', () => {
    const log = captureLogger();
    log.logger.info({ registries: { [REG]: { username: 'ci', password: SECRET } }, target: { registries: { [REG]: { username: 'ci', password: SECRET } } } }, 'x');
    expect(log.text()).not.toContain(SECRET);
    expect(log.text()).toContain('"username":"ci"');
  });
});
