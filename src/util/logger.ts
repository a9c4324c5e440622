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
    const main = pretty ? pino.transport({ target: 'pino-pretty', options: prettyOptions }) : (opts.destination ?? pino.destination(1));
    return pino(base, pino.multistream([{ level: base.level as pino.Level, stream: main }, { level: opts.tap.level as pino.Level, stream: opts.tap.stream }]));
  }
  if (pretty) return pino({ ...base, transport: { target: 'pino-pretty', options: prettyOptions } });
  return opts.destination ? pino(base, opts.destination) : pino(base);
}
