/**
 * `npm start`: the agent on embedded defaults with the bundled devcloud as its cloud, everything kept
 * under ./data. Runs until Ctrl-C. A real device runs `iotistic-agent run --config FILE` instead.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { startDevCloud } from '../devcloud/server.js';
import { bootAgent } from '../src/bootstrap.js';
import { errorMessage } from '../src/util/errors.js';

const CLOUD_PORT = Number(process.env.DEMO_CLOUD_PORT ?? 48480);
const dataRoot = resolve('data');
const configFile = resolve(dataRoot, 'demo-agent.json');

interface DemoConfig {
  dataDir: string;
  device: { uuid: string; apiKey: string };
  cloud: { apiUrl: string };
}

function demoConfig(): DemoConfig {
  mkdirSync(dataRoot, { recursive: true, mode: 0o700 });
  if (existsSync(configFile)) return JSON.parse(readFileSync(configFile, 'utf8')) as DemoConfig;
  const config = {
    $schema: '../schema/agent-config.schema.json',
    dataDir: resolve(dataRoot, 'agent'),
    device: { uuid: `demo-${randomBytes(6).toString('hex')}`, apiKey: randomBytes(18).toString('base64url') },
    cloud: { apiUrl: `http://127.0.0.1:${CLOUD_PORT}` },
    settings: { pollIntervalMs: 10_000, reportIntervalMs: 2_000 },
  };
  writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  return config;
}

async function main(): Promise<void> {
  const cfg = demoConfig();
  const cloud = await startDevCloud({ port: CLOUD_PORT, adminPort: CLOUD_PORT + 1, dbPath: resolve(dataRoot, 'devcloud.db') });
  cloud.admin.createDevice(cfg.device);
  if (cloud.admin.target(cfg.device.uuid).revision === 0) {
    // One native service, so the demo shows the reconciler at work without a container engine.
    cloud.admin.setTarget(cfg.device.uuid, {
      version: 1,
      config: { settings: { pollIntervalMs: 10_000 } },
      apps: { demo: { services: { heartbeat: { runtime: 'process', command: ['/bin/sh', '-c', 'while true; do date; sleep 30; done'] } } } },
    });
  }
  let booted;
  try {
    booted = await bootAgent({ configFile, env: process.env });
  } catch (err) {
    await cloud.close();
    throw err;
  }
  const { agent, logger } = booted;
  const banner = [
    '',
    '  Iotistic Agent is running (Ctrl-C stops it).',
    `  Dashboard:  ${agent.apiUrl}/#key=${encodeURIComponent(agent.localKey)}`,
    `  Status:     node dist/src/cli.js status --data-dir ${cfg.dataDir}`,
    `  Devcloud:   ${cloud.url} (admin ${cloud.adminUrl}, see docs/devcloud.md)`,
    `  Set a new target: curl -X PUT ${cloud.adminUrl}/admin/devices/${cfg.device.uuid}/target -H 'content-type: application/json' -d '{"version":2,"apps":{}}'`,
    '',
  ].join('\n');
  process.stdout.write(`${banner}\n`);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void agent
      .stop()
      .then(() => cloud.close())
      .then(() => logger.flush(() => process.exit(0)));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`npm start: ${errorMessage(err)}\n`);
  process.exit(1);
});
