import type { CloudLoopDeps } from '../cloud/loop-deps.js';
import { markRequestFailure } from '../resilience/outcome.js';
import { pollLoop } from '../cloud/poll-loop.js';
import { errorMessage } from '../util/errors.js';
import { Kick } from '../util/kick.js';
import { PauseGate } from '../util/pause-gate.js';
import type { Random } from '../util/random.js';
import type { Shadow } from './shadow.js';

export interface ShadowDesiredPollerOptions extends CloudLoopDeps {
  shadow: Pick<Shadow, 'applyCloudDesired'>;
  random: Random;
  /** Read on every cycle (`settings.pollIntervalMs`, as the target state). */
  pollIntervalMs: () => number;
}

/**
 * The shadow's desired state for a device without MQTT: `GET /device/v1/{uuid}/shadow/desired` (an
 * addition to the protocol: `{ version, state }`, 204 while the cloud has none, ETag and 304 as for
 * the target state), applied as the retained MQTT message would be (newer versions only, 3-way
 * merged with local overrides). Outcomes are marked on the `api` channel as the `shadow` operation.
 */
export class ShadowDesiredPoller {
  private readonly kick = new Kick();
  /** Closed while the shadow is in local mode (`ShadowSync`). */
  readonly gate = new PauseGate();
  private etag: string | undefined;
  lastPollAt: number | undefined;
  lastError: string | undefined;

  constructor(private readonly o: ShadowDesiredPollerOptions) {}

  pollNow(): void {
    this.kick.kick();
  }

  run(signal: AbortSignal): Promise<void> {
    const o = this.o;
    return pollLoop(
      { retry: o.retry, random: o.random, logger: o.logger, intervalMs: o.pollIntervalMs, kick: this.kick, what: 'polling the shadow desired state', gate: this.gate },
      async (s) => {
        await this.pollOnce(s);
        return 'wait';
      },
      signal,
    );
  }

  /** One poll; throws a CloudError (after marking the monitor). */
  async pollOnce(signal?: AbortSignal): Promise<void> {
    const { http, uuid, monitor } = this.o;
    this.lastPollAt = this.o.clock.now();
    let res;
    try {
      res = await http.request<unknown>({
        method: 'GET',
        path: `/device/v1/${encodeURIComponent(uuid)}/shadow/desired`,
        headers: this.etag ? { 'if-none-match': this.etag } : {},
        accept: [204, 304],
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      if (!signal?.aborted) {
        this.lastError = errorMessage(err);
        markRequestFailure(monitor, 'shadow', err);
      }
      throw err;
    }
    monitor.markSuccess('api', 'shadow');
    this.lastError = undefined;
    if (res.status === 204 || res.status === 304) return;
    const etag = res.headers.etag;
    this.etag = (Array.isArray(etag) ? etag[0] : etag) ?? undefined;
    // Invalid or stale documents are logged by the shadow and change nothing.
    this.o.shadow.applyCloudDesired(res.body);
  }
}
