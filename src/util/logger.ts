import pino, { type Logger } from 'pino';

export type { Logger };

export type LogFormat = 'auto' | 'json' | 'pretty';

/**
 * Paths that may hold secrets, redacted wherever they appear in a log record. Config objects are
 * logged through `redactConfig` as well, so a new secret key needs adding in one of the two places.
 */
export const REDACT_PATHS = [
  'apiKey',
  '*.apiKey',
  '*.*.apiKey',
  'localApiKey',
  '*.localApiKey',
  '*.*.localApiKey',
  'provisioningKey',
  '*.provisioningKey',
  '*.*.provisioningKey',
  'deviceApiKey',
  '*.deviceApiKey',
  '*.*.deviceApiKey',
  'password',
  '*.password',
  '*.*.password',
  // A target's registry logins, should a target (or part of one) ever be logged.
  'registries.*.password',
  '*.registries.*.password',
  '*.*.registries.*.password',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  // A service's environment may hold secrets (workloads' `secrets` with `env`); nothing logs it, this is the net.
  'env',
  '*.env',
  'Env',
  '*.Env',
  'secretValues',
  '*.secretValues',
];

export interface LoggerOptions {
  level?: string;
  format?: LogFormat;
  /** Where records go; defaults to stdout. Tests pass a stream to read them back. */
  destination?: NodeJS.WritableStream;
  /** A second destination for records at or above its level (the agent's own log source, logs/agent-tap.ts). */
  tap?: { level: string; stream: { write(record: string): void } };
  /**
   * The process's stdout, made once by `stdoutStream()` and shared by every logger of the process: an
   * in-process restart makes a new logger, and two streams writing one pipe could cut a line in two
   * (the test harness lost the line that said why the agent restarted). Default: a stream of its own.
   */
  stdout?: pino.DestinationStream;
}

/** The stdout stream the loggers of this process share (see LoggerOptions.stdout). */
export function stdoutStream(): pino.DestinationStream {
  return pino.destination(1);
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const format = opts.format ?? 'auto';
  const pretty = format === 'pretty' || (format === 'auto' && process.stdout.isTTY === true && !opts.destination);
  const base = {
    level: opts.level ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  const prettyOptions = { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' };
  if (opts.tap) {
    const main = pretty ? pino.transport({ target: 'pino-pretty', options: prettyOptions }) : (opts.destination ?? opts.stdout ?? pino.destination(1));
    return pino(base, pino.multistream([{ level: base.level as pino.Level, stream: main }, { level: opts.tap.level as pino.Level, stream: opts.tap.stream }]));
  }
  if (pretty) return pino({ ...base, transport: { target: 'pino-pretty', options: prettyOptions } });
  const out = opts.destination ?? opts.stdout;
  return out ? pino(base, out) : pino(base);
}
