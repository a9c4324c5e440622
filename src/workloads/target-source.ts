import { TypedEmitter } from '../util/typed-emitter.js';
import type { TargetState } from './target-schema.js';
import type { TargetSource } from './types.js';

/**
 * A TargetSource held in memory: the agent sets it from the stored target at start, from each new
 * target the poller stores, and from local mode. Setting the same document again notifies nothing.
 */
export class MemoryTargetSource extends TypedEmitter<{ change: TargetState | undefined }> implements TargetSource {
  private target: TargetState | undefined;
  private json: string;

  constructor(initial?: TargetState) {
    super();
    this.target = initial;
    this.json = JSON.stringify(initial ?? null);
  }

  current(): TargetState | undefined {
    return this.target;
  }

  set(target: TargetState | undefined): void {
    const json = JSON.stringify(target ?? null);
    if (json === this.json) return;
    this.target = target;
    this.json = json;
    this.emit('change', target);
  }

  onChange(listener: () => void): () => void {
    return this.on('change', () => listener());
  }
}
