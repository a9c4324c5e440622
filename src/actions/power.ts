import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { AgentConfig } from '../config/schema.js';

export type PowerAction = 'reboot' | 'shutdown';

/** What reboots or powers off the device: the real one runs a command; tests record the call. */
export interface PowerControl {
  run(action: PowerAction): Promise<void>;
}

/**
 * The command of a power action: the configured one, else systemd's where it runs (it stops the
 * services in order), else the classic binaries. Absolute paths: no PATH lookup, no shell.
 */
export function powerCommand(action: PowerAction, config: AgentConfig['actions'], systemd = existsSync('/run/systemd/system')): string[] {
  const configured = action === 'reboot' ? config.rebootCommand : config.shutdownCommand;
  if (configured) return configured;
  if (systemd) return ['/usr/bin/systemctl', action === 'reboot' ? 'reboot' : 'poweroff'];
  return [action === 'reboot' ? '/sbin/reboot' : '/sbin/poweroff'];
}

/** Runs the power action's command and waits for it; rejects when it cannot run or exits non-zero. */
export class CommandPowerControl implements PowerControl {
  constructor(private readonly config: AgentConfig['actions']) {}

  run(action: PowerAction): Promise<void> {
    const [program, ...args] = powerCommand(action, this.config);
    return new Promise((resolve, reject) => {
      const child = spawn(program as string, args, { shell: false, stdio: 'ignore', cwd: '/' });
      child.once('error', (err) => reject(new Error(`could not run ${String(program)}: ${err.message}`)));
      child.once('close', (code, signal) => {
        if (code === 0) resolve();
        else reject(new Error(`${String(program)} ${code === null ? `was killed by ${String(signal)}` : `exited with code ${code}`}`));
      });
    });
  }
}
