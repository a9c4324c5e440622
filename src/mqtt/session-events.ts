import type { IncomingKind } from './topics.js';

/** The typed events of `MqttSession` (the connection's life raises them). */

export interface IncomingMessage {
  kind: IncomingKind;
  topic: string;
  /** The parsed JSON payload (messages that are not JSON are logged, counted and dropped). */
  payload: unknown;
  retained: boolean;
  /** Wall time received. */
  at: number;
}

export interface ConnectedEvent {
  /** The broker still had the session (subscriptions, queued messages) from before. */
  sessionPresent: boolean;
  /** False for the first connection of this session object. */
  reconnect: boolean;
  at: number;
}

export interface DisconnectedEvent {
  error: string;
  at: number;
  /** How long the connection had been up. */
  connectedForMs: number;
}

export interface MqttSessionEvents {
  message: IncomingMessage;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
}
