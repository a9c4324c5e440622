import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/** Runs `ip` with `args`; throws with its stderr when it fails. */
export function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Whether this process may make network namespaces (root, iproute2 present). */
export function canMakeNetns(): boolean {
  const probe = `iot-probe-${process.pid}-${randomBytes(3).toString('hex')}`;
  try {
    ip('netns', 'add', probe);
    ip('netns', 'del', probe);
    return true;
  } catch {
    return false;
  }
}

/**
 * Network namespaces and veth pairs a test makes, each name unique to the run, all removed by `cleanup`
 * (a veth goes with the namespace holding one of its ends, once no process is left in it).
 */
export class NetnsLab {
  readonly id = randomBytes(3).toString('hex');
  private readonly namespaces: string[] = [];
  /** Links made in the test's own namespace (by their names there, before and after a rename). */
  private readonly rootLinks: string[] = [];

  namespace(role: string): string {
    const name = `iot-${role}-${this.id}`;
    ip('netns', 'add', name);
    this.namespaces.push(name);
    this.exec(name, 'ip', 'link', 'set', 'lo', 'up');
    // No IPv6 neighbour discovery chatter on the links: the counters then show the agent's traffic alone.
    this.exec(name, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6');
    return name;
  }

  /**
   * A veth pair: `a` (named `aName`, address `aAddr` as CIDR) in namespace `aNs`, `b` likewise; a
   * namespace of undefined is the test's own (the root namespace).
   */
  link(a: { ns?: string; name: string; addr: string }, b: { ns?: string; name: string; addr: string }): void {
    const tmpA = `va${this.id}${randomBytes(1).toString('hex')}`;
    const tmpB = `vb${this.id}${randomBytes(1).toString('hex')}`;
    this.rootLinks.push(tmpA, tmpB, ...[a, b].filter((end) => !end.ns).map((end) => end.name));
    ip('link', 'add', tmpA, 'type', 'veth', 'peer', 'name', tmpB);
    for (const [tmp, end] of [[tmpA, a], [tmpB, b]] as const) {
      if (end.ns) ip('link', 'set', tmp, 'netns', end.ns);
      const inNs = (...args: string[]): string => (end.ns ? this.exec(end.ns, 'ip', ...args) : ip(...args));
      inNs('link', 'set', tmp, 'name', end.name);
      inNs('addr', 'add', end.addr, 'dev', end.name);
      inNs('link', 'set', end.name, 'up');
    }
  }

  exec(ns: string, command: string, ...args: string[]): string {
    return ip('netns', 'exec', ns, command, ...args);
  }

  /** `ip netns exec ns` as a command prefix for a process the test spawns. */
  prefix(ns: string): string[] {
    return ['ip', 'netns', 'exec', ns];
  }

  cleanup(): void {
    const quietly = (...args: string[]): void => {
      try {
        ip(...args);
      } catch {
        // already gone
      }
    };
    for (const ns of this.namespaces.splice(0)) quietly('netns', 'del', ns);
    // A pair whose ends both stayed here (a failure before the move) goes too; deleting one end takes both.
    for (const name of this.rootLinks.splice(0)) if (this.rootLinkExists(name)) quietly('link', 'del', name);
  }

  private rootLinkExists(name: string): boolean {
    try {
      ip('link', 'show', 'dev', name);
      return true;
    } catch {
      return false;
    }
  }
}
