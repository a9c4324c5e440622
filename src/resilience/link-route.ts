import { isIPv4, isIPv6 } from 'node:net';
import { endianness } from 'node:os';

/**
 * Which interface the traffic to the cloud leaves on, read from the kernel's routing tables in
 * /proc (no shell, no `ip`): the longest-prefix route to the cloud's address, else the default route.
 * What /proc holds is parsed defensively: a line that does not parse is skipped, never thrown on.
 */

export const IPV4_ROUTES = '/proc/net/route';
export const IPV6_ROUTES = '/proc/net/ipv6_route';

/** RTF_UP: a route in use; RTF_REJECT: an unreachable/prohibit route (IPv6 lists them on `lo`). */
const RTF_UP = 0x1;
const RTF_REJECT = 0x200;

export interface Route {
  family: 4 | 6;
  iface: string;
  /** The destination's bytes, network order (4 or 16). */
  dest: Uint8Array;
  prefixLength: number;
  metric: number;
}

/**
 * A name the kernel could have given an interface and that is safe in a /sys path: 1-15 characters,
 * no "/", no white space, not "." or "..".
 */
export function isInterfaceName(name: string): boolean {
  return /^[A-Za-z0-9_.:@-]{1,15}$/.test(name) && name !== '.' && name !== '..';
}

/** A 32-bit word as /proc/net/route prints it: the kernel's in-memory (native-order) value of a network-order address. */
function ipv4Word(hex: string, little: boolean): Uint8Array | undefined {
  if (!/^[0-9A-Fa-f]{8}$/.test(hex)) return undefined;
  const bytes = Uint8Array.from(Buffer.from(hex, 'hex'));
  return little ? bytes.reverse() : bytes;
}

function prefixOfMask(mask: Uint8Array): number | undefined {
  let bits = 0;
  let ended = false;
  for (const b of mask) {
    for (let i = 7; i >= 0; i--) {
      const set = ((b >> i) & 1) === 1;
      if (set && ended) return undefined; // not a contiguous mask
      if (set) bits++;
      else ended = true;
    }
  }
  return bits;
}

/** Parses /proc/net/route. `little`: the machine's byte order (the file prints native-order words). */
export function parseIpv4Routes(text: string, little = endianness() === 'LE'): Route[] {
  const routes: Route[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [iface = '', destHex = '', , flagsHex = '', , , metricText = '', maskHex = ''] = f;
    const dest = ipv4Word(destHex, little);
    const mask = ipv4Word(maskHex, little);
    const flags = Number.parseInt(flagsHex, 16);
    const metric = Number(metricText);
    if (!dest || !mask || !isInterfaceName(iface) || !Number.isFinite(flags) || !Number.isSafeInteger(metric)) continue;
    if ((flags & RTF_UP) === 0 || (flags & RTF_REJECT) !== 0) continue;
    const prefixLength = prefixOfMask(mask);
    if (prefixLength === undefined) continue;
    routes.push({ family: 4, iface, dest, prefixLength, metric });
  }
  return routes;
}

/** Parses /proc/net/ipv6_route (addresses in network order; prefix length, metric and flags in hex). */
export function parseIpv6Routes(text: string): Route[] {
  const routes: Route[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [destHex = '', plenHex = '', , , , metricHex = '', , , flagsHex = '', iface = ''] = f;
    if (!/^[0-9a-fA-F]{32}$/.test(destHex) || !/^[0-9a-fA-F]{2}$/.test(plenHex) || !/^[0-9a-fA-F]{1,8}$/.test(metricHex) || !/^[0-9a-fA-F]{1,8}$/.test(flagsHex)) continue;
    const prefixLength = Number.parseInt(plenHex, 16);
    const flags = Number.parseInt(flagsHex, 16);
    if (prefixLength > 128 || !isInterfaceName(iface) || iface === 'lo') continue;
    if ((flags & RTF_UP) === 0 || (flags & RTF_REJECT) !== 0) continue;
    routes.push({ family: 6, iface, dest: Uint8Array.from(Buffer.from(destHex, 'hex')), prefixLength, metric: Number.parseInt(metricHex, 16) });
  }
  return routes;
}

/** An IP address as network-order bytes, or undefined when it is not one. */
export function addressBytes(address: string): { family: 4 | 6; bytes: Uint8Array } | undefined {
  if (isIPv4(address)) return { family: 4, bytes: Uint8Array.from(address.split('.').map(Number)) };
  if (!isIPv6(address)) return undefined;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1]) return addressBytes(mapped[1]);
  const [head = '', tail = ''] = address.split('::');
  const words = (s: string) => (s === '' ? [] : s.split(':'));
  const h = words(head);
  const t = address.includes('::') ? words(tail) : [];
  const all = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (all.length !== 8 || all.some((w) => !/^[0-9a-fA-F]{1,4}$/.test(w))) return undefined;
  const bytes = new Uint8Array(16);
  all.forEach((w, i) => {
    const n = Number.parseInt(w, 16);
    bytes[2 * i] = n >> 8;
    bytes[2 * i + 1] = n & 0xff;
  });
  return { family: 6, bytes };
}

function matches(route: Route, bytes: Uint8Array): boolean {
  for (let bit = 0; bit < route.prefixLength; bit++) {
    const i = bit >> 3;
    const m = 0x80 >> (bit & 7);
    if (((route.dest[i] ?? 0) & m) !== ((bytes[i] ?? 0) & m)) return false;
  }
  return true;
}

export function isLoopback(address: string): boolean {
  const a = addressBytes(address);
  if (!a) return false;
  return a.family === 4 ? a.bytes[0] === 127 : a.bytes.every((b, i) => b === (i === 15 ? 1 : 0));
}

/**
 * The interface traffic to `address` leaves on: the longest matching prefix, the lowest metric among
 * equals. Without an address (not resolved yet), the default route (IPv4 first). Undefined: no route.
 */
export function routeInterface(routes: readonly Route[], address?: string): string | undefined {
  if (address !== undefined && isLoopback(address)) return 'lo';
  const target = address === undefined ? undefined : addressBytes(address);
  if (target) return best(routes.filter((r) => r.family === target.family && matches(r, target.bytes)))?.iface;
  return (best(routes.filter((r) => r.family === 4 && r.prefixLength === 0)) ?? best(routes.filter((r) => r.family === 6 && r.prefixLength === 0)))?.iface;
}

function best(routes: readonly Route[]): Route | undefined {
  let found: Route | undefined;
  for (const r of routes) {
    if (!found || r.prefixLength > found.prefixLength || (r.prefixLength === found.prefixLength && r.metric < found.metric)) found = r;
  }
  return found;
}

/** Glob match of an interface name: `*` any run of characters, `?` one; everything else literal. */
export function matchesPattern(name: string, pattern: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\:-]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`).test(name);
}

export function isMetered(name: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => matchesPattern(name, p));
}

export interface LinkRoute {
  /** The interface the cloud's traffic leaves on; null when there is no route. */
  iface: string | null;
  metered: boolean;
}

export type FileReader = (path: string) => string;

/** Reads both routing tables (a missing or unreadable one counts as empty) and picks the cloud's interface. */
export function readLinkRoute(read: FileReader, patterns: readonly string[], address?: string): LinkRoute {
  const text = (path: string): string => {
    try {
      return read(path);
    } catch {
      return '';
    }
  };
  const routes = [...parseIpv4Routes(text(IPV4_ROUTES)), ...parseIpv6Routes(text(IPV6_ROUTES))];
  const iface = routeInterface(routes, address) ?? null;
  return { iface, metered: iface !== null && isMetered(iface, patterns) };
}
