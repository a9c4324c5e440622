/**
 * The device's MQTT topics (PROTOCOL.md, "MQTT topics"), all under `iot/{uuid}/`.
 */

export type IncomingKind = 'target-notify' | 'jobs-notify' | 'shadow-desired';

export interface DeviceTopics {
  /** Birth (`online`) and last will (`offline`), retained. */
  status: string;
  metrics: string;
  events: string;
  shadowReported: string;
  shadowDesired: string;
  jobsNotify: string;
  targetNotify: string;
  telemetry(stream: string): string;
  /** A log source's topic: `logs/<app>/<service>` for a workload, `logs/agent` for the agent (docs/protocol.md, "Logs"). */
  logs(service: string): string;
  /** The cloud → device topics the session subscribes to, with what each one's messages are. */
  subscriptions: ReadonlyArray<{ topic: string; kind: IncomingKind }>;
  /** Which subscription a received topic belongs to; undefined for any other topic. */
  kindOf(topic: string): IncomingKind | undefined;
}

export function deviceTopics(uuid: string): DeviceTopics {
  const prefix = `iot/${uuid}/`;
  const subscriptions = [
    { topic: `${prefix}target/notify`, kind: 'target-notify' as const },
    { topic: `${prefix}jobs/notify`, kind: 'jobs-notify' as const },
    { topic: `${prefix}shadow/desired`, kind: 'shadow-desired' as const },
  ];
  const kinds = new Map<string, IncomingKind>(subscriptions.map((s) => [s.topic, s.kind]));
  return {
    status: `${prefix}status`,
    metrics: `${prefix}metrics`,
    events: `${prefix}events`,
    shadowReported: `${prefix}shadow/reported`,
    shadowDesired: `${prefix}shadow/desired`,
    jobsNotify: `${prefix}jobs/notify`,
    targetNotify: `${prefix}target/notify`,
    telemetry(stream: string): string {
      const problem = topicLevelProblem(stream);
      if (problem) throw new TypeError(`telemetry stream "${stream}": ${problem}`);
      return `${prefix}telemetry/${stream}`;
    },
    logs(service: string): string {
      const levels = service.split('/');
      const problem = levels.length > 2 ? 'expected "agent" or "<app>/<service>"' : levels.map(topicLevelProblem).find((p) => p !== undefined);
      if (problem) throw new TypeError(`log service "${service}": ${problem}`);
      return `${prefix}logs/${service}`;
    },
    subscriptions,
    kindOf: (topic) => kinds.get(topic),
  };
}

/** Why `name` cannot be one topic level, or undefined when it can. */
function topicLevelProblem(name: string): string | undefined {
  if (name === '') return 'expected a non-empty name';
  if (/[/+#]/.test(name) || name.includes('\u0000')) return 'expected a name without "/", "+", "#" or NUL';
  return undefined;
}

/**
 * Why `topic` cannot be published to, or undefined when it can (MQTT 5 §4.7: no wildcards, no NUL,
 * not empty, at most 65535 UTF-8 bytes). A topic a broker would refuse is rejected before it is
 * sent: some brokers answer an invalid topic by closing the connection, and a message that does so
 * would be re-sent on every reconnect and block everything behind it.
 */
export function publishTopicProblem(topic: string): string | undefined {
  if (topic === '') return 'the topic is empty';
  if (/[+#]/.test(topic)) return `the topic "${topic}" contains a wildcard ("+" or "#")`;
  if (topic.includes('\u0000')) return 'the topic contains a NUL character';
  if (Buffer.byteLength(topic, 'utf8') > 65_535) return 'the topic is longer than 65535 bytes';
  return undefined;
}
