import { describe, expect, it } from 'vitest';
import { formatLine, logsPath } from '../../src/logs-cli.js';

/** `iotistic-agent logs`: the line as printed and the request it makes (the command itself runs in test/integration/cli.test.ts). */

describe('iotistic-agent logs', () => {
  const ts = Date.UTC(2026, 0, 2, 3, 4, 5, 6);

  it('prints <ISO time> <service> <stream> <line>, a marker with what it stands for', () => {
    expect(formatLine({ service: 'demo/web', ts, stream: 'stderr', line: 'boom' })).toBe('2026-01-02T03:04:05.006Z demo/web stderr boom');
    expect(formatLine({ service: 'agent', ts, stream: 'marker', line: '12 lines dropped', dropped: 12, reason: 'lines-rate' })).toBe('2026-01-02T03:04:05.006Z agent [dropped 12: lines-rate] 12 lines dropped');
    expect(formatLine({ service: '*', ts, stream: 'marker', line: '3 lines not shown (the reader was too slow)', dropped: 3, reason: 'reader' })).toBe(
      '2026-01-02T03:04:05.006Z * [dropped 3: reader] 3 lines not shown (the reader was too slow)',
    );
  });

  it('asks GET /v2/logs with the options as its parameters', () => {
    expect(logsPath(undefined, {})).toBe('/v2/logs');
    expect(logsPath('demo/web', { follow: true, since: '10m', lines: '5' })).toBe('/v2/logs?service=demo%2Fweb&since=10m&limit=5&follow=1');
  });
});
