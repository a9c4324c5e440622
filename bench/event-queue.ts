/**
 * The event queue of a discrete-event simulation: a binary min-heap ordered by time, then by the
 * order of scheduling, so events due at the same instant run first-scheduled-first and a run is
 * deterministic. Cancelling is left to the caller (a stale event is recognised and skipped when
 * popped), which keeps the heap a plain array.
 */
export interface QueuedEvent<T> {
  readonly time: number;
  readonly seq: number;
  readonly payload: T;
}

export class EventQueue<T> {
  private readonly heap: QueuedEvent<T>[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  push(time: number, payload: T): void {
    if (!Number.isFinite(time)) throw new RangeError(`event time: expected a finite number of ms, got ${time}`);
    const heap = this.heap;
    const event: QueuedEvent<T> = { time, seq: this.seq++, payload };
    let i = heap.length;
    heap.push(event);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent] as QueuedEvent<T>;
      if (!before(event, p)) break;
      heap[i] = p;
      i = parent;
    }
    heap[i] = event;
  }

  /** The earliest event, removed; undefined when empty. */
  pop(): QueuedEvent<T> | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) return top;
    const n = heap.length;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      let child = left;
      if (right < n && before(heap[right] as QueuedEvent<T>, heap[left] as QueuedEvent<T>)) child = right;
      const c = heap[child] as QueuedEvent<T>;
      if (!before(c, last)) break;
      heap[i] = c;
      i = child;
    }
    heap[i] = last;
    return top;
  }
}

function before<T>(a: QueuedEvent<T>, b: QueuedEvent<T>): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}
