import { EventEmitter } from 'node:events';
import type { ConnectionStatus } from '../../src/resilience/degradation.js';

/** A connection status the test drives by hand (stands in for the connection monitor). */
export class FakeStatus extends EventEmitter {
  current: ConnectionStatus;
  constructor(initial: ConnectionStatus) {
    super();
    this.current = initial;
  }
  status(): ConnectionStatus {
    return this.current;
  }
  set(to: ConnectionStatus): void {
    const from = this.current;
    this.current = to;
    this.emit('status', { from, to, at: 0 });
  }
}
