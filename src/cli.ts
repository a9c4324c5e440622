#!/bin/sh
//bin/sh -c :; export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"; exec node --max-semi-space-size=1 "$0" "$@"
// Line 2 is a command to sh and a comment to node: the bin (`iotistic-agent`) starts node with a
// 1 MiB young generation and two malloc arenas, the settings of a small device (docs/performance.md,
// "Footprint"); `node dist/src/cli.js` runs without them.
import { Command, Option } from 'commander';
import { earlyAddresses } from './boot/early-addresses.js';
import type { bootAgent, EarlyListeners } from './bootstrap.js';
import { AgentError, errorMessage } from './util/errors.js';
import { HeldListener } from './util/held-listener.js';
import { LAUNCHED_ENV } from './lifecycle/ipc.js';
import { AGENT_VERSION } from './version.js';

// Only what `run` needs to bind its ports is imported here: the rest (the config's schema, the agent)
// loads after them, in each command (see bindEarly).

/** Exit code for a configuration error (sysexits' EX_CONFIG), so service managers can tell it apart. */
const EXIT_CONFIG = 78;

const program = new Command()
  .name('iotistic-agent')
  .description('Offline-first device agent: runs workloads, queues cloud-bound data durably, reconnects gently.')
  .version(AGENT_VERSION);

program
  .command('run')
  .description('run the agent until SIGTERM or SIGINT')
  .addOption(new Option('-c, --config <file>', 'JSON config file').env('IOTISTIC_CONFIG'))
  .option('-d, --data-dir <dir>', 'data directory (database, keys); overrides the config')
  .action(async (opts: { config?: string; dataDir?: string }) => {
    // Bound before anything else loads: a local app connecting during the start waits instead of being refused.
    let listeners: EarlyListeners | undefined = await bindEarly(opts.config);
    const launcher = process.env[LAUNCHED_ENV] === '1' ? (await import('./lifecycle/child-link.js')).LauncherLink.ofProcess(process) : undefined;
    // One stdout stream for every start of this process (a restart to salvage makes a new logger).
    const stdout = (await import('./util/logger.js')).stdoutStream();
    const boot = async (): Promise<Awaited<ReturnType<typeof bootAgent>>> => {
      const early = listeners;
      // A restart (to salvage) binds again, after its config.
      listeners = undefined;
      try {
        const { bootAgent } = await import('./bootstrap.js');
        return await bootAgent({ configFile: opts.config, dataDir: opts.dataDir, env: process.env, stdout, ...(early ? { listeners: early } : {}), ...(launcher ? { launcher } : {}) });
      } catch (err) {
        process.stderr.write(`iotistic-agent: ${errorMessage(err)}\n`);
        process.exit(err instanceof AgentError && err.code === 'CONFIG_INVALID' ? EXIT_CONFIG : 1);
      }
    };
    let { agent, logger } = await boot();
    let stopping = false;
    let restarting: Promise<void> | undefined;
    // A database found damaged while running is salvaged by a fresh start, once per process.
    const salvage = (): void => {
      if (stopping || restarting) return;
      logger.warn('restarting the agent to quarantine and salvage the damaged database');
      restarting = agent
        .stop()
        .then(async () => {
          if (stopping) return;
          ({ agent, logger } = await boot());
        })
        .catch((err: unknown) => {
          process.stderr.write(`iotistic-agent: restart to salvage the database failed: ${errorMessage(err)}\n`);
          process.exit(1);
        });
    };
    agent.onSalvageNeeded(salvage);
    // A reboot or shutdown: the agent has stopped and the power command ran (or failed): the process ends.
    agent.onPoweredOff((_action, err) => logger.flush(() => process.exit(err === undefined ? 0 : 1)));
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'stopping');
      // A stop that hangs must not keep a service manager waiting forever.
      const deadline = setTimeout(() => {
        logger.error('stop took too long; exiting');
        process.exit(1);
      }, 8_000);
      deadline.unref();
      Promise.resolve(restarting)
        .then(() => agent.stop())
        .then(() => logger.flush(() => process.exit(0)))
        .catch((err: unknown) => {
          process.stderr.write(`iotistic-agent: stop failed: ${errorMessage(err)}\n`);
          process.exit(1);
        });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    if (launcher) {
      // The launcher judges a version or config on trial by this: healthy, with every loop up.
      const tell = setInterval(() => {
        if (restarting || !agent.healthy()) return;
        clearInterval(tell);
        launcher.healthy(AGENT_VERSION);
      }, 250);
      launcher.onGone(() => stop('launcher gone'));
    }
  });

program
  .command('launch')
  .description('run the agent under a launcher: restarts it after a crash and runs self-updates and config updates on trial, rolling back what does not become healthy')
  .addOption(new Option('-c, --config <file>', 'JSON config file').env('IOTISTIC_CONFIG').makeOptionMandatory())
  .option('-d, --data-dir <dir>', 'data directory (database, keys, releases); overrides the config')
  .action(async (opts: { config: string; dataDir?: string }) => {
    const { runLauncher } = await import('./lifecycle/launch-command.js');
    process.exit(await runLauncher({ configFile: opts.config, dataDir: opts.dataDir, env: process.env, entry: process.argv[1] ?? '' }));
  });

/** The options every command that talks to a running agent takes. */
function apiOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-c, --config <file>', 'config file, to find the API address and data dir').env('IOTISTIC_CONFIG'))
    .option('-d, --data-dir <dir>', 'data directory holding the local API key')
    .option('--api <url>', 'local API base URL (default from the config, else http://127.0.0.1:48484)')
    .option('--key <key>', 'local API key (default: read from the data dir)');
}

type ApiOpts = { config?: string; dataDir?: string; api?: string; key?: string };

apiOptions(program.command('status'))
  .description('a summary of a running agent: connection per channel, outbox, services, loss ledger, disk (--full: every detail)')
  .option('--full', 'the full table: connection, link, MQTT session, outages, target, database, services, outbox, jobs, shadow, loops')
  .option('--json', 'print the raw JSON of the API (for scripts)')
  .option('--show-key', 'also print the local API key')
  .action(async (opts: ApiOpts & { json?: boolean; full?: boolean; showKey?: boolean }) => {
    const [{ localApiAccess }, { AgentApi, colourWanted }, { renderStatus }, { renderSummary }] = await Promise.all([
      import('./cli-api.js'),
      import('./cli-client.js'),
      import('./status-view.js'),
      import('./status-summary.js'),
    ]);
    const access = localApiAccess(opts);
    const api = new AgentApi(access);
    try {
      const [device, connection, state, loops, queue, jobs, shadow] = await Promise.all(
        ['/v2/device', '/v2/connection', '/v2/state', '/v2/loops', '/v2/queue', '/v2/jobs'].map((path) => api.get(path)).concat(api.get('/v2/shadow', true)),
      );
      const all = { device, connection, state, loops, queue, jobs, shadow };
      const key = opts.showKey ? access.key : undefined;
      if (opts.json) process.stdout.write(`${JSON.stringify({ ...all, ...(key ? { localApiKey: key } : {}) })}\n`);
      else if (opts.full) process.stdout.write(renderStatus(all as Parameters<typeof renderStatus>[0], key));
      else {
        const colour = colourWanted(process.stdout, process.env);
        process.stdout.write(renderSummary(all as Parameters<typeof renderSummary>[0], { now: Date.now(), colour }) + (key ? `Local API key: ${key}\n` : ''));
      }
    } catch (err) {
      const message = err instanceof AgentError ? err.message : `cannot read the agent's status at ${access.base}: ${errorMessage(err)}`;
      process.stderr.write(`iotistic-agent: ${message}\n`);
      process.exit(1);
    }
  });

/** `queue`, `queue parked`, `queue retry`, `queue purge`: see queue-cli.ts. */
async function queueAction(action: 'list' | 'parked' | 'retry' | 'purge', ids: string[], opts: ApiOpts & { json?: boolean; all?: boolean; yes?: boolean }): Promise<never> {
  const [{ localApiAccess }, { AgentApi, colourWanted }, { askOnTerminal, runQueue }] = await Promise.all([import('./cli-api.js'), import('./cli-client.js'), import('./queue-cli.js')]);
  const api = new AgentApi(localApiAccess(opts));
  const io = { out: process.stdout, err: process.stderr, colour: colourWanted(process.stdout, process.env), now: Date.now(), confirm: process.stdin.isTTY ? askOnTerminal : undefined };
  process.exit(await runQueue(api, action, ids, opts, io));
}

const queueCmd = apiOptions(program.command('queue'))
  .description('the outbox of a running agent per channel: waiting, bytes, oldest, delivered, dropped, parked')
  .option('--json', 'print the raw JSON of GET /v2/queue')
  .action((opts: ApiOpts & { json?: boolean }) => queueAction('list', [], opts));
// `queue parked --api URL`: the subcommand's options are its own, not the parent's (commander wants it on both levels).
program.enablePositionalOptions();
queueCmd.enablePositionalOptions();
apiOptions(queueCmd.command('parked'))
  .description('list the parked messages (refused by the cloud for good): id, channel, when, why')
  .option('--json', 'print the parked messages as JSON')
  .action((opts: ApiOpts & { json?: boolean }) => queueAction('parked', [], opts));
apiOptions(queueCmd.command('retry'))
  .description('put parked messages back in the queue (after fixing what the cloud refused)')
  .argument('[ids...]', 'the parked messages (see `queue parked`)')
  .option('--all', 'every parked message')
  .option('--json', 'print the answer as JSON')
  .action((ids: string[], opts: ApiOpts & { json?: boolean; all?: boolean }) => queueAction('retry', ids, opts));
apiOptions(queueCmd.command('purge'))
  .description('delete parked messages for good (asks on a terminal; --yes to skip)')
  .argument('[ids...]', 'the parked messages (see `queue parked`)')
  .option('--all', 'every parked message')
  .option('-y, --yes', 'do not ask (needed when stdin is not a terminal)')
  .option('--json', 'print the answer as JSON')
  .action((ids: string[], opts: ApiOpts & { json?: boolean; all?: boolean; yes?: boolean }) => queueAction('purge', ids, opts));

/** `restart`, `reboot`, `shutdown`, `purge`: see actions-cli.ts. */
async function deviceAction(kind: 'restart' | 'reboot' | 'shutdown' | 'purge', target: string | undefined, opts: ApiOpts & { json?: boolean; yes?: boolean; confirm?: string }): Promise<never> {
  const [{ localApiAccess }, { AgentApi }, { askLine, runAction }] = await Promise.all([import('./cli-api.js'), import('./cli-client.js'), import('./actions-cli.js')]);
  // A purge or restart stops services (up to their stop timeout): a longer wait than a read.
  const api = new AgentApi(localApiAccess(opts), 120_000);
  process.exit(await runAction(api, kind, target, opts, { out: process.stdout, err: process.stderr, ask: process.stdin.isTTY ? askLine : undefined }));
}
apiOptions(program.command('restart'))
  .description('restart every service of an app, or one service (APP/SERVICE)')
  .argument('<target>', 'APP or APP/SERVICE')
  .option('--json', 'print the answer as JSON')
  .action((target: string, opts: ApiOpts & { json?: boolean }) => deviceAction('restart', target, opts));
for (const kind of ['reboot', 'shutdown'] as const) {
  apiOptions(program.command(kind))
    .description(`${kind} the device: the agent stops cleanly first (allowed only with actions.allow${kind === 'reboot' ? 'Reboot' : 'Shutdown'} in its config)`)
    .option('--json', 'print the answer as JSON')
    .action((opts: ApiOpts & { json?: boolean }) => deviceAction(kind, undefined, opts));
}
apiOptions(program.command('purge'))
  .description("delete an app's data for good (its named volumes, its processes' working dirs); its services start again on fresh data. Asks for the app's name on a terminal")
  .argument('<app>', 'the app')
  .option('-y, --yes', 'do not ask: give the name again with --confirm')
  .option('--confirm <app>', 'the app\'s name typed again (with --yes)')
  .option('--json', 'print the answer as JSON')
  .action((app: string, opts: ApiOpts & { json?: boolean; yes?: boolean; confirm?: string }) => deviceAction('purge', app, opts));

/** `secret set|ls|rm`: see secret-cli.ts. */
async function secretAction(action: 'set' | 'ls' | 'rm', name: string | undefined, opts: ApiOpts & { fromFile?: string; stdin?: boolean; json?: boolean }): Promise<never> {
  const [{ localApiAccess }, { AgentApi }, { runSecret }] = await Promise.all([import('./cli-api.js'), import('./cli-client.js'), import('./secret-cli.js')]);
  const api = new AgentApi(localApiAccess(opts));
  process.exit(await runSecret(api, action, name, opts, { out: process.stdout, err: process.stderr, stdin: process.stdin }));
}

const secretCmd = program.command('secret').description('the local secrets of a running agent (names and sources shown, never values)');
secretCmd.enablePositionalOptions();
apiOptions(secretCmd.command('set'))
  .description('set a local secret, overriding the cloud\'s of that name until removed; the value from a file or stdin, never argv')
  .argument('<name>', 'the secret name')
  .option('--from-file <file>', 'read the value from this file (one trailing newline dropped)')
  .option('--stdin', 'read the value from stdin (one trailing newline dropped)')
  .action((name: string, opts: ApiOpts & { fromFile?: string; stdin?: boolean }) => secretAction('set', name, opts));
apiOptions(secretCmd.command('ls'))
  .description('list the secrets: name, source (cloud/local), updated, the services using them; never values')
  .option('--json', 'print the raw JSON of GET /v2/secrets')
  .action((opts: ApiOpts & { json?: boolean }) => secretAction('ls', undefined, opts));
apiOptions(secretCmd.command('rm'))
  .description('remove a local secret (the cloud\'s of that name, if any, is used again)')
  .argument('<name>', 'the secret name')
  .action((name: string, opts: ApiOpts) => secretAction('rm', name, opts));

/** `images import|ls`: see images-cli.ts. */
const imagesCmd = program.command('images').description('air-gapped updates: load `docker save` archives into the engine of a running agent');
imagesCmd.enablePositionalOptions();
apiOptions(imagesCmd.command('import'))
  .description('stream a `docker save` archive (optionally gzip\'d) to the agent, which verifies it and loads it into the engine')
  .argument('<file>', 'the archive (docker save -o FILE IMAGE...)')
  .option('--sha256 <hex>', 'the archive\'s sha256 (sha256sum FILE): refused, nothing loaded, when it differs')
  .option('--json', 'print the answer as JSON')
  .action(async (file: string, opts: ApiOpts & { sha256?: string; json?: boolean }) => {
    const [{ localApiAccess }, { runImageImport }] = await Promise.all([import('./cli-api.js'), import('./images-cli.js')]);
    process.exit(await runImageImport(localApiAccess(opts), file, opts, { out: process.stdout, err: process.stderr }));
  });
apiOptions(imagesCmd.command('ls'))
  .description('the images the target names: present (with sizes) or missing (and why the pull failed)')
  .option('--json', 'print the raw JSON of GET /v2/images')
  .action(async (opts: ApiOpts & { json?: boolean }) => {
    const [{ localApiAccess }, { AgentApi }, { runImageList }] = await Promise.all([import('./cli-api.js'), import('./cli-client.js'), import('./images-cli.js')]);
    process.exit(await runImageList(new AgentApi(localApiAccess(opts)), opts, { out: process.stdout, err: process.stderr }));
  });

program
  .command('logs')
  .description('print the last log lines of the workloads and the agent from the local API of a running agent; -f follows them')
  .argument('[service]', 'one service: <app>/<service>, a service name one app has, or agent (default: all)')
  .option('-f, --follow', 'then print the new lines as they come, until Ctrl-C or SIGTERM')
  .option('--since <when>', 'lines since then: a duration ago (30s, 10m, 2h, 1d), an ISO time or epoch milliseconds')
  .option('-n, --lines <n>', 'the last N lines (1-10000; default 1000)')
  .option('--json', 'print each line as a JSON object (NDJSON)')
  .addOption(new Option('-c, --config <file>', 'config file, to find the API address and data dir').env('IOTISTIC_CONFIG'))
  .option('-d, --data-dir <dir>', 'data directory holding the local API key')
  .option('--api <url>', 'local API base URL (default from the config, else http://127.0.0.1:48484)')
  .option('--key <key>', 'local API key (default: read from the data dir)')
  .action(async (service: string | undefined, opts: { follow?: boolean; since?: string; lines?: string; json?: boolean; config?: string; dataDir?: string; api?: string; key?: string }) => {
    const [{ localApiAccess }, { runLogs }] = await Promise.all([import('./cli-api.js'), import('./logs-cli.js')]);
    const { base, key } = localApiAccess(opts);
    process.exit(await runLogs(base, key, service, opts));
  });

const configCmd = program.command('config').description('work with config files');
configCmd
  .command('check')
  .description('validate a config file (and IOTISTIC_* overrides); exit 0 when good, 1 with the reasons when not')
  .addOption(new Option('-c, --config <file>', 'JSON config file').env('IOTISTIC_CONFIG').makeOptionMandatory())
  .option('--json', 'print { ok, file, warnings, issues } (and cloud, dataDir when ok) as JSON')
  .action(async (opts: { config: string; json?: boolean }) => {
    const { formatIssues, loadConfig } = await import('./config/load.js');
    const r = loadConfig({ file: opts.config, env: process.env });
    if (opts.json) {
      const more = r.ok ? { cloud: r.config.cloud.apiUrl ?? null, dataDir: r.config.dataDir, issues: [] } : { issues: r.issues };
      process.stdout.write(`${JSON.stringify({ ok: r.ok, file: opts.config, warnings: r.warnings, ...more })}\n`);
      process.exit(r.ok ? 0 : 1);
    }
    for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
    if (!r.ok) {
      process.stderr.write(`${opts.config}: ${r.issues.length} error${r.issues.length === 1 ? '' : 's'}\n${formatIssues(r.issues)}\n`);
      process.exit(1);
    }
    process.stdout.write(`${opts.config}: OK (cloud: ${r.config.cloud.apiUrl ?? 'none, local mode'}; data dir: ${r.config.dataDir})\n`);
  });
configCmd
  .command('schema')
  .description('print the JSON Schema of the config file')
  .action(async () => {
    const [{ z }, { agentConfigSchema }] = await Promise.all([import('zod'), import('./config/schema.js')]);
    process.stdout.write(`${JSON.stringify(z.toJSONSchema(agentConfigSchema, { io: 'input' }), null, 2)}\n`);
  });
configCmd
  .command('defaults')
  .description('print the config with every default filled in')
  .action(async () => {
    const { defaultConfig } = await import('./config/schema.js');
    process.stdout.write(`${JSON.stringify(defaultConfig(), null, 2)}\n`);
  });

program
  .command('compose')
  .description('the Compose subset (docs/workloads.md)')
  .command('convert <file>')
  .description('print the target (JSON) a Compose file makes; exit 1 with every reason when it cannot')
  .option('--app <name>', "the app's name (else the file's top-level name)")
  .option('--version <n>', "the target's version (1 unless given)")
  .action(async (file: string, opts: { app?: string; version?: string }) => {
    process.exit((await import('./compose-cli.js')).runComposeConvert(file, opts));
  });

/** The ports the config file names, bound now (a hint read without the schema: see earlyAddresses). */
async function bindEarly(configFile: string | undefined): Promise<EarlyListeners | undefined> {
  const at = earlyAddresses(configFile, process.env);
  if (!at) return undefined;
  const [api, broker] = await Promise.all([HeldListener.bind(at.api.host, at.api.port), at.broker ? HeldListener.bind(at.broker.host, at.broker.port) : undefined]);
  return { ...(api ? { api } : {}), ...(broker ? { broker } : {}) };
}

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`iotistic-agent: ${errorMessage(err)}\n`);
  process.exit(1);
});
