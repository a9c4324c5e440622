import { LAUNCHED_ENV, type ChildMessage, type LauncherMessage, type SwitchRequest } from './ipc.js';

/**
 * The agent's side of the launcher's IPC channel: it says when the agent is healthy, asks for a switch
 * (a self-update or a config update on trial), and hears when a trial was confirmed.
 */
export class LauncherLink {
  private confirmedListener: ((jobId: string) => void) | undefined;

  private constructor(private readonly proc: NodeJS.Process & { send: NonNullable<NodeJS.Process['send']> }) {
    proc.on('message', (m: unknown) => {
      const msg = m as LauncherMessage | null;
      if (msg?.type === 'confirmed' && typeof msg.jobId === 'string') this.confirmedListener?.(msg.jobId);
    });
  }

  /** The link when this process was started by `iotistic-agent launch`, else undefined. */
  static ofProcess(proc: NodeJS.Process): LauncherLink | undefined {
    if (proc.env[LAUNCHED_ENV] !== '1' || typeof proc.send !== 'function') return undefined;
    return new LauncherLink(proc as NodeJS.Process & { send: NonNullable<NodeJS.Process['send']> });
  }

  onConfirmed(listener: (jobId: string) => void): void {
    this.confirmedListener = listener;
  }

  healthy(version: string): void {
    this.post({ type: 'healthy', version });
  }

  /** Asks the launcher to stop this agent and start what `request` puts on trial. */
  requestSwitch(request: SwitchRequest): void {
    this.post({ type: 'switch', request });
  }

  /** Called when the launcher goes away (it died): the agent stops, the launcher's restart starts a new one. */
  onGone(listener: () => void): void {
    this.proc.once('disconnect', listener);
  }

  private post(m: ChildMessage): void {
    if (this.proc.connected) this.proc.send(m);
  }
}
