import { randomBytes } from 'node:crypto';

/** Char codes of the hex digits. */
const HEX = Array.from('0123456789abcdef', (c) => c.charCodeAt(0));
const DASH = 0x2d;
/** The char code of the hex digit of the low 4 bits of `n`. */
const hex = (n: number): number => HEX[n & 15] as number;
const at = (a: ArrayLike<number>, i: number): number => a[i] as number;

/**
 * Creates UUIDv7 ids (RFC 9562): 48 bits of epoch milliseconds, then random bits, so ids sort by
 * creation time and stay unique across devices. Within one millisecond a counter in the random
 * field keeps them strictly increasing for this generator.
 */
export class IdGenerator {
  private lastMs = -1;
  private counter = 0;
  // Random bytes are drawn 4 KiB at a time: one CSPRNG call per 512 ids instead of one per id
  // (a per-id randomBytes call cost more than the rest of an outbox enqueue).
  private pool = Buffer.alloc(0);
  private poolOffset = 0;
  /** The char codes of the 48-bit time in hex, for the millisecond of the last id. */
  private readonly time = new Uint8Array(12);
  private timeMs = -1;

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
    if (ms !== this.timeMs) {
      this.timeMs = ms;
      for (let i = 11, v = ms; i >= 0; i--, v = Math.floor(v / 16)) this.time[i] = hex(v % 16);
    }
    if (this.poolOffset + 8 > this.pool.length) {
      this.pool = randomBytes(4096);
      this.poolOffset = 0;
    }
    // The string is built from char codes in one call: the per-id Buffer, hex string and slices
    // this replaced cost about 4 times as much (0.4 µs of an enqueue's 7 µs of CPU).
    const r = this.pool;
    const o = this.poolOffset;
    this.poolOffset += 8;
    const t = this.time;
    const c = this.counter;
    const v = 0x80 | (at(r, o) & 0x3f); // the variant bits, 10
    const [r1, r2, r3, r4, r5, r6, r7] = [at(r, o + 1), at(r, o + 2), at(r, o + 3), at(r, o + 4), at(r, o + 5), at(r, o + 6), at(r, o + 7)];
    return String.fromCharCode(
      at(t, 0), at(t, 1), at(t, 2), at(t, 3), at(t, 4), at(t, 5), at(t, 6), at(t, 7), DASH, at(t, 8), at(t, 9), at(t, 10), at(t, 11), DASH,
      0x37, hex(c >> 8), hex(c >> 4), hex(c), DASH, // "7": the version, then the counter
      hex(v >> 4), hex(v), hex(r1 >> 4), hex(r1), DASH,
      hex(r2 >> 4), hex(r2), hex(r3 >> 4), hex(r3), hex(r4 >> 4), hex(r4), hex(r5 >> 4), hex(r5), hex(r6 >> 4), hex(r6), hex(r7 >> 4), hex(r7),
    );
  }
}
