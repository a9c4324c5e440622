import { z } from 'zod';
import { API_ADDRESS, LOCAL_BROKER_ADDRESS } from '../boot/early-addresses.js';
import { isRegistryHost, REGISTRY_HOST_EXPECTED } from '../util/registry-host.js';
import { mqttSchema } from './mqtt-schema.js';

export { mqttBrokerUrls } from './mqtt-schema.js';

/**
 * The one place for every setting and its default. The JSON Schema shipped in `schema/` is
 * generated from this (npm run build), and `docs/configuration.md` explains the choices.
 * Objects are strict: a misspelt key is an error that names it, not a silently ignored setting.
 */

const ms = (min: number) => z.number().int().min(min);
const seconds = (min: number) => z.number().min(min);

export const JITTER_STRATEGIES = ['spread', 'full', 'decorrelated', 'equal', 'none'] as const;
export type JitterStrategy = (typeof JITTER_STRATEGIES)[number];

const limitAction = z.enum(['refuse', 'drop-oldest']).optional();
const onLimitSchema = z.strictObject({
  count: limitAction.describe('At a message-count limit (maxQueueSize, a channel\'s maxCount). Unset: the built-in default (docs/outbox.md).'),
  bytes: limitAction.describe('At a stored-bytes limit (maxQueueBytes, a channel\'s maxBytes). Unset: the built-in default.'),
  disk: limitAction.describe('Below the free-disk watermark (minFreeDiskBytes). Unset: the built-in default (refuse).'),
});

const outboxChannelSchema = z.strictObject({
  priority: z
    .number()
    .int()
    .min(-1_000)
    .max(1_000)
    .optional()
    .describe('Priority of the channel\'s messages (higher is delivered first and dropped last).'),
  maxCount: z.number().int().min(1).optional().describe('Most messages of this channel in the outbox (on top of the total limit).'),
  maxBytes: z.number().int().min(1_024).optional().describe('Most stored payload bytes of this channel in the outbox.'),
  ttlMs: ms(1).optional().describe('Default time to live of the channel\'s messages; expired messages are removed and counted.'),
  freshFirst: z
    .boolean()
    .optional()
    .describe(
      'Freshness-first drain: when the cloud returns after an outage, send the newest queued message of each stream (telemetry: each stream; otherwise the channel) first, then the history oldest first, marked backfill on the wire. Default: true for telemetry and metrics, false otherwise (docs/outbox.md).',
    ),
  onLimit: onLimitSchema
    .optional()
    .describe(
      'What gives when a limit is reached: "drop-oldest" lets this channel\'s oldest queued messages be dropped for a new message of equal or higher priority; "refuse" keeps them and refuses new messages that find nothing to drop (507 / no PUBACK). Unset limits: settings.offline.onLimit, else the built-in default (docs/outbox.md).',
    ),
});

const offlineSchema = z.strictObject({
  enableQueue: z
    .boolean()
    .default(true)
    .describe(
      'Queue cloud-bound messages on disk while the cloud cannot be reached. false: what is produced while it cannot be reached is not queued but dropped and counted (drops.offline), producers of the local API get a 503; every feature keeps running.',
    ),
  maxQueueSize: z
    .number()
    .int()
    .min(100)
    .default(100_000)
    .describe('Most messages the outbox holds in total; at it, what gives is each channel\'s onLimit.count (drop the oldest lowest-priority message, or refuse the new one).'),
  maxQueueBytes: z
    .number()
    .int()
    .min(1_048_576)
    .default(256 * 1_048_576)
    .describe('Most payload bytes the outbox holds in total (on disk, after compression).'),
  maxOfflineMetricsBuffer: z
    .number()
    .int()
    .min(10)
    .default(10_080)
    .describe('Most system-metrics samples kept while offline; older samples are downsampled, not dropped.'),
  offlineThresholdSeconds: seconds(0)
    .default(300)
    .describe('Seconds offline before cloud-dependent features are paused (graceful degradation).'),
  enableGracefulDegradation: z.boolean().default(true).describe('Pause cloud-dependent features after offlineThresholdSeconds offline.'),
  // 40 s, 40 s and `spread`: the fleet benchmark (docs/connectivity.md). The first retry of a run of
  // failures drawn over the whole 40 s spreads a fleet that failed together; the later ones at 36-40 s keep
  // it spread, at half the retries of full jitter, and bring a device back within 40 s of an outage the
  // probe cannot see (a balancer answering 503 for the backend).
  minBackoffSeconds: seconds(0.1).default(40).describe('First retry delay of the backoff, before jitter (full and spread jitter draw the first retry from up to this).'),
  maxBackoffSeconds: seconds(1).default(40).describe('Cap of the exponential backoff, in seconds.'),
  enableJitter: z.boolean().default(true).describe('Randomise retry delays so a fleet does not reconnect in step. false means jitter "none".'),
  jitter: z
    .enum(JITTER_STRATEGIES)
    .default('spread')
    .describe('Jitter strategy of the backoff when enableJitter is true. spread: the first retry of a run of failures as full jitter, later ones at the exponential step less up to 10%.'),
  backoffResetAfterSeconds: seconds(0)
    .default(30)
    .describe('A success resets the backoff only after the connection stayed good this long (flapping links keep backing off).'),
  offlineAfterFailures: z.number().int().min(1).default(3).describe('Consecutive failures on a channel before it counts as offline.'),
  probeMaxIntervalSeconds: seconds(1)
    .default(38)
    .describe('While offline, longest pause between cheap TCP reachability probes (a long outage settles at one every 0.9-1 x this).'),
  wakeSpreadSeconds: seconds(0)
    .default(38)
    .describe(
      'When a probe finds the way open again, the loops it wakes make their first attempts spread over what is left of this since the way was last seen closed, so a fleet back together does not come back in step. A fleet of a few devices can set a few seconds; 0 wakes at once.',
    ),
  offlineRetryIntervalSeconds: seconds(0)
    .default(300)
    .describe(
      'While offline for want of a connection, cloud loops retry at most this often themselves; the probe wakes them as soon as the way is open.',
    ),
  channels: z
    .record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a channel name of 1-64 letters, digits, ".", "_" or "-"'), outboxChannelSchema)
    .default({})
    .describe(
      'Per-channel outbox policy, e.g. {"telemetry": {"maxCount": 50000}, "events": {"priority": 60}}. Default priorities: events/jobs 50, state/shadow 40, health 30, telemetry 20, logs 15, metrics 10; logs also have a budget of their own (maxBytes 32 MiB, ttlMs 7 days) unless set here. freshFirst (default true for telemetry and metrics): after an outage each stream\'s newest message goes first, then the history, marked backfill (docs/outbox.md).',
    ),
  onLimit: onLimitSchema
    .default({})
    .describe(
      'What gives at each limit for every channel without its own onLimit, e.g. {"count": "refuse"}. Unset: the built-in defaults (telemetry, metrics, state, shadow, health, logs drop-oldest at count and bytes; events, jobs and other channels refuse; every channel refuses at the disk watermark).',
    ),
  dropLogIntervalSeconds: seconds(0)
    .default(60)
    .describe('At most one "outbox dropped N message(s)" summary line per this many seconds; drops not yet logged when the agent stops or dies are logged at the next start.'),
  compressAboveBytes: z
    .number()
    .int()
    .min(0)
    .default(1_024)
    .describe('Payloads whose JSON is larger than this are stored gzip-compressed (0: always try).'),
  groupCommitWindowMs: z
    .number()
    .min(0)
    .max(1_000)
    .default(2)
    .describe(
      'Longest a batch of enqueues is held while the fsync of the previous commit runs (with store.synchronous "full"; what arrives meanwhile shares the next fsync). A batch that is not held commits at the end of its event-loop turn; one that reaches groupCommitMaxBatch commits at once.',
    ),
  groupCommitMaxBatch: z.number().int().min(1).default(512).describe('A batch of enqueues commits at once when it holds this many messages.'),
  flushBatchMessages: z.number().int().min(1).max(10_000).default(500).describe('Most messages in one batch sent to a sink.'),
  flushBatchBytes: z.number().int().min(1_024).default(524_288).describe('Most stored payload bytes in one batch sent to a sink.'),
  flushMaxInflight: z.number().int().min(1).max(64).default(2).describe('Batches sent to a sink and not yet answered, at most.'),
  flushRateMessagesPerSecond: z
    .number()
    .min(0)
    .default(0)
    .describe('Most messages a second the flusher sends (0: no limit), so a fleet draining backlogs does not flatten the cloud.'),
  flushRateBytesPerSecond: z.number().min(0).default(0).describe('Most payload bytes a second the flusher sends (0: no limit).'),
  shareLoopWithDrain: z
    .boolean()
    .default(true)
    .describe(
      'While the outbox is delivering, each turn of local ingest (local broker, POST /v2/telemetry) is followed by a pause 1.5 times as long as it took, so a flood of local producers leaves delivery more than half the event loop (held back by TCP, nothing dropped). false: local producers take all they can, and delivery slows to a fraction of its rate under a flood.',
    ),
  minFreeDiskBytes: z
    .number()
    .int()
    .min(0)
    .default(64 * 1_048_576)
    .describe(
      'Free-disk watermark of the data dir: below it the outbox stops growing, and new messages are refused (507 / no PUBACK) unless a channel\'s onLimit.disk is "drop-oldest". Keep it well above 4 MiB, the size the SQLite WAL grows to between checkpoints. 0 disables.',
    ),
});

/** An interface-name pattern: letters, digits, "_", ".", "-", and the wildcards "*" (any run) and "?" (one character). */
const interfacePattern = z.string().regex(/^[A-Za-z0-9_.:*?-]{1,32}$/, 'an interface name pattern of 1-32 letters, digits, "_", ".", ":", "-", with "*" (any run) and "?" (one character)');

const networkSchema = z.strictObject({
  meteredInterfaces: z
    .array(interfacePattern)
    .default(['wwan*', 'wwp*', 'wwx*', 'ppp*'])
    .describe(
      'Interfaces the carrier bills by the byte (cellular), as name patterns with * and ?. The default names cellular modems (wwan0, wwp0s20u4i6, wwx… from systemd\'s naming, ppp0); usb0 is left out because it is as often a tethering link to a laptop. While the route to the cloud leaves on one of them, only meteredChannels are sent, within meteredBudgetBytes. []: no link is metered.',
    ),
  meteredChannels: z
    .array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a channel name of 1-64 letters, digits, ".", "_" or "-"'))
    .default(['state', 'events', 'jobs', 'shadow'])
    .describe('Outbox channels sent while on a metered link (in the outbox\'s priority order); the others wait for an unmetered link and are counted as held.'),
  meteredBudgetBytes: z
    .number()
    .int()
    .min(0)
    .default(0)
    .describe(
      'Bytes the metered interfaces may carry per meteredBudgetPeriod (received + sent, as the carrier counts them, including polls and probes); past it the outbox holds even meteredChannels until the next period or an unmetered link. 0: no cap, only the channel filter.',
    ),
  meteredBudgetPeriod: z
    .enum(['day', 'month'])
    .default('month')
    .describe('The budget\'s period: a UTC calendar day or month (the use starts again at 00:00 UTC of the next one).'),
  routeCheckIntervalMs: ms(200).default(2_000).describe('How often the route to the cloud (/proc/net/route) and the metered interface\'s byte counters are read.'),
});

const settingsSchema = z.strictObject({
  pollIntervalMs: ms(1_000).default(60_000).describe('Target-state poll interval while online (jitter is added).'),
  reportIntervalMs: ms(100).default(10_000).describe('At most one current-state report per this interval.'),
  healthReportIntervalMs: ms(10_000)
    .default(900_000)
    .describe('A connection-health report (with the outbox\'s loss ledger) at every start and then this often; also one on each return from offline.'),
  metricsIntervalMs: ms(1_000).default(60_000).describe('System metrics sampling interval.'),
  reconciliationIntervalMs: ms(1_000).default(30_000).describe('How often workloads are reconciled against the target state.'),
  offline: offlineSchema.prefault({}),
  network: networkSchema.prefault({}),
});

/**
 * A key that goes into an `Authorization: Bearer` header: visible ASCII, no spaces or control characters. Anything
 * else could never be sent. Stricter (RFC 6750's b64token) would refuse keys that work today and brick an upgrade,
 * since the last-known-good copy would fail the same rule.
 */
const bearerToken = (min: number) =>
  z
    .string()
    .min(min)
    .regex(/^[\x21-\x7e]+$/, 'a bearer token: visible ASCII characters only (no spaces, control or non-ASCII characters)');

const deviceSchema = z.strictObject({
  uuid: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{2,127}$/, 'a device id of 3-128 letters, digits, ".", "_" or "-"')
    .optional()
    .describe('Device id. When absent, one is generated at first start and kept in the store.'),
  apiKey: bearerToken(8)
    .optional()
    .describe('Device API key sent as a bearer token to the cloud and MQTT broker (visible ASCII, no spaces). Never logged.'),
  provisioningKey: bearerToken(8)
    .optional()
    .describe(
      'Fleet provisioning key: without device.apiKey the agent registers with it (POST /device/v1/register) and keeps the device key it is given in identity.json; again after that key is refused (401). Never logged.',
    ),
  name: z.string().max(128).optional().describe('A human name for the device, shown locally.'),
});

const cloudSchema = z.strictObject({
  apiUrl: z
    .url({ protocol: /^https?$/ })
    .optional()
    .describe('Base URL of the device HTTP API. Without it the agent runs in local mode (no cloud).'),
  requestTimeoutMs: ms(100).default(30_000).describe('A cloud request that has not completed in this time is aborted and counts as a failure.'),
  connectTimeoutMs: ms(100)
    .default(10_000)
    .describe(
      'A connection to the cloud (TCP and TLS handshakes) not made in this time fails the request (capped by requestTimeoutMs): through a black hole the attempt ends sooner, and fewer are left for the kernel to resend when the way opens. Room for a lost SYN or two and a slow TLS handshake.',
    ),
  caFile: z.string().optional().describe('Extra CA certificate (PEM) to trust for the cloud, on top of the system roots.'),
});


/** Local only: a target can never set these (a cloud must not be able to take over the host). */
const workloadsSchema = z.strictObject({
  allowHostMounts: z.boolean().default(false).describe('Let targets mount host paths into containers ("/host:/in/container").'),
  allowPrivileged: z.boolean().default(false).describe('Let targets run privileged containers.'),
  allowHostNetwork: z.boolean().default(false).describe('Let targets use network_mode "host".'),
  allowDevices: z.boolean().default(false).describe('Let targets pass host devices into containers.'),
  processUser: z
    .string()
    .min(1)
    .default('nobody')
    .describe(
      'User ("name" or "uid:gid") native processes run as when the agent runs as root. "root" gives targets the host; the default does not.',
    ),
  dockerHost: z.string().optional().describe('Docker engine address (unix:///path or tcp://host:port); else DOCKER_HOST, else the default socket.'),
  stopTimeoutSeconds: z.number().int().min(0).max(3600).default(10).describe('Grace period between SIGTERM and SIGKILL when a service stops.'),
  processLogMaxBytes: z.number().int().min(4096).default(1_048_576).describe('Size of each captured output file of a native process before it rotates.'),
  processLogFiles: z.number().int().min(0).max(20).default(2).describe('Rotated output files kept per native process.'),
  containerLogMaxBytes: z.number().int().min(65_536).default(10_485_760).describe("Docker's json-file log size per container before it rotates."),
  containerLogFiles: z.number().int().min(1).max(20).default(3).describe('Docker log files kept per container.'),
  maxImageImportBytes: z
    .number()
    .int()
    .min(1_048_576)
    .default(4 * 1_073_741_824)
    .describe('Largest `docker save` archive POST /v2/images/import (and `images import`) takes (413 above it); it is spooled to the data dir first, which must also have room for it above settings.offline.minFreeDiskBytes (507 otherwise).'),
  registries: z
    .record(
      z.string().refine(isRegistryHost, REGISTRY_HOST_EXPECTED),
      z.strictObject({ username: z.string().min(1), password: z.string().min(1) }),
    )
    .default({})
    .describe(
      'The device\'s own registry logins for image pulls, keyed by registry host[:port]: { "username", "password" }. Used when the target has no login of its own for that registry (or asks for the device\'s with { "device": true }). Passwords are never shown.',
    ),
});

const localBrokerSchema = z.strictObject({
  host: z.string().min(1).default(LOCAL_BROKER_ADDRESS.host).describe('Address of the local MQTT listener (features.localBroker). It has no authentication: keep it on loopback.'),
  port: z.number().int().min(0).max(65_535).default(LOCAL_BROKER_ADDRESS.port).describe('Port of the local MQTT listener.'),
  maxRetained: z
    .number()
    .int()
    .min(1)
    .max(1_000_000)
    .default(1_000)
    .describe('Most retained topics the local broker keeps (in the database, across restarts). A retained message on a new topic past it is delivered but not kept.'),
  maxQueuedPerClient: z
    .number()
    .int()
    .min(1)
    .max(1_000_000)
    .default(1_000)
    .describe('Most QoS 1/2 messages kept for one persistent session (clean session false) while it is away or has not acknowledged them; past it the oldest is dropped.'),
});

const apiSchema = z.strictObject({
  host: z.string().min(1).default(API_ADDRESS.host).describe('Address the local API listens on. Keep it on loopback unless you know why.'),
  port: z.number().int().min(0).max(65_535).default(API_ADDRESS.port).describe('Port of the local API (0 picks a free one).'),
  localApiKey: bearerToken(16)
    .optional()
    .describe('Bearer key for the local API (visible ASCII, no spaces). When absent, one is generated at first start and kept in the data dir (mode 0600).'),
});

const loggingSchema = z.strictObject({
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info').describe('Least severe level written to the log.'),
  format: z.enum(['auto', 'json', 'pretty']).default('auto').describe('auto: pretty on a terminal, JSON otherwise.'),
});

/** A workload's log name pattern: `<app>/<service>` with `*` for any run of characters. */
const logServicePattern = z.string().regex(/^[a-z0-9_.*-]{1,63}\/[a-z0-9_.*-]{1,63}$/, 'a pattern "<app>/<service>" of lowercase letters, digits, "_", ".", "-" and "*" (any run)');

const logsSchema = z.strictObject({
  enabled: z.boolean().default(true).describe('Ship logs to the cloud (docs/logs.md). false: nothing is collected; workloads still write their local logs.'),
  services: z
    .array(logServicePattern)
    .default(['*/*'])
    .describe('Workloads whose output is shipped, as "<app>/<service>" patterns with * (default: every service of every app). []: none.'),
  agentLevel: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'off'])
    .default('warn')
    .describe('The agent\'s own records at or above this level (and at or above logging.level) are shipped as the "agent" log. warn by default: what an operator must act on, not the routine. off: none.'),
  linesPerSecond: z
    .number()
    .min(0)
    .default(100)
    .describe('Lines a second each service may ship on average (0: no limit). Over it, lines are dropped and a marker line counts them. 100/s is far above a healthy service\'s output and keeps one stuck in a loop from filling the budget in minutes.'),
  bytesPerSecond: z.number().int().min(0).default(64 * 1024).describe('Bytes of text a second each service may ship on average (0: no limit); over it, as linesPerSecond.'),
  burstSeconds: z.number().min(0.1).max(3600).default(10).describe('How many seconds of either rate a service may send at once (a stack trace, a start-up banner).'),
  maxLineBytes: z
    .number()
    .int()
    .min(256)
    .max(1_048_576)
    .default(16 * 1024)
    .describe('A longer line is cut here and says how many bytes were cut (16 KiB: Docker splits lines at the same size).'),
  chunkLines: z
    .number()
    .int()
    .min(1)
    .max(5_000)
    .default(1_000)
    .describe('Lines of one service per outbox message at most: 1,000 lines of 100 bytes are about 100 KB of JSON, 10-15 KB stored gzipped; a larger chunk costs less per line (one insert and one fsync for all of them), 1,000 takes most of that gain.'),
  chunkWindowMs: z
    .number()
    .int()
    .min(10)
    .max(60_000)
    .default(250)
    .describe('Longest a line waits for others before its chunk is queued: the latency added to a quiet service\'s lines, against one outbox message per line.'),
  markerIntervalSeconds: seconds(0.1).default(5).describe('While lines are being dropped, at most one marker line per reason per this many seconds (each counts every line dropped since the last).'),
  tailLines: z.number().int().min(0).max(100_000).default(1_000).describe('Last lines kept per service for GET /v2/logs, the CLI and the dashboard (0: none).'),
});

const storeSchema = z.strictObject({
  synchronous: z
    .enum(['full', 'normal'])
    .default('full')
    .describe('full: a committed write survives a power cut. normal: survives a process crash, may lose the last commits on power loss.'),
  checkpoint: z
    .enum(['background', 'inline'])
    .default('background')
    .describe('background: WAL checkpoints (page copies and their fsyncs) run on a worker thread, never on the event loop. inline: SQLite runs them inside the commit that fills the WAL.'),
  diskReserveBytes: z
    .number()
    .int()
    .min(0)
    .default(4 * 1_048_576)
    .describe(
      'Size of the reserve file kept in the data dir (disk-reserve) for the agent\'s own writes. When less than this is free (at start or while running) it is deleted, the disk is reported full and producers are refused (507, no PUBACK) so the room serves opening the database and delivering the queue; it is made again once twice its size is free. 0: no reserve (full below 256 KiB free).',
    ),
});

const jobsSchema = z.strictObject({
  pollIntervalMs: z
    .number()
    .int()
    .min(1_000)
    .default(60_000)
    .describe('How often the agent asks the cloud for its next job when it has none (a jobs/notify over MQTT asks at once).'),
  allowedCommands: z
    .array(z.string().regex(/^\/[^\0]*$/, 'an absolute path'))
    .default([])
    .describe('Absolute paths of the programs a run-command job may run, with arguments as the job gives them and no shell. Empty: run-command jobs are rejected.'),
  maxOutputBytes: z
    .number()
    .int()
    .min(1_024)
    .max(1_048_576)
    .default(16_384)
    .describe("Bytes of a run-command job's stdout, and of its stderr, kept in its result (the last ones)."),
  history: z.number().int().min(1).max(10_000).default(100).describe('Finished jobs kept in the local table (GET /v2/jobs).'),
});

const powerCommand = z
  .array(z.string().min(1).refine((v) => !v.includes('\0'), 'no NUL'))
  .min(1)
  .refine((c) => (c[0] ?? '').startsWith('/'), 'the program as an absolute path first, then its arguments');

/** Device actions (docs/workloads.md, "Actions"): what the device itself allows an operator or the cloud to do. */
const actionsSchema = z.strictObject({
  allowReboot: z.boolean().default(false).describe('Allow the reboot action (POST /v2/device/reboot, job reboot). Off: refused, naming this key. Local only.'),
  allowShutdown: z.boolean().default(false).describe('Allow the shutdown action (POST /v2/device/shutdown, job shutdown). Off: refused, naming this key. Local only.'),
  rebootCommand: powerCommand
    .optional()
    .describe('The program (absolute path) and arguments that reboot the device, run without a shell. Unset: /usr/bin/systemctl reboot where systemd runs (/run/systemd/system), else /sbin/reboot. Local only.'),
  shutdownCommand: powerCommand
    .optional()
    .describe('The program (absolute path) and arguments that power the device off, run without a shell. Unset: /usr/bin/systemctl poweroff where systemd runs, else /sbin/poweroff. Local only.'),
});

/**
 * Settings a cloud's update-config job may not change unless update.allowConfigKeys names them
 * (docs/lifecycle.md): what gives the host away (privileges, commands, packages), files and sockets
 * on the device (a path from the network is not trusted), listeners that would leave loopback, the
 * device's identity, and the cloud it answers to (moving a device to another cloud is its owner's call).
 */
export const LOCAL_ONLY_CONFIG_KEYS = [
  'dataDir',
  'device',
  'cloud.apiUrl',
  'cloud.caFile',
  'mqtt.url',
  'mqtt.urls',
  'mqtt.caFile',
  'mqtt.certFile',
  'mqtt.keyFile',
  'api.host',
  'api.localApiKey',
  'localBroker.host',
  'jobs.allowedCommands',
  'actions',
  'workloads.allowHostMounts',
  'workloads.allowPrivileged',
  'workloads.allowHostNetwork',
  'workloads.allowDevices',
  'workloads.processUser',
  'workloads.dockerHost',
  'secrets',
  'update.localPackageDirs',
  'update.maxPackageBytes',
] as const;

const updateSchema = z.strictObject({
  localPackageDirs: z
    .array(z.string().regex(/^\/[^\0]*$/, 'an absolute path'))
    .default([])
    .describe('Directories an update-agent job may take a package from by params.path (a local file). Empty: only URLs.'),
  maxPackageBytes: z
    .number()
    .int()
    .min(1_048_576)
    .default(268_435_456)
    .describe('Largest agent package accepted: its download and its unpacked tar stream are cut off above this.'),
  healthTimeoutSeconds: seconds(1).default(120).describe('A new version or config must report healthy (/v1/healthy, its loops up) within this, or it is rolled back.'),
  probationSeconds: seconds(0).default(30).describe('After reporting healthy, a new version or config must keep running this long before it is confirmed; a crash meanwhile rolls it back.'),
  trialAttempts: z.number().int().min(1).max(10).default(3).describe('Exits of a new version or config during its trial before it is rolled back.'),
  allowConfigKeys: z
    .array(z.enum(LOCAL_ONLY_CONFIG_KEYS))
    .default([])
    .describe('Local-only settings an update-config job from the cloud may change all the same. Empty: none of them (docs/lifecycle.md, "Config updates").'),
});

const featuresSchema = z.strictObject({
  dashboard: z.boolean().default(true).describe('Serve the dashboard page at / of the local API.'),
  metrics: z.boolean().default(true).describe('Sample system metrics and send them to the cloud.'),
  jobs: z.boolean().default(true).describe('Poll the cloud for jobs and run them (needs cloud.apiUrl; see the jobs section).'),
  shadow: z.boolean().default(true).describe('Keep a local device shadow and sync it with the cloud.'),
  localBroker: z.boolean().default(false).describe('Embedded MQTT listener on 127.0.0.1:1884 for local apps.'),
});

/**
 * Bounds on what the agent takes in from outside (the cloud, local apps). Chosen for a 512 MB
 * device: a document is refused while it is read, before it is held whole, so the worst case is
 * the limit, not the sender's choice. Exported so the parts that enforce them share the defaults.
 */
export const LIMIT_DEFAULTS = {
  maxTargetBytes: 2 * 1_048_576,
  maxCloudResponseBytes: 1_048_576,
  maxJsonDepth: 64,
  maxApiBodyBytes: 1_048_576,
  maxLocalPacketBytes: 1_048_576 + 65_536,
  maxLocalConnections: 32,
} as const;

const limitsSchema = z.strictObject({
  maxTargetBytes: z
    .number()
    .int()
    .min(65_536)
    .default(LIMIT_DEFAULTS.maxTargetBytes)
    .describe('Largest target-state document accepted, from the cloud or POST /v2/local/target-state. A larger one is refused while it is read; the target in force stays.'),
  maxCloudResponseBytes: z
    .number()
    .int()
    .min(65_536)
    .default(LIMIT_DEFAULTS.maxCloudResponseBytes)
    .describe('Largest other answer read from the cloud (jobs, shadow desired state, errors) and largest MQTT packet taken from the cloud broker.'),
  maxJsonDepth: z
    .number()
    .int()
    .min(8)
    .max(1_000)
    .default(LIMIT_DEFAULTS.maxJsonDepth)
    .describe('Deepest nesting of arrays and objects in any JSON the agent takes in: cloud answers, MQTT messages, local API bodies, local broker payloads.'),
  maxApiBodyBytes: z
    .number()
    .int()
    .min(1_024)
    .default(LIMIT_DEFAULTS.maxApiBodyBytes)
    .describe('Largest request body of the local API (413 above it); POST /v2/local/target-state takes up to maxTargetBytes.'),
  maxLocalPacketBytes: z
    .number()
    .int()
    .min(1_024)
    .max(268_435_455)
    .default(LIMIT_DEFAULTS.maxLocalPacketBytes)
    .describe('Largest MQTT packet a local broker client may send; a client that announces a larger one is disconnected before it is read.'),
  maxLocalConnections: z
    .number()
    .int()
    .min(1)
    .max(10_000)
    .default(LIMIT_DEFAULTS.maxLocalConnections)
    .describe('Most connections the local broker holds at once; more are closed as they arrive.'),
});

const secretsSchema = z.strictObject({
  keyFile: z
    .string()
    .min(1)
    .optional()
    .describe('The key that encrypts secrets.enc (32 random bytes as hex, mode 0600); <dataDir>/secrets.key unless set (e.g. a tmpfs a TPM unseals at boot).'),
  file: z.string().min(1).optional().describe('The encrypted secrets file; <dataDir>/secrets.enc unless set.'),
  processDir: z
    .string()
    .regex(/^\//, 'an absolute path')
    .optional()
    .describe(
      'Where native processes\' file secrets are written (<dir>/<app>/<service>/<name>, 0400, the process user\'s). Default: /run/iotistic-agent/secrets (a tmpfs) when processes run as another user (they cannot enter the data dir), else <dataDir>/run-secrets.',
    ),
  maskLogs: z.boolean().default(true).describe('Mask secret values (6 characters or more) in the workloads\' log lines the agent ships and shows.'),
});

export const agentConfigSchema = z
  .strictObject({
    $schema: z.string().optional().describe('Path or URL of this JSON Schema, for editors.'),
    dataDir: z.string().min(1).default('/var/lib/iotistic-agent').describe('Where the database, keys and logs live.'),
    device: deviceSchema.prefault({}),
    cloud: cloudSchema.prefault({}),
    mqtt: mqttSchema.prefault({}),
    workloads: workloadsSchema.prefault({}),
    localBroker: localBrokerSchema.prefault({}),
    jobs: jobsSchema.prefault({}),
    actions: actionsSchema.prefault({}),
    api: apiSchema.prefault({}),
    logging: loggingSchema.prefault({}),
    logs: logsSchema.prefault({}),
    store: storeSchema.prefault({}),
    settings: settingsSchema.prefault({}),
    features: featuresSchema.prefault({}),
    limits: limitsSchema.prefault({}),
    secrets: secretsSchema.prefault({}),
    update: updateSchema.prefault({}),
  })
  .describe('Iotistic Agent configuration');

export type AgentConfig = z.output<typeof agentConfigSchema>;
export type AgentConfigInput = z.input<typeof agentConfigSchema>;

/** Every default, as the agent runs with an empty config file. */
export function defaultConfig(): AgentConfig {
  return agentConfigSchema.parse({});
}

/** The keys whose values are secrets: redacted when a config is shown or logged. */
export const SECRET_KEYS = new Set(['apiKey', 'localApiKey', 'password', 'provisioningKey']);
