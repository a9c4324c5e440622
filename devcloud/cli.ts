#!/usr/bin/env node
import { Command, InvalidArgumentError } from 'commander';
import { resolve } from 'node:path';
import pino from 'pino';
import { DEFAULT_BODY_LIMIT, startDevCloud, type DevCloud } from './server.js';

/**
 * `iotistic-devcloud`: the reference device cloud for development and tests. Prints one JSON line
 * `{"event":"listening",...}` on stdout once both listeners are up; logs (when enabled) go to stderr.
 */

const DEFAULT_PORT = 48400;
const ADMIN_TOKEN_ENV = 'IOTISTIC_DEVCLOUD_ADMIN_TOKEN';

function integer(flag: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${flag}: expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
    }
    return n;
  };
}

interface CliOptions {
  port: number;
  adminPort?: number;
  host: string;
  data?: string;
  autoProvision: boolean;
  adminToken?: string;
  bodyLimit: number;
  logLevel?: string;
  exitOnStdinEnd?: boolean;
}

async function main(argv: string[]): Promise<void> {
  const program = new Command()
    .name('iotistic-devcloud')
    .description('The reference device cloud: the HTTP device API of PROTOCOL.md, stored in SQLite, with fault injection.')
    .option('--port <n>', 'device API port (0 picks a free one)', integer('--port', 0, 65_535), DEFAULT_PORT)
    .option('--admin-port <n>', 'admin API port (default: port + 1, or a free one when port is 0)', integer('--admin-port', 0, 65_535))
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--data <file>', 'SQLite file to keep state in (default: in memory)')
    .option('--no-auto-provision', 'reject unknown devices instead of registering them on first use')
    .option('--admin-token <token>', `require this bearer token on the admin API (or set ${ADMIN_TOKEN_ENV})`)
    .option('--body-limit <bytes>', 'largest device request body, after decompression', integer('--body-limit', 1024, 1 << 30), DEFAULT_BODY_LIMIT)
    .option('--log-level <level>', 'log requests to stderr at this pino level (default: no logs)')
    .option('--exit-on-stdin-end', 'stop when stdin closes, so a test harness that dies takes the devcloud with it')
    .showHelpAfterError('(run with --help for usage)');
  program.parse(argv);
  const o = program.opts<CliOptions>();

  const adminPort = o.adminPort ?? (o.port === 0 ? 0 : o.port + 1);
  if (adminPort > 65_535) throw new InvalidArgumentError(`--admin-port: port + 1 is ${adminPort}; pass --admin-port`);
  const adminToken = o.adminToken ?? process.env[ADMIN_TOKEN_ENV];
  const dataFile = o.data === undefined ? undefined : resolve(o.data);

  const cloud: DevCloud = await startDevCloud({
    host: o.host,
    port: o.port,
    adminPort,
    dbPath: dataFile ?? ':memory:',
    autoProvision: o.autoProvision,
    bodyLimit: o.bodyLimit,
    ...(adminToken ? { adminToken } : {}),
    ...(o.logLevel ? { logger: pino({ level: o.logLevel }, pino.destination(2)) } : {}),
  });

  let stopping = false;
  const stop = (reason: string): void => {
    if (stopping) return;
    stopping = true;
    cloud.close().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error(`iotistic-devcloud: error while stopping on ${reason}: ${(err as Error).message}`);
        process.exit(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    // A second signal while closing: the user means it.
    if (stopping) process.exit(1);
    stop(signal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  if (o.exitOnStdinEnd) {
    process.stdin.on('end', () => stop('end of stdin'));
    process.stdin.on('error', () => stop('end of stdin'));
    process.stdin.resume();
  }

  process.stdout.write(
    `${JSON.stringify({
      event: 'listening',
      url: cloud.url,
      adminUrl: cloud.adminUrl,
      port: cloud.port,
      adminPort: cloud.adminPort,
      data: dataFile ?? null,
    })}\n`,
  );
}

main(process.argv).catch((err: unknown) => {
  console.error(`iotistic-devcloud: ${(err as Error).message}`);
  process.exit(1);
});
