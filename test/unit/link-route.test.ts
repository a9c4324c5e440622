import { describe, expect, it } from 'vitest';
import { readCounters } from '../../src/resilience/link-counters.js';
import {
  addressBytes,
  IPV4_ROUTES,
  IPV6_ROUTES,
  isInterfaceName,
  isMetered,
  matchesPattern,
  parseIpv4Routes,
  parseIpv6Routes,
  readLinkRoute,
  routeInterface,
} from '../../src/resilience/link-route.js';

// As a little-endian machine prints them: 10.0.2.0/24 on eth1, default via 10.0.1.1 on wwan0 (metric 100) and via 10.0.2.1 on eth1 (metric 600).
const IPV4 = `Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wwan0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth1\t00000000\t0102000A\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth1\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wwan0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
`;

const IPV6 = `20010db8000000000000000000000000 20 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003    wwan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
`;

describe('routes from /proc', () => {
  it('reads IPv4 routes in the machine\'s byte order, with their prefix and metric', () => {
    const r = parseIpv4Routes(IPV4, true);
    expect(r.map((x) => [x.iface, [...x.dest].join('.'), x.prefixLength, x.metric])).toEqual([
      ['wwan0', '0.0.0.0', 0, 100],
      ['eth1', '0.0.0.0', 0, 600],
      ['eth1', '10.0.2.0', 24, 0],
      ['wwan0', '10.0.1.0', 24, 0],
    ]);
    // A big-endian machine prints the same address the other way round.
    expect([...(parseIpv4Routes('Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nx0\t0A000200\t0\t0001\t0\t0\t0\tFFFFFF00\n', false)[0]?.dest ?? [])]).toEqual([10, 0, 2, 0]);
  });

  it('reads IPv6 routes, leaving out the unreachable routes on lo', () => {
    const r = parseIpv6Routes(IPV6);
    expect(r.map((x) => [x.iface, x.prefixLength, x.metric])).toEqual([
      ['eth1', 32, 256],
      ['wwan0', 0, 1024],
    ]);
  });

  it('skips what does not parse and never throws on hostile content', () => {
    const hostile = [
      'Iface\tDestination',
      'wwan0\tZZZZZZZZ\t0\t0003\t0\t0\t100\t00000000',
      '../../etc\t00000000\t0\t0003\t0\t0\t100\t00000000',
      'eth0\t00000000\t0\t0003\t0\t0\t1e9999\t00000000',
      'eth0\t00000000\t0\t0003\t0\t0\t1\t0000FF00', // a mask with a hole
      'eth0\t00000000\t0\t0002\t0\t0\t1\t00000000', // not up
      '\0\0\0',
      'a'.repeat(10_000),
    ].join('\n');
    expect(parseIpv4Routes(hostile, true)).toEqual([]);
    expect(parseIpv6Routes(`${'f'.repeat(32)} ff ${'0'.repeat(32)} 00 ${'0'.repeat(32)} 1 1 1 1 eth0\n${'0'.repeat(32)} 00 x y z 1 1 1 1 a/b\n\n`)).toEqual([]);
    expect(readLinkRoute(() => { throw new Error('EACCES'); }, ['wwan*'])).toEqual({ iface: null, metered: false });
  });

  it('picks the longest prefix to the cloud\'s address, else the default route with the lowest metric', () => {
    const routes = [...parseIpv4Routes(IPV4, true), ...parseIpv6Routes(IPV6)];
    expect(routeInterface(routes)).toBe('wwan0');
    expect(routeInterface(routes, '10.0.2.7')).toBe('eth1');
    expect(routeInterface(routes, '192.0.2.1')).toBe('wwan0');
    expect(routeInterface(routes, '2001:db8::1')).toBe('eth1');
    expect(routeInterface(routes, '2a00::1')).toBe('wwan0');
    expect(routeInterface(routes, '::ffff:10.0.2.9')).toBe('eth1');
    expect(routeInterface(routes, '127.0.0.1')).toBe('lo');
    expect(routeInterface(routes, '::1')).toBe('lo');
    expect(routeInterface([], '192.0.2.1')).toBeUndefined();
    // Only IPv6 routes: the IPv6 default stands in.
    expect(routeInterface(parseIpv6Routes(IPV6))).toBe('wwan0');
  });

  it('says which link is metered, reading both tables', () => {
    const files: Record<string, string> = { [IPV4_ROUTES]: IPV4, [IPV6_ROUTES]: IPV6 };
    const read = (p: string): string => files[p] ?? '';
    expect(readLinkRoute(read, ['wwan*'], '192.0.2.1')).toEqual({ iface: 'wwan0', metered: true });
    expect(readLinkRoute(read, ['wwan*'], '10.0.2.1')).toEqual({ iface: 'eth1', metered: false });
  });

  it('parses addresses, refusing what is not one', () => {
    expect([...(addressBytes('2001:db8::1')?.bytes ?? [])].slice(0, 4)).toEqual([0x20, 0x01, 0x0d, 0xb8]);
    expect(addressBytes('example.com')).toBeUndefined();
    expect(addressBytes('1:2:3:4:5:6:7:8:9')).toBeUndefined();
  });
});

describe('interface patterns', () => {
  it('matches * and ? and takes everything else literally', () => {
    expect(matchesPattern('wwan0', 'wwan*')).toBe(true);
    expect(matchesPattern('wwan', 'wwan*')).toBe(true);
    expect(matchesPattern('eth0', 'wwan*')).toBe(false);
    expect(matchesPattern('ppp0', 'ppp?')).toBe(true);
    expect(matchesPattern('ppp10', 'ppp?')).toBe(false);
    expect(matchesPattern('eth0.5', 'eth0.5')).toBe(true);
    expect(matchesPattern('eth0x5', 'eth0.5')).toBe(false);
    expect(matchesPattern('a-b', 'a-b')).toBe(true);
    expect(isMetered('wwp0s20u4i6', ['wwan*', 'wwp*'])).toBe(true);
    expect(isMetered('usb0', ['wwan*', 'wwp*', 'wwx*', 'ppp*'])).toBe(false);
    expect(isMetered('wwan0', [])).toBe(false);
  });

  it('lets only interface names into a /sys path', () => {
    expect(isInterfaceName('wwan0')).toBe(true);
    for (const bad of ['..', '.', 'a/b', '../x', 'a b', '', 'x'.repeat(16)]) expect(isInterfaceName(bad)).toBe(false);
    const asked: string[] = [];
    const read = (p: string): string => {
      asked.push(p);
      return p.endsWith('ifindex') ? '7\n' : p.endsWith('rx_bytes') ? '1000\n' : '234\n';
    };
    expect(readCounters(read, '../../etc')).toBeUndefined();
    expect(asked).toEqual([]);
    expect(readCounters(read, 'wwan0', '/sys/class/net')).toEqual({ iface: 'wwan0', ifindex: 7, bytes: 1234 });
    expect(asked).toContain('/sys/class/net/wwan0/statistics/rx_bytes');
    expect(readCounters(() => 'garbage', 'wwan0')).toBeUndefined();
    expect(readCounters(() => { throw new Error('ENOENT'); }, 'wwan0')).toBeUndefined();
  });
});
