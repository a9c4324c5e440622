import { describe, expect, it } from 'vitest';
import { AgentLogTap, toLine } from '../../src/logs/agent-tap.js';
import { shipsService } from '../../src/logs/collector.js';
import { DockerFrameReader, sinceParam } from '../../src/logs/docker-frames.js';
import { LineSplitter } from '../../src/logs/line-splitter.js';
import { wireLogMessage } from '../../src/logs/types.js';
import { deviceTopics } from '../../src/mqtt/topics.js';

/** One frame of the engine's multiplexed log stream. */
function frame(stream: 1 | 2, payload: string): Buffer {
  const body = Buffer.from(payload);
  const head = Buffer.alloc(8);
  head[0] = stream;
  head.writeUInt32BE(body.length, 4);
  return Buffer.concat([head, body]);
}

describe('DockerFrameReader', () => {
  it('reads lines of both streams with their times, across chunk boundaries', () => {
    const r = new DockerFrameReader(16_384);
    const all = Buffer.concat([frame(1, '2026-12-06T07:20:00.123456789Z hello\n'), frame(2, '2026-12-06T07:20:01Z oops\n')]);
    const first = r.push(all.subarray(0, 13));
    const rest = r.push(all.subarray(13));
    expect(first).toEqual([]);
    expect(rest.map((l) => [l.stream, l.ts, l.text])).toEqual([
      ['stdout', Date.UTC(2026, 11, 6, 7, 20, 0, 123), 'hello'],
      ['stderr', Date.UTC(2026, 11, 6, 7, 20, 1), 'oops'],
    ]);
    expect(rest[1]?.cursor).toEqual({ at: '2026-12-06T07:20:01Z', skip: 1 });
  });

  it('joins a line the engine split into entries, cut at the cap, with the time of its first entry', () => {
    const r = new DockerFrameReader(10);
    const lines = r.push(Buffer.concat([frame(1, '2026-12-06T07:20:00.1Z abcdefgh'), frame(1, '2026-12-06T07:20:00.2Z ijklmnop\n'), frame(1, '2026-12-06T07:20:00.3Z next\n')]));
    expect(lines.map((l) => [l.text, l.ts % 1000])).toEqual([
      ['abcdefghij [… 6 bytes cut]', 100],
      ['next', 300],
    ]);
    expect(lines[0]?.cursor).toEqual({ at: '2026-12-06T07:20:00.2Z', skip: 1 });
  });

  it('resumes after a cursor: entries at its time already taken are skipped, later ones are read', () => {
    const t = '2026-12-06T07:20:00.5Z';
    const r = new DockerFrameReader(100, { at: t, skip: 2 });
    const lines = r.push(Buffer.concat([frame(1, `${t} a\n`), frame(1, `${t} b\n`), frame(1, `${t} c\n`), frame(1, '2026-12-06T07:20:00.6Z d\n')]));
    expect(lines.map((l) => l.text)).toEqual(['c', 'd']);
    expect(lines[0]?.cursor).toEqual({ at: t, skip: 3 });
  });

  it('gives Docker\'s since for a cursor, nanoseconds and all', () => {
    expect(sinceParam('2026-12-06T07:20:00.123456789Z')).toBe(`${Date.UTC(2026, 11, 6, 7, 20) / 1000}.123456789`);
    expect(sinceParam('2026-12-06T07:20:00Z')).toBe(`${Date.UTC(2026, 11, 6, 7, 20) / 1000}.000000000`);
    expect(sinceParam('yesterday')).toBeUndefined();
  });
});

describe('LineSplitter', () => {
  it('cuts a byte stream into lines, keeping a split character and a line waiting for its newline', () => {
    const s = new LineSplitter(100);
    const euro = Buffer.from('€');
    expect(s.push(Buffer.concat([Buffer.from('one\r\ntw'), euro.subarray(0, 1)]))).toEqual(['one']);
    expect(s.push(Buffer.concat([euro.subarray(1), Buffer.from('o\nthr')]))).toEqual(['tw€o']);
    expect(s.pending).toBe(true);
    expect(s.flush()).toBe('thr');
    expect(s.flush()).toBeUndefined();
  });

  it('cuts a line longer than the cap and says how much was cut, holding no more than the cap', () => {
    const s = new LineSplitter(8);
    expect(s.push(Buffer.from('0123456789'))).toEqual([]);
    expect(s.push(Buffer.from('abc\nok\n'))).toEqual(['01234567 [… 5 bytes cut]', 'ok']);
  });
});

describe('the agent\'s own log', () => {
  it('turns a record into a line: its level, its time, its message and other fields', () => {
    const line = toLine(JSON.stringify({ level: 40, time: '2026-12-06T07:00:00.000Z', pid: 1, msg: 'disk low', free: 3 }));
    expect(line).toEqual({ stream: 'warn', ts: Date.UTC(2026, 11, 6, 7), text: 'disk low {"free":3}' });
    expect(toLine('not json')).toBeUndefined();
  });

  it('keeps records from before the collector attached, counts those past the cap, and does not feed itself', () => {
    const tap = new AgentLogTap('warn');
    for (let i = 0; i < 502; i++) tap.stream.write(JSON.stringify({ level: 50, time: 0, msg: `early ${i}` }));
    const got: string[] = [];
    let dropped = 0;
    tap.attach(
      (l) => {
        got.push(l.text);
        // A warning logged while a record is handled is not taken (it would loop).
        tap.stream.write(JSON.stringify({ level: 40, time: 0, msg: 'about shipping' }));
      },
      (n) => (dropped += n),
    );
    expect(got).toHaveLength(500);
    expect(dropped).toBe(2);
    tap.stream.write(JSON.stringify({ level: 40, time: 0, msg: 'later' }));
    expect(got.at(-1)).toBe('later');
    expect(got).not.toContain('about shipping');
  });
});

describe('which services ship', () => {
  it('matches "<app>/<service>" patterns with *', () => {
    expect(shipsService(['*/*'], 'edge/web')).toBe(true);
    expect(shipsService(['edge/*'], 'edge/web')).toBe(true);
    expect(shipsService(['edge/*'], 'other/web')).toBe(false);
    expect(shipsService(['e.ge/web'], 'edge/web')).toBe(false);
    expect(shipsService([], 'edge/web')).toBe(false);
  });
});

describe('the wire', () => {
  it('gives each line its absolute time from the message\'s (corrected) time', () => {
    const m = wireLogMessage({ id: 'm1', createdAt: 10_000, payload: { service: 'a/b', lines: [[4, -30, 'stdout', 'x'], [5, -10, 'marker', '3 lines dropped (r)', 3, 'lines-rate']] }, backfill: true });
    expect(m).toEqual({
      id: 'm1',
      ts: 10_000,
      service: 'a/b',
      backfill: true,
      lines: [
        { seq: 4, ts: 9_970, stream: 'stdout', line: 'x' },
        { seq: 5, ts: 9_990, stream: 'marker', line: '3 lines dropped (r)', dropped: 3, reason: 'lines-rate' },
      ],
    });
    expect(wireLogMessage({ id: 'm2', createdAt: 1, payload: { nope: true } })).toBeUndefined();
  });

  it('publishes a workload\'s log on logs/<app>/<service> and the agent\'s on logs/agent', () => {
    const t = deviceTopics('dev-1');
    expect(t.logs('edge/web')).toBe('iot/dev-1/logs/edge/web');
    expect(t.logs('agent')).toBe('iot/dev-1/logs/agent');
    expect(() => t.logs('a/b/c')).toThrow(/expected "agent" or "<app>\/<service>"/);
    expect(() => t.logs('a/+')).toThrow(/wildcard|"\+"/);
  });
});
