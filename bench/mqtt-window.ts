import type { MqttClient } from 'mqtt';

/**
 * Publishes `messages` at QoS 1 keeping at most `window` unacknowledged: each PUBACK sends the next.
 * Resolves at the last PUBACK; `progress.acked` counts them as they come (for a caller's error text).
 */
export function publishWindowed(
  client: MqttClient,
  messages: readonly { topic: string; payload: Buffer | string }[],
  window: number,
  progress: { acked: number } = { acked: 0 },
): Promise<void> {
  const n = messages.length;
  return new Promise<void>((resolve, reject) => {
    if (n === 0) return resolve();
    let next = 0;
    const sendOne = (): void => {
      const m = messages[next++]!;
      client.publish(m.topic, m.payload, { qos: 1 }, (err) => {
        if (err) return reject(err);
        if (++progress.acked === n) return resolve();
        if (next < n) sendOne();
      });
    };
    for (let k = 0; k < Math.min(window, n); k++) sendOne();
  });
}
