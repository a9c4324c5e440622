import { describe, expect, it } from 'vitest';
import { deviceTopics, publishTopicProblem } from '../../src/mqtt/topics.js';

/** The device's topics as PROTOCOL.md ("MQTT topics") names them, and the checks on what may be published. */

describe('deviceTopics', () => {
  const t = deviceTopics('dev-42');

  it('names every topic of the protocol under iot/{uuid}/', () => {
    expect({
      status: t.status,
      metrics: t.metrics,
      events: t.events,
      shadowReported: t.shadowReported,
      shadowDesired: t.shadowDesired,
      jobsNotify: t.jobsNotify,
      targetNotify: t.targetNotify,
      telemetry: t.telemetry('flow.rate_1-a'),
    }).toEqual({
      status: 'iot/dev-42/status',
      metrics: 'iot/dev-42/metrics',
      events: 'iot/dev-42/events',
      shadowReported: 'iot/dev-42/shadow/reported',
      shadowDesired: 'iot/dev-42/shadow/desired',
      jobsNotify: 'iot/dev-42/jobs/notify',
      targetNotify: 'iot/dev-42/target/notify',
      telemetry: 'iot/dev-42/telemetry/flow.rate_1-a',
    });
  });

  it('subscribes to the three cloud → device topics and tells which one a received topic is', () => {
    expect(t.subscriptions).toEqual([
      { topic: 'iot/dev-42/target/notify', kind: 'target-notify' },
      { topic: 'iot/dev-42/jobs/notify', kind: 'jobs-notify' },
      { topic: 'iot/dev-42/shadow/desired', kind: 'shadow-desired' },
    ]);
    expect(t.kindOf('iot/dev-42/jobs/notify')).toBe('jobs-notify');
    expect(t.kindOf('iot/dev-42/shadow/desired')).toBe('shadow-desired');
    expect(t.kindOf('iot/dev-42/target/notify')).toBe('target-notify');
    // Another device's topic, or one the device publishes, is none of them.
    expect(t.kindOf('iot/dev-43/jobs/notify')).toBeUndefined();
    expect(t.kindOf('iot/dev-42/status')).toBeUndefined();
  });

  it('refuses a telemetry stream that is not exactly one topic level, naming it', () => {
    expect(() => t.telemetry('')).toThrow(new TypeError('telemetry stream "": expected a non-empty name'));
    for (const bad of ['a/b', 'a+', '#', 'x\u0000y']) {
      expect(() => t.telemetry(bad)).toThrow(new TypeError(`telemetry stream "${bad}": expected a name without "/", "+", "#" or NUL`));
    }
    // Characters that are not special in a topic level are fine.
    expect(t.telemetry('a b$c')).toBe('iot/dev-42/telemetry/a b$c');
  });
});

describe('publishTopicProblem', () => {
  it('says why a topic cannot be published to, and nothing for one that can', () => {
    expect(publishTopicProblem('')).toBe('the topic is empty');
    expect(publishTopicProblem('iot/d/+')).toBe('the topic "iot/d/+" contains a wildcard ("+" or "#")');
    expect(publishTopicProblem('iot/#')).toBe('the topic "iot/#" contains a wildcard ("+" or "#")');
    expect(publishTopicProblem('iot/\u0000')).toBe('the topic contains a NUL character');
    expect(publishTopicProblem('x'.repeat(65_536))).toBe('the topic is longer than 65535 bytes');
    // The limit is in UTF-8 bytes, not characters: 21,846 three-byte characters are 65,538 bytes.
    expect(publishTopicProblem('€'.repeat(21_846))).toBe('the topic is longer than 65535 bytes');
    expect(publishTopicProblem('x'.repeat(65_535))).toBeUndefined();
    expect(publishTopicProblem('iot/d/telemetry/a b')).toBeUndefined();
    expect(publishTopicProblem('/')).toBeUndefined();
  });
});
