import { EventEmitter } from 'node:events';
import { errorMessage } from './errors.js';

/**
 * A typed face on node:events. A listener that throws does not stop the other listeners nor the
 * part that emitted (a transport reporting a failure must not fail because a subscriber did); its
 * error goes to `listenerFailed`.
 */
export class TypedEmitter<Events extends { [K in keyof Events]: unknown }> {
  private readonly emitter = new EventEmitter();

  /** Returns a function that removes the listener. */
  on<K extends keyof Events & string>(event: K, listener: (payload: Events[K]) => void): () => void {
    this.emitter.on(event, listener);
    return () => this.off(event, listener);
  }

  once<K extends keyof Events & string>(event: K, listener: (payload: Events[K]) => void): () => void {
    this.emitter.once(event, listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events & string>(event: K, listener: (payload: Events[K]) => void): void {
    this.emitter.off(event, listener);
  }

  listenerCount(event: keyof Events & string): number {
    return this.emitter.listenerCount(event);
  }

  protected emit<K extends keyof Events & string>(event: K, payload: Events[K]): void {
    // rawListeners keeps the `once` wrappers, which remove themselves when called.
    for (const listener of this.emitter.rawListeners(event)) {
      try {
        (listener as (p: Events[K]) => void)(payload);
      } catch (err) {
        this.listenerFailed(err, event);
      }
    }
  }

  /** Where a listener's error goes; subclasses log it. By default it becomes a process warning. */
  protected listenerFailed(err: unknown, event: string): void {
    process.emitWarning(`a listener of "${event}" failed: ${errorMessage(err)}`, 'ListenerWarning');
  }
}
