/**
 * A set of rowids held as a sorted BigInt64Array: 8 bytes a row where a Set of bigints costs several
 * times that, so a damaged table of millions of rows can be checked row by row.
 */
export class RowidSet {
  private readonly ids: BigInt64Array;

  private constructor(ids: BigInt64Array) {
    this.ids = ids;
  }

  static from(rowids: Iterable<bigint>): RowidSet {
    let buf = new BigInt64Array(1024);
    let n = 0;
    for (const r of rowids) {
      if (n === buf.length) {
        const bigger = new BigInt64Array(buf.length * 2);
        bigger.set(buf);
        buf = bigger;
      }
      buf[n++] = r;
    }
    const sorted = buf.subarray(0, n).sort();
    let m = 0;
    for (let i = 0; i < n; i++) if (i === 0 || sorted[i] !== sorted[m - 1]) sorted[m++] = sorted[i]!;
    return new RowidSet(sorted.slice(0, m));
  }

  get size(): number {
    return this.ids.length;
  }

  has(rowid: bigint): boolean {
    let lo = 0;
    let hi = this.ids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = this.ids[mid]!;
      if (v === rowid) return true;
      if (v < rowid) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }

  *[Symbol.iterator](): IterableIterator<bigint> {
    yield* this.ids;
  }
}
