import { describe, expect, it } from 'vitest';
import { peakWindowSeconds, windowPeak } from '../../bench/fleet-model.js';
import { modelSpread } from '../../bench/fleet-model-run.js';

describe('the peak rate of a fleet benchmark', () => {
  it('is measured over 1 s for a large fleet, and over a window holding 10 requests at the steady rate for a small one', () => {
    expect(peakWindowSeconds(10_000 / 60)).toBe(1);
    expect(peakWindowSeconds(50 / 60)).toBe(12);
    expect(peakWindowSeconds(10)).toBe(1);
    expect(peakWindowSeconds(3)).toBe(4);
    expect(peakWindowSeconds(0)).toBe(1);
  });

  it('is the highest mean over consecutive 1-s buckets of the window within the span, or the span\'s mean when shorter', () => {
    const buckets = [9, 0, 1, 5, 3, 0, 0, 7];
    expect(windowPeak(buckets, 0, 7, 1)).toBe(9);
    expect(windowPeak(buckets, 1, 7, 1)).toBe(7);
    expect(windowPeak(buckets, 1, 7, 3)).toBe(3); // 1 + 5 + 3
    expect(windowPeak(buckets, 1, 2, 3)).toBe(0.5); // a span of 2 s: its mean
    expect(windowPeak(buckets, 5, 100, 2)).toBe(3.5); // the span ends at the last bucket
    expect(windowPeak(buckets, 8, 9, 2)).toBe(0);
  });
});

describe('modelSpread', () => {
  it('gives the median of the model over seeds, within its 5th-95th percentile range', () => {
    const m = modelSpread({ devices: 50, seed: 1, outageS: 60, channels: { api: 'refused', mqtt: 'refused' }, capacityRps: Number.POSITIVE_INFINITY }, 21);
    for (const c of [m.api, m.mqtt]) {
      expect(c).not.toBeNull();
      const [lo, hi] = c?.p99RangeS ?? [NaN, NaN];
      expect(lo).toBeLessThanOrEqual(c?.p99S ?? NaN);
      expect(c?.p99S ?? NaN).toBeLessThanOrEqual(hi);
      expect(hi).toBeLessThanOrEqual(45);
      expect(c?.peakRange[0]).toBeLessThanOrEqual(c?.peakVsSteady ?? NaN);
      expect(c?.peakVsSteady).toBeLessThanOrEqual(c?.peakRange[1] ?? NaN);
    }
    // Different seeds give different runs: the range is not one value.
    expect((m.api.p99RangeS?.[1] ?? 0) - (m.api.p99RangeS?.[0] ?? 0)).toBeGreaterThan(0);
  });
});
