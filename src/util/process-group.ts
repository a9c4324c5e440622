import { readdirSync, readFileSync } from 'node:fs';

/**
 * Process groups, read from /proc (Linux): the native-process runtime and run-command jobs start
 * their programs as group leaders, so a program's own children are stopped with it, and find a group
 * again after the agent restarted by its leader's pid and start time (a pid alone may be reused).
 */

/** Start time of a process in clock ticks since boot, or null when it does not exist. */
export function processStartTicks(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

/** Sends `signal` to every process of group `pid`; false when there is no such group. */
export function signalGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Live (not zombie) processes in process group `pgid`, found through /proc. */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // After "pid (comm) ": state, ppid, pgrp, ...
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(pgrp) === pgid && state !== 'Z' && state !== 'X') out.push(Number(e));
    } catch {
      // Gone while we looked.
    }
  }
  return out;
}
