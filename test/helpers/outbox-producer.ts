/**
 * Child process of test/integration/outbox-crash.test.ts: enqueues into the outbox as fast as it
 * can from many concurrent producers while a flusher peeks and acks, until it is killed.
 *   node --import tsx test/helpers/outbox-producer.ts DB_PATH PRODUCERS SEED CLAIMS_FILE
 * stdout: `ready` once the outbox is open. CLAIMS_FILE, one line each: `D <id>` after an enqueue
 * (or an enqueueMany) resolved, i.e. the id is durable; `A <id>` just BEFORE an ack of that id is
 * attempted (so a written `A` means "may be gone", never "was not acked").
 *
 * The claims go to a file with a write(2) each, not to stdout: a pipe whose reader is slow (a busy
 * CI machine) makes Node queue stdout writes inside the process, and a SIGKILL loses what is queued.
 * An `A` lost that way made acked messages look lost. A write to a file is in the page cache when
 * writeSync returns, so it survives the kill.
 */
import { randomBytes } from 'node:crypto';
import { openSync, writeSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { Outbox } from '../../src/outbox/outbox.js';
import { Store } from './store.js';
import { systemClock } from '../../src/util/clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Json } from '../../src/util/json-diff.js';
import { createLogger } from '../../src/util/logger.js';
import { seededRandom } from '../../src/util/random.js';

const [dbPath, producersArg, seedArg, claimsPath] = process.argv.slice(2);
if (!dbPath || !claimsPath) throw new Error('usage: outbox-producer.ts DB_PATH PRODUCERS SEED CLAIMS_FILE');
const producers = Number(producersArg ?? 32);
const random = seededRandom(Number(seedArg ?? 1));
const logger = createLogger({ level: 'silent', format: 'json', destination: new PassThrough() });
const store = Store.open({ path: dbPath, logger, clock: systemClock, synchronous: 'full' });
const outbox = new Outbox({
  store,
  clock: systemClock,
  ids: new IdGenerator(),
  logger,
  limits: { maxCount: 10_000_000, maxBytes: 2 ** 40 },
  compressAboveBytes: 512,
  disk: { minFreeBytes: 0 },
});

const claims = openSync(claimsPath, 'a');
const say = (line: string): void => void writeSync(claims, `${line}\n`);
const channels = ['telemetry', 'events', 'metrics', 'state', 'jobs'];

function payload(): Json {
  const r = random();
  if (r < 0.6) return { v: Math.round(random() * 1e6), t: Date.now() };
  if (r < 0.9) return { text: 'reading '.repeat(50 + Math.floor(random() * 300)) }; // compressible, above the threshold
  return { blob: randomBytes(200 + Math.floor(random() * 1_500)).toString('base64') }; // incompressible
}

async function produce(): Promise<void> {
  for (;;) {
    const channel = channels[Math.floor(random() * channels.length)] as string;
    if (random() < 0.1) {
      const many = Array.from({ length: 1 + Math.floor(random() * 8) }, () => ({ channel, payload: payload() }));
      for (const r of await outbox.enqueueMany(many)) say(`D ${r.id}`);
    } else {
      const r = await outbox.enqueue({ channel, payload: payload() });
      say(`D ${r.id}`);
    }
  }
}

async function flush(): Promise<void> {
  for (;;) {
    await new Promise((r) => setTimeout(r, 2));
    const batch = outbox.peekBatch({ maxCount: 1 + Math.floor(random() * 50) });
    if (batch.length === 0) continue;
    const ids = batch.map((m) => m.id);
    for (const id of ids) say(`A ${id}`);
    if (random() < 0.2) outbox.nack(ids);
    else outbox.ack(ids);
  }
}

process.stdout.write('ready\n');
void flush();
await Promise.all(Array.from({ length: producers }, () => produce()));
