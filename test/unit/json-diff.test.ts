import { describe, expect, it } from 'vitest';
import { applyMergePatch, mergePatch, withoutNulls, type Json } from '../../src/util/json-diff.js';

describe('merge patches', () => {
  it('carries only what changed, with removals as null', () => {
    const from: Json = { a: 1, b: { c: 2, d: 3 }, e: [1, 2], gone: 'x' };
    const to: Json = { a: 1, b: { c: 2, d: 4 }, e: [1, 2, 3], added: true };
    const patch = mergePatch(from, to);
    expect(patch).toEqual({ b: { d: 4 }, e: [1, 2, 3], gone: null, added: true });
    expect(applyMergePatch(from, patch!)).toEqual(to);
  });

  it('removes keys named like what every object has (an app "constructor")', () => {
    const from: Json = { apps: { constructor: { services: {} }, toString: 1 } };
    const to: Json = { apps: {} };
    const patch = mergePatch(from, to);
    expect(patch).toEqual({ apps: { constructor: null, toString: null } });
    expect(applyMergePatch(from, patch!)).toEqual(to);
  });

  it('is undefined when nothing changed', () => {
    expect(mergePatch({ a: { b: [1] } }, { a: { b: [1] } })).toBeUndefined();
  });

  it('round-trips any state without nulls', () => {
    const states: Json[] = [{}, { a: 1 }, { a: { b: { c: 'x' } } }, { a: [{ x: 1 }] }, { z: false }];
    for (const from of states) for (const to of states) expect(applyMergePatch(from, mergePatch(from, to) ?? {})).toEqual(to);
  });

  it('drops null members so a state can always be acknowledged', () => {
    expect(withoutNulls({ a: null, b: { c: null, d: 1 }, e: [null, { f: null }] })).toEqual({ b: { d: 1 }, e: [null, {}] });
  });
});
