import type { PowerAction, PowerControl } from '../../src/actions/power.js';

/** The one fake of the device actions: records the power actions asked for instead of rebooting the machine running the tests. */
export class RecordingPowerControl implements PowerControl {
  readonly calls: PowerAction[] = [];
  run(action: PowerAction): Promise<void> {
    this.calls.push(action);
    return Promise.resolve();
  }
}
