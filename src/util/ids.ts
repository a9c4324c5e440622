import { randomBytes } from 'node:crypto';

/**
 * Creates UUIDv7 ids (RFC 9562): 48 bits of epoch milliseconds, then random bits, so ids sort by
 * creation time and stay unique across devices. Within one millisecond a counter in the random
 * field keeps them strictly increasing for this generator.
 */
export class IdGenerator {
  private lastMs = -1;
  private counter = 0;
  // Random bytes are drawn 4 KiB at a time: one CSPRNG call per 256 ids instead of one per id
  // (a per-id randomBytes call cost more than the rest of an outbox enqueue).
  private pool = Buffer.alloc(0);
  private poolOffset = 0;

  constructor(private readonly nowMs: () => number = Date.now) {}

  next(): string {
    let ms = this.nowMs();
    if (ms <= this.lastMs) {
      // Same millisecond (or the wall clock stepped back): keep order by bumping the counter.
      ms = this.lastMs;
      this.counter++;
      if (this.counter > 0xfff) {
        ms = this.lastMs + 1;
        this.counter = 0;
      }
    } else {
      this.counter = 0;
    }
    this.lastMs = ms;
    if (this.poolOffset + 16 > this.pool.length) {
      this.pool = randomBytes(4096);
      this.poolOffset = 0;
    }
    const bytes = this.pool.subarray(this.poolOffset, this.poolOffset + 16);
    this.poolOffset += 16;
    bytes.writeUIntBE(ms, 0, 6);
    bytes[6] = 0x70 | ((this.counter >> 8) & 0x0f);
    bytes[7] = this.counter & 0xff;
    bytes[8] = 0x80 | ((bytes[8] ?? 0) & 0x3f);
    const hex = bytes.toString('hex');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }
}
