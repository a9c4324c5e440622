import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { OutboxCounters } from './counters.js';
import type { Transactor } from './transactor.js';
import { OutboxError } from './types.js';

/**
 * `settings.offline.enableQueue: false` while the cloud is unreachable: messages are not queued. Each
 * is counted as taken and dropped on arrival (`accepted` and `offline`, in a transaction of its own so
 * the count survives a crash; the loss ledger accounts for it like any other drop), and the caller gets
 * the error that says why. A failure to count is logged, never thrown over the refusal.
 */
export function dropOffline(
  parts: { tx: Pick<Transactor, 'run'>; counters: Pick<OutboxCounters, 'bump'>; logger: Logger },
  channels: readonly string[],
): OutboxError {
  try {
    parts.tx.run(`counting ${channels.length} message(s) not queued while offline`, () => {
      for (const channel of channels) {
        parts.counters.bump(channel, 'accepted');
        parts.counters.bump(channel, 'offline');
      }
    });
  } catch (err) {
    parts.logger.warn({ err: errorMessage(err) }, `outbox: messages not queued while offline could not be counted: ${errorMessage(err)}`);
  }
  return new OutboxError('OUTBOX_OFFLINE', 'not queued: the cloud cannot be reached and settings.offline.enableQueue is false (counted in drops.offline)');
}
