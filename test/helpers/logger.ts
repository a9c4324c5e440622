import { PassThrough } from 'node:stream';
import { createLogger, type Logger } from '../../src/util/logger.js';

/** A JSON logger whose records the test can read back. */
export function captureLogger(level = 'debug'): { logger: Logger; records: () => Record<string, unknown>[]; text: () => string } {
  const stream = new PassThrough();
  let buf = '';
  stream.on('data', (c: Buffer) => {
    buf += c.toString('utf8');
  });
  const logger = createLogger({ level, format: 'json', destination: stream });
  return {
    logger,
    text: () => buf,
    records: () =>
      buf
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

export function silentLogger(): Logger {
  return createLogger({ level: 'silent', format: 'json', destination: new PassThrough() });
}
