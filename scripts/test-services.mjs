#!/usr/bin/env node
// Makes sure the real services the tests use are installed. Tests start their own private
// instances (own port, own data dir); nothing here starts a shared daemon.
// As root, missing Debian packages are installed with apt-get; otherwise this says what to install
// and exits non-zero, so the tests that need them fail loudly instead of skipping.
import { execFileSync, spawnSync } from 'node:child_process';

const REQUIRED = [
  { bin: 'mosquitto', pkg: 'mosquitto', why: 'MQTT tests run a private Mosquitto broker' },
  { bin: 'mosquitto_sub', pkg: 'mosquitto-clients', why: 'MQTT tests watch birth/last-will messages with mosquitto_sub' },
  { bin: 'nats-server', pkg: 'nats-server', why: 'the broker matrix and the negotiation tests run a private NATS server with its MQTT listener' },
  { bin: 'rabbitmq-server', pkg: 'rabbitmq-server', why: 'the broker matrix and the negotiation tests run a private RabbitMQ node with the MQTT plugin' },
  { bin: 'openssl', pkg: 'openssl', why: 'the TLS tests make a private CA and certificates with the openssl CLI' },
  { bin: 'dockerd', pkg: 'docker.io', why: 'workload tests start a private Docker engine when none answers' },
  { bin: 'docker-registry', pkg: 'docker-registry', why: 'workload tests pull images from a registry on loopback' },
  { bin: 'htpasswd', pkg: 'apache2-utils', why: 'the registry-auth tests give docker-registry an htpasswd (bcrypt) user' },
  { bin: 'busybox', pkg: 'busybox-static', why: 'workload tests build their images from the static /bin/busybox (nothing is fetched)' },
  { bin: 'faketime', pkg: 'faketime', why: 'npm run chaos steps the agents\' wall clock with libfaketime' },
  { bin: 'chromium', pkg: 'chromium', why: 'the dashboard test drives the page in Debian\'s chromium through playwright-core (no browser is downloaded)' },
  { bin: 'ip', pkg: 'iproute2', why: 'the data-budget test puts the agent and the devcloud in network namespaces linked by veth pairs (as root)' },
  { bin: 'promtool', pkg: 'prometheus', why: 'the metrics tests check /metrics, the alert rules and the dashboard\'s queries with promtool' },
  { bin: 'systemd-analyze', pkg: 'systemd', why: 'the deploy test checks the systemd unit with systemd-analyze verify' },
];

const has = (bin) => spawnSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }).status === 0 ||
  spawnSync('test', ['-x', `/usr/sbin/${bin}`]).status === 0;

const missing = REQUIRED.filter((r) => !has(r.bin));
if (missing.length === 0) {
  process.stdout.write('test services: all present\n');
  process.exit(0);
}
const pkgs = [...new Set(missing.map((m) => m.pkg))];
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
if (!isRoot) {
  process.stderr.write(
    `test services missing:\n${missing.map((m) => `  - ${m.bin} (${m.why})`).join('\n')}\n` +
      `install them with: sudo apt-get install -y ${pkgs.join(' ')}\n`,
  );
  process.exit(1);
}
process.stdout.write(`installing ${pkgs.join(' ')} with apt-get\n`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
execFileSync('apt-get', ['update', '-q'], { stdio: 'inherit', env });
execFileSync('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env });
const still = REQUIRED.filter((r) => !has(r.bin));
if (still.length > 0) {
  process.stderr.write(`still missing after apt-get: ${still.map((m) => m.bin).join(', ')}\n`);
  process.exit(1);
}
