import { TypedEmitter } from '../../util/typed-emitter.js';
import type { RuntimeEvents } from '../types.js';

/** The runtimes' event channel: the runtime reports, the reconciler listens. */
export class RuntimeEventEmitter extends TypedEmitter<RuntimeEvents> {
  notify(event: RuntimeEvents['changed']): void {
    this.emit('changed', event);
  }
}
