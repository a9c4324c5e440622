import { startMosquitto, type Mosquitto } from '../devcloud/mosquitto.js';

/**
 * The devcloud's Mosquitto as the MQTT benchmark runs it: persistence off, errors and warnings only
 * (its CPU is measured), a deep queue, and `start` polling every 2 ms to date the "broker is back" instant.
 */
export type BenchBroker = Pick<Mosquitto, 'host' | 'port' | 'url' | 'pid' | 'start' | 'stop' | 'dispose' | 'log'>;

/** `maxInflight`: `max_inflight_messages` (the Receive Maximum). `pollMs`: how often `start` tries the port. */
export async function startBroker(opts: { maxInflight: number; maxQueued?: number; pollMs?: number }): Promise<BenchBroker> {
  const m = await startMosquitto({
    maxInflight: opts.maxInflight,
    maxQueued: opts.maxQueued ?? 1_000_000,
    pollMs: opts.pollMs ?? 2,
    verbose: false,
  });
  return {
    ...m,
    // A clean SIGTERM stop before the removal, not the tests' SIGKILL.
    async dispose() {
      await m.stop();
      await m.dispose();
    },
  };
}
