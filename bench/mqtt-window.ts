import type { MqttClient } from 'mqtt';

export interface WindowedMessage {
  topic: string;
  payload: Buffer | string;
}

/**
 * Publishes `messages` at QoS 1 keeping at most `window` unacknowledged: each PUBACK sends the next.
 * Resolves at the last PUBACK; `progress.acked` counts them as they come (for a caller's error text).
 */
export function publishWindowed(client: MqttClient, messages: readonly WindowedMessage[], window: number, progress: { acked: number } = { acked: 0 }): Promise<void> {
  return publishStream(client, (i) => messages[i]!, messages.length, window, progress);
}

/**
 * The same for `n` messages made by `message(i)` (`n` may be Infinity): once `stop` aborts, no new
 * message is sent and it resolves at the PUBACK of the last one sent.
 */
export function publishStream(
  client: MqttClient,
  message: (i: number) => WindowedMessage,
  n: number,
  window: number,
  progress: { acked: number } = { acked: 0 },
  stop?: AbortSignal,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (n === 0) return resolve();
    let next = 0;
    let outstanding = 0;
    const sendOne = (): void => {
      const m = message(next++);
      outstanding++;
      client.publish(m.topic, m.payload, { qos: 1 }, (err) => {
        outstanding--;
        if (err) return reject(err);
        progress.acked++;
        if (next < n && !stop?.aborted) sendOne();
        else if (outstanding === 0) resolve();
      });
    };
    for (let k = 0; k < Math.min(window, n); k++) sendOne();
  });
}
