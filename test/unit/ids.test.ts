import { describe, expect, it } from 'vitest';
import { IdGenerator } from '../../src/util/ids.js';

describe('UUIDv7 ids', () => {
  it('are RFC 9562 version 7 with the variant bits, and carry the time', () => {
    const id = new IdGenerator(() => Date.UTC(2026, 10, 28)).next();
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(Date.UTC(2026, 10, 28));
  });

  it('sort in creation order within one millisecond and when the clock steps back', () => {
    let now = 1_000_000;
    const gen = new IdGenerator(() => now);
    const ids: string[] = [];
    for (let i = 0; i < 5000; i++) {
      if (i === 2500) now -= 500; // an NTP step backwards
      ids.push(gen.next());
    }
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(ids.length);
  });
});
