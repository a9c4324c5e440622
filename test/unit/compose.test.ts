import { describe, expect, it } from 'vitest';
import { convertCompose } from '../../src/workloads/compose.js';
import { parseDuration, splitWords } from '../../src/workloads/compose-values.js';
import { targetOfComposeBody } from '../../src/workloads/compose-body.js';
import { validateTarget } from '../../src/workloads/target-schema.js';

const REALISTIC = `
name: shop
x-defaults: &defaults
  restart: unless-stopped
  labels: { team: edge }
services:
  web:
    <<: *defaults
    image: registry.local/shop/web:1.2
    entrypoint: /bin/sh -c
    command: "node 'server.js' --port 8080"
    environment:
      PORT: 8080
      DEBUG: false
    ports: ["8080:80", "127.0.0.1:9090:9090/udp"]
    volumes: ["data:/data", "cache:/cache:ro"]
    working_dir: /app
    user: 1000
    read_only: true
    tmpfs: /run:size=16m
    networks: [backend]
    depends_on:
      db: { condition: service_healthy }
      cache: { condition: service_started }
    deploy:
      resources:
        limits: { cpus: "0.5", memory: 256m }
        reservations: { memory: 64m }
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost/health"]
      interval: 1m30s
      timeout: 5s
      retries: 3
      start_period: 500ms
  db:
    image: postgres:16
    environment: ["POSTGRES_DB=shop", "EMPTY="]
    healthcheck: { disable: true }
    tmpfs: ["/tmp", "/var/run:size=1m,mode=1777"]
  cache:
    image: redis:7
    depends_on: [db]
    restart: "no"
networks:
  backend: {}
volumes:
  data:
  cache: {}
`;

describe('the Compose subset', () => {
  it('turns a realistic file into one app of a target', () => {
    const r = convertCompose(REALISTIC);
    if (!r.ok) throw new Error(r.message);
    expect(r.app).toBe('shop');
    expect(r.target).toEqual({
      version: 1,
      apps: {
        shop: {
          services: {
            web: {
              image: 'registry.local/shop/web:1.2',
              entrypoint: ['/bin/sh', '-c'],
              command: ['node', 'server.js', '--port', '8080'],
              environment: { PORT: '8080', DEBUG: 'false' },
              labels: { team: 'edge' },
              ports: ['8080:80', '127.0.0.1:9090:9090/udp'],
              volumes: ['data:/data', 'cache:/cache:ro'],
              restart: 'unless-stopped',
              workingDir: '/app',
              user: '1000',
              readOnly: true,
              tmpfs: ['/run:size=16m'],
              dependsOn: { db: { condition: 'healthy' }, cache: { condition: 'started' } },
              cpus: 0.5,
              memory: '256m',
              memoryReservation: '64m',
              healthcheck: { test: ['CMD', 'wget', '-q', '-O-', 'http://localhost/health'], intervalSeconds: 90, timeoutSeconds: 5, retries: 3, startPeriodSeconds: 0.5 },
            },
            db: { image: 'postgres:16', environment: { POSTGRES_DB: 'shop', EMPTY: '' }, healthcheck: { test: ['NONE'] }, tmpfs: ['/tmp', '/var/run:size=1m,mode=1777'] },
            cache: { image: 'redis:7', dependsOn: { db: { condition: 'started' } }, restart: 'no' },
          },
        },
      },
    });
  });

  it('takes the app and version from the options over the file', () => {
    const r = convertCompose('services: { s: { image: busybox } }', { app: 'other', version: 7 });
    expect(r.ok && r.target).toEqual({ version: 7, apps: { other: { services: { s: { image: 'busybox' } } } } });
  });

  it('converts to a target the schema accepts, depends_on and healthcheck included', () => {
    // db's check turned back on: web waits for it to be healthy, which needs a check to wait for.
    const text = REALISTIC.replace('healthcheck: { disable: true }', 'healthcheck: { test: ["CMD", "pg_isready"], interval: 5s }');
    const r = convertCompose(text);
    if (!r.ok) throw new Error(r.message);
    const v = validateTarget(r.target);
    expect(v.ok ? 'ok' : v.message).toBe('ok');
    // As written, web waits for a db whose check is off: refused by the target's own rule, naming it.
    const off = convertCompose(REALISTIC);
    const refused = off.ok ? validateTarget(off.target) : undefined;
    expect(refused?.ok).toBe(false);
    expect(refused && !refused.ok ? refused.message : '').toContain('dependsOn');
  });

  it.each([
    ['services.web.build', 'services: { web: { image: a, build: . } }', 'build the image and push it to a registry'],
    ['services.web.privileged', 'services: { web: { image: a, privileged: true } }', 'privileged is allowed only by the device'],
    ['services.web.cap_add', 'services: { web: { image: a, cap_add: [NET_ADMIN] } }', 'not supported'],
    ['services.web.extends', 'services: { web: { image: a, extends: { service: b } } }', 'write the service out in full'],
    ['services.web.profiles', 'services: { web: { image: a, profiles: [dev] } }', 'not supported'],
    ['services.web.env_file', 'services: { web: { image: a, env_file: .env } }', 'put the variables in environment'],
    ['services.web.secrets', 'services: { web: { image: a, secrets: [x] } }', "the target's secrets"],
    ['secrets', 'services: { web: { image: a } }\nsecrets: { x: { file: ./x } }', "the target's secrets"],
    ['configs', 'services: { web: { image: a } }\nconfigs: { x: { file: ./x } }', 'not supported'],
    ['services.web.deploy.replicas', 'services: { web: { image: a, deploy: { replicas: 2 } } }', 'one instance'],
    ['services.web.deploy.resources.limits.pids', 'services: { web: { image: a, deploy: { resources: { limits: { pids: 5 } } } } }', 'here: cpus, memory'],
    ['volumes.data.driver', 'services: { web: { image: a, volumes: ["data:/d"] } }\nvolumes: { data: { driver: nfs } }', 'no driver options'],
    ['services.web.network_mode', 'services: { web: { image: a, network_mode: "service:db" } }', '"bridge", "none" or "host"'],
    ['services.web.volumes.0', 'services: { web: { image: a, volumes: ["./src:/src"] } }', 'an absolute host path'],
    ['services.web.volumes.0', 'services: { web: { image: a, volumes: ["undeclared:/d"] } }', 'declared under the top-level volumes'],
    ['services.web.volumes.0', 'services: { web: { image: a, volumes: ["/anon"] } }', 'no anonymous volumes'],
    ['services.web.ports.0', 'services: { web: { image: a, ports: ["80"] } }', 'with a host port'],
    ['services.web.restart', 'services: { web: { image: a, restart: "on-failure:3" } }', 'no retry count'],
    ['services.web.environment.HOME', 'services: { web: { image: a, environment: { HOME: null } } }', 'does not pass its own environment'],
    ['services.web.environment.0', 'services: { web: { image: a, environment: [HOME] } }', 'does not pass its own environment'],
    ['services.web.depends_on.0', 'services: { web: { image: a, depends_on: [nope] } }', 'a service of this file'],
    ['services.web.depends_on.db.condition', 'services: { web: { image: a, depends_on: { db: { condition: service_completed_successfully } } }, db: { image: a } }', 'service_healthy'],
    ['services.Web', 'services: { Web: { image: a } }', 'a service name'],
    ['volumes.Data', 'services: { web: { image: a } }\nvolumes: { Data: {} }', 'a name'],
    ['networks', 'services: { web: { image: a } }\nnetworks: { a: {}, b: {} }', 'at most one network'],
    ['services.web.networks.1', 'services: { web: { image: a, networks: [default, other] } }', 'the network declared at the top'],
    ['services.web.healthcheck.interval', 'services: { web: { image: a, healthcheck: { test: "true", interval: 30 } } }', 'a Compose duration'],
    ['name', 'services: { web: { image: a } }', 'an app name'],
  ])('refuses %s by name', (path, text, why) => {
    const r = convertCompose(text, path === 'name' ? {} : { app: 'app' });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    const issue = r.issues.find((i) => i.path === path);
    expect(issue, r.message).toBeDefined();
    expect(issue?.message).toContain(why);
  });

  it('ignores x-* extensions and the obsolete version key', () => {
    const r = convertCompose('version: "3.8"\nname: a\nx-note: hi\nservices:\n  s:\n    image: busybox\n    x-owner: me\n  x-template: { image: nope }\n');
    expect(r.ok && r.target.apps.a?.services).toEqual({ s: { image: 'busybox' } });
  });

  it('reads YAML with limits: aliases, custom tags, duplicate keys, several documents', () => {
    const bomb = ['a: &a [x,x,x,x,x,x,x,x,x,x]', ...Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(10).fill(`*${String.fromCharCode(97 + i)}`).join(',')}]`), 'services: {}'].join('\n');
    for (const text of [bomb, 'services: !!binary aGk=', 'name: a\nname: b\nservices: { s: { image: a } }', 'services: {}\n---\nservices: {}', '[1, 2]']) {
      const r = convertCompose(text, { app: 'a' });
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.issues[0]?.path).toBe('(document)');
    }
  });
});

describe('Compose values', () => {
  it.each([
    ['30s', 30],
    ['1m30s', 90],
    ['500ms', 0.5],
    ['1h', 3600],
    ['1.5s', 1.5],
    ['2h45m', 9900],
  ])('duration %s is %d s', (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds);
  });

  it.each(['', '30', 's', '1d', '1m 30s', '-1s'])('refuses the duration %j', (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });

  it('splits a command string into words like a shell, without expanding anything', () => {
    expect(splitWords(`sh -c 'echo "$HOME" \\ok' "a b" c\\ d`)).toEqual(['sh', '-c', 'echo "$HOME" \\ok', 'a b', 'c d']);
    expect(splitWords('"unterminated')).toBeUndefined();
  });
});

describe('the local API\'s Compose body', () => {
  it('converts a body with compose, app and version', () => {
    const r = targetOfComposeBody({ compose: 'services: { s: { image: busybox } }', app: 'edge', version: 4 });
    expect(r).toEqual({ ok: true, doc: { version: 4, apps: { edge: { services: { s: { image: 'busybox' } } } } } });
  });

  it('names the field of the body and the path in the file', () => {
    const bad = targetOfComposeBody({ compose: 'services: { s: { image: a, build: . } }', app: 'edge' });
    expect(bad.ok).toBe(false);
    if (!bad.ok) {
      expect(bad.issues[0]?.path).toBe('compose.services.s.build');
      expect(bad.message).toContain('compose: services.s.build: not supported');
    }
    const extra = targetOfComposeBody({ compose: 'x', apps: {} });
    expect(extra.ok ? '' : extra.message).toContain('apps');
  });
});
