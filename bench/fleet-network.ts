/**
 * The network between a simulated device and the cloud's two endpoints (the device API and the MQTT
 * broker) during an outage. This is where the fleet model stands in for the network and the cloud:
 * what an attempt started at a given instant meets, and when the agent learns of it. The agent's own
 * parts (backoff, retry policy, monitor, probe schedule) stay real in bench/fleet-sim.ts.
 *
 * Outage kinds:
 * - `refused`: nothing listens (the process is gone); a connect is refused at once (ECONNREFUSED).
 * - `blackhole`: packets to the endpoint are dropped (a route or firewall eats them): a connect's SYN is
 *   never answered. The kernel resends it (Linux, tcp_syn_retries 6: 1, 3, 7, 15, 31 s after the first),
 *   so a connect started during the outage gets through at the first resend after the return, or is
 *   abandoned by the agent at its timeout (cloud.connectTimeoutMs for HTTP, mqtt.connectTimeoutMs for the
 *   broker, the probe's own connect timeout). While it waits, the loop that made it waits with it.
 * - `hang`: connections are accepted and nothing is ever answered on them (a proxy or balancer whose
 *   backend hangs, a path that drops everything but the handshake): a request or MQTT connect fails at
 *   its timeout, and a connection still open when the outage ends is reset then (the proxy that held
 *   it has no backend for it). A connected MQTT session goes silent: its watchdog gives up 1.5 x
 *   keep-alive after the last packet, or the reset at the end reaches it first. A probe's handshake
 *   succeeds throughout. This is the `blackhole` of bench:fleet-real (a userspace proxy cannot drop SYNs).
 * - `503`: a load balancer keeps accepting connections while the backend is gone: HTTP requests are
 *   answered 503 at once (without Retry-After: the balancer does not know when the backend returns), an
 *   MQTT connection is accepted and closed before any CONNACK. A probe's handshake succeeds throughout.
 */

export const OUTAGE_KINDS = ['refused', 'blackhole', 'hang', '503'] as const;
export type OutageKind = (typeof OUTAGE_KINDS)[number];

/** When Linux sends a connect's SYN and its resends, in ms from the connect (initial RTO 1 s, doubling). */
export const SYN_SEND_TIMES_MS = [0, 1_000, 3_000, 7_000, 15_000, 31_000, 63_000] as const;

/** One endpoint's outage: down in [fromMs, untilMs), failing as `kind`; kind null: never down. */
export interface EndpointOutage {
  kind: OutageKind | null;
  fromMs: number;
  untilMs: number;
}

/**
 * How a connect (and, once connected, the request on it) ends:
 * - `reached`: the endpoint got it (the cloud may still refuse it for want of capacity);
 * - `refused`: connection refused; `timeout`: abandoned at the timeout; `reset`: reset by the far side
 *   (a hung connection when the outage ends);
 * - `unavailable`: accepted by a balancer with no backend (HTTP 503, or MQTT closed before CONNACK).
 */
export type AttemptResult = 'reached' | 'refused' | 'timeout' | 'reset' | 'unavailable';

export interface Attempt {
  /** When the agent learns the result (ms of simulated time). */
  atMs: number;
  result: AttemptResult;
}

export function isDown(o: EndpointOutage, atMs: number): boolean {
  return o.kind !== null && atMs >= o.fromMs && atMs < o.untilMs;
}

/**
 * A connect (then a request) started at `startMs`, given up by its maker after `timeoutMs`, or after
 * `connectTimeoutMs` while the connect has not completed (the HTTP client's undici connect timeout).
 */
export function attempt(o: EndpointOutage, startMs: number, timeoutMs: number, connectTimeoutMs = timeoutMs): Attempt {
  if (!isDown(o, startMs)) return { atMs: startMs, result: 'reached' };
  switch (o.kind) {
    case 'refused':
      return { atMs: startMs, result: 'refused' };
    case '503':
      return { atMs: startMs, result: 'unavailable' };
    case 'hang':
      return startMs + timeoutMs < o.untilMs ? { atMs: startMs + timeoutMs, result: 'timeout' } : { atMs: o.untilMs, result: 'reset' };
    default: {
      const limitMs = Math.min(timeoutMs, connectTimeoutMs);
      for (const sendMs of SYN_SEND_TIMES_MS) {
        if (sendMs >= limitMs) break;
        if (startMs + sendMs >= o.untilMs) return { atMs: startMs + sendMs, result: 'reached' };
      }
      return { atMs: startMs + limitMs, result: 'timeout' };
    }
  }
}

/**
 * A probe's TCP handshake started at `startMs`: true when it connects. A balancer with no backend
 * (`503`) or a hung one (`hang`) completes the handshake, which is why the probe cannot see that outage.
 */
export function handshake(o: EndpointOutage, startMs: number, timeoutMs: number): Attempt & { connected: boolean } {
  if (o.kind === 'hang' && isDown(o, startMs)) return { atMs: startMs, result: 'reached', connected: true };
  const a = attempt(o, startMs, timeoutMs);
  return { ...a, connected: a.result === 'reached' || a.result === 'unavailable' };
}

/**
 * When an MQTT connection that is up at the outage's start learns it is gone, or null when it never
 * does. Refused or behind a balancer: the broker's end closes at once. Black-holed: nothing closes it;
 * the session's watchdog gives up 1.5 x keep-alive after the last packet received (`lastRxMs`: the
 * answer to the latest ping); a connection whose watchdog would fire only after the return survives,
 * because TCP resends the ping once the path is back (the model takes its answer as immediate).
 */
export function connectionLostAt(o: EndpointOutage, lastRxMs: number, keepAliveMs: number): number | null {
  if (o.kind === null) return null;
  if (o.kind !== 'blackhole' && o.kind !== 'hang') return o.fromMs;
  const at = lastRxMs + 1.5 * keepAliveMs;
  if (at < o.untilMs) return Math.max(at, o.fromMs);
  return o.kind === 'hang' ? o.untilMs : null;
}
