import type { IClientOptions, IClientPublishOptions, MqttClient, Packet, PacketCallback } from 'mqtt';
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';

/**
 * An mqtt.js client reduced to what the MQTT session uses; the test plays the broker. Publishes are
 * numbered and put in the client's outgoing store as mqtt.js does, so the session's in-flight table
 * sees them; `puback` answers one as the broker would.
 */
export class FakeMqttClient extends EventEmitter {
  readonly stream = new PassThrough();
  readonly ends: Array<[boolean | undefined, unknown]> = [];
  readonly subscriptions: string[] = [];
  readonly published: Array<{ topic: string; payload: string; retain: boolean; messageId: number }> = [];
  closed = false;
  private nextMessageId = 1;

  constructor(readonly options: IClientOptions) {
    super();
  }

  subscribe(topics: Record<string, unknown>, cb: (err: Error | null, granted: Array<{ topic: string; qos: number }>) => void): void {
    this.subscriptions.push(...Object.keys(topics));
    cb(null, Object.keys(topics).map((topic) => ({ topic, qos: 1 })));
  }

  publish(topic: string, message: Buffer, opts: IClientPublishOptions, callback?: PacketCallback): this {
    const messageId = this.nextMessageId++;
    const retain = opts.retain === true;
    this.published.push({ topic, payload: message.toString('utf8'), retain, messageId });
    const packet = { cmd: 'publish', topic, payload: message, qos: 1, retain, dup: false, messageId } as Packet;
    // mqtt.js writes to the socket only once the store has the packet; a store error fails the send.
    this.options.outgoingStore?.put(packet, (err?: Error) => {
      if (err) callback?.(err);
    });
    return this;
  }

  end(force?: boolean, opts?: unknown): this {
    this.ends.push([force, opts]);
    if (!this.closed) {
      this.closed = true;
      queueMicrotask(() => this.emit('close'));
    }
    return this;
  }

  /** The broker accepts the CONNECT; mqtt.js then re-sends what it stored and says `connect`. */
  accept(sessionPresent = false): void {
    this.emit('packetreceive', { cmd: 'connack', reasonCode: 0, sessionPresent, properties: {} });
    this.emit('connect', { cmd: 'connack', sessionPresent });
  }

  /** The CONNECT fails as mqtt.js reports it: an error, then the close. */
  fail(err: Error): void {
    this.emit('error', err);
    this.end(true);
  }

  /** The broker's PUBACK for the publish numbered `messageId`, then mqtt.js drops it from its store. */
  puback(messageId: number, reasonCode = 0): void {
    this.emit('packetreceive', { cmd: 'puback', messageId, reasonCode });
    this.options.outgoingStore?.del({ messageId }, () => undefined);
  }

  /** The PUBACK of the publish sent to `topic` (the latest one there). */
  pubackTopic(topic: string, reasonCode = 0): void {
    const sent = this.published.findLast((p) => p.topic === topic);
    if (!sent) throw new Error(`nothing was published to ${topic}`);
    this.puback(sent.messageId, reasonCode);
  }

  /** A message the broker delivers on a subscription. */
  deliver(topic: string, payload: string, retain = false): void {
    this.emit('message', topic, Buffer.from(payload), { retain });
  }
}

/** mqtt.js's `connect`, building fake clients into `clients`. */
export function fakeConnect(clients: FakeMqttClient[]): (url: string, options: IClientOptions) => MqttClient {
  return (_url, options) => {
    const c = new FakeMqttClient(options);
    clients.push(c);
    return c as unknown as MqttClient;
  };
}
