import { isInterfaceName, type FileReader } from './link-route.js';

export const SYS_NET = '/sys/class/net';

/** An interface's byte counters as the kernel keeps them: what the carrier sees, both ways, all traffic. */
export interface CounterSample {
  iface: string;
  /** Changes when the interface is deleted and made again (a modem re-enumerated): its counters restarted. */
  ifindex: number;
  /** rx_bytes + tx_bytes. */
  bytes: number;
}

/**
 * Reads /sys/class/net/<iface>/{ifindex,statistics/rx_bytes,statistics/tx_bytes}. The name comes from
 * /proc and goes into a path: anything that is not an interface name is refused. Undefined when the
 * interface is gone or a file does not hold a number.
 */
export function readCounters(read: FileReader, iface: string, root = SYS_NET): CounterSample | undefined {
  if (!isInterfaceName(iface)) return undefined;
  const num = (file: string): number | undefined => {
    try {
      const t = read(`${root}/${iface}/${file}`).trim();
      const n = /^\d{1,18}$/.test(t) ? Number(t) : Number.NaN;
      return Number.isSafeInteger(n) ? n : undefined;
    } catch {
      return undefined;
    }
  };
  const ifindex = num('ifindex');
  const rx = num('statistics/rx_bytes');
  const tx = num('statistics/tx_bytes');
  if (ifindex === undefined || rx === undefined || tx === undefined) return undefined;
  return { iface, ifindex, bytes: rx + tx };
}
