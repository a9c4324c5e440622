import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Shadow, ShadowError, type JsonObject, type ShadowChange } from '../../src/shadow/shadow.js';
import { computeDelta, mergeOverrides, threeWayMerge } from '../../src/shadow/three-way.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { applyMergePatch, withoutNulls, type Json } from '../../src/util/json-diff.js';
import type { Logger } from '../../src/util/logger.js';
import { seededRandom, type Random } from '../../src/util/random.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const stores: Store[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  dirs.cleanup();
});

/** A shadow on a real database file in a temp dir, on fake time. `reopen` simulates a restart. */
function setup(opts: { maxBytes?: number; logger?: Logger } = {}) {
  const path = join(dirs.make(), 'agent.db');
  const clock = new FakeClock();
  const make = () => {
    const store = Store.open({ path, logger: silentLogger(), clock });
    stores.push(store);
    const shadow = new Shadow({ db: store.db, clock, logger: opts.logger ?? silentLogger(), maxBytes: opts.maxBytes });
    const changes: ShadowChange[] = [];
    shadow.on('changed', (c) => changes.push(c));
    return { store, shadow, changes };
  };
  let current = make();
  return {
    clock,
    get shadow() {
      return current.shadow;
    },
    get store() {
      return current.store;
    },
    get changes() {
      return current.changes;
    },
    reopen(): Shadow {
      current.store.close();
      current = make();
      return current.shadow;
    },
  };
}

function shadowError(fn: () => unknown): ShadowError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ShadowError) return err;
    throw err;
  }
  throw new Error('expected a ShadowError');
}

describe('shadow: reported', () => {
  it('merges reported patches, deletes on null, bumps the version only on a real change, and emits', async () => {
    const t = setup();
    const start = t.clock.now();
    expect(t.shadow.get()).toEqual({
      desired: {},
      cloudDesired: {},
      desiredVersion: null,
      overrides: null,
      reported: {},
      reportedVersion: 0,
      delta: {},
      conflicts: [],
      updatedAt: null,
    });

    const r1 = t.shadow.patch({ reported: { temp: 21.5, fw: { version: '1.0', channel: 'stable' } } });
    expect(r1).toMatchObject({ reportedChanged: true, desiredChanged: false });
    expect(r1.document.reported).toEqual({ temp: 21.5, fw: { version: '1.0', channel: 'stable' } });
    expect(r1.document.reportedVersion).toBe(1);
    expect(r1.document.updatedAt).toBe(start);

    await t.clock.advance(1_000);
    const r2 = t.shadow.patch({ reported: { fw: { channel: null, version: '1.1' }, uptime: 5 } });
    expect(r2.document.reported).toEqual({ temp: 21.5, fw: { version: '1.1' }, uptime: 5 });
    expect(r2.document.reportedVersion).toBe(2);
    expect(r2.document.updatedAt).toBe(start + 1_000);

    // No-ops: same values, deleting what is not there, an empty patch.
    await t.clock.advance(1_000);
    for (const noop of [{ temp: 21.5 }, { missing: null }, {}, { fw: { version: '1.1' } }]) {
      const r = t.shadow.patch({ reported: noop });
      expect(r.reportedChanged).toBe(false);
      expect(r.document.reportedVersion).toBe(2);
    }
    expect(t.shadow.get().updatedAt).toBe(start + 1_000);

    expect(t.changes).toHaveLength(2);
    expect(t.changes.map((c) => [c.source, c.reportedChanged, c.desiredChanged])).toEqual([
      ['local', true, false],
      ['local', true, false],
    ]);
    expect(t.changes[1]?.document.reported).toEqual({ temp: 21.5, fw: { version: '1.1' }, uptime: 5 });

    // What get() and events hand out are copies.
    t.shadow.get().reported.temp = 99;
    (t.changes[1]?.document.reported.fw as JsonObject).version = 'tampered';
    expect(t.shadow.get().reported).toEqual({ temp: 21.5, fw: { version: '1.1' }, uptime: 5 });

    const before = t.shadow.get();
    expect(t.reopen().get()).toEqual(before);
  });

  it('keeps the whole document across a restart', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 3, state: { setpoint: 20, mode: 'auto' } });
    t.shadow.patch({ desired: { setpoint: 22 }, reported: { setpoint: 20 } });
    t.shadow.applyCloudDesired({ version: 4, state: { setpoint: 21, mode: 'auto' } });
    const before = t.shadow.get();
    expect(before.conflicts).toHaveLength(1);
    const again = t.reopen();
    expect(again.get()).toEqual(before);
    // The reloaded shadow carries on from the stored versions.
    expect(again.applyCloudDesired({ version: 4, state: {} })).toMatchObject({ applied: false, reason: 'stale: version 4 <= 4' });
    expect(again.patch({ reported: { setpoint: 21 } }).document.reportedVersion).toBe(before.reportedVersion + 1);
  });

  it('logs and isolates a listener that throws', () => {
    const log = captureLogger();
    const t = setup({ logger: log.logger });
    t.shadow.on('changed', () => {
      throw new Error('listener broke');
    });
    expect(t.shadow.patch({ reported: { a: 1 } }).reportedChanged).toBe(true);
    expect(t.changes).toHaveLength(1);
    expect(log.records().some((r) => r.level === 50 && String(r.msg).includes('listener broke'))).toBe(true);
  });
});

describe('shadow: delta', () => {
  it('holds what reported does not match: nested objects member by member, arrays whole, missing keys', () => {
    const desired: JsonObject = {
      setpoint: 22,
      mode: 'eco',
      hvac: { fan: 'auto', zones: { a: 20, b: 21 } },
      schedule: [1, 2, 3],
      tags: ['x'],
      nested: { same: true },
      objVsScalar: { on: true },
      scalarVsObj: 5,
    };
    const reported: JsonObject = {
      setpoint: 22,
      hvac: { fan: 'auto', zones: { a: 19, b: 21 }, extra: 1 },
      schedule: [1, 2],
      tags: ['x'],
      nested: { same: true },
      objVsScalar: 'on',
      scalarVsObj: { v: 5 },
      onlyReported: 1,
    };
    expect(computeDelta(desired, reported)).toEqual({
      mode: 'eco',
      hvac: { zones: { a: 20 } },
      schedule: [1, 2, 3],
      objVsScalar: { on: true },
      scalarVsObj: 5,
    });
    expect(computeDelta({ a: { b: { c: 1 } } }, { a: { b: { c: 1 } } })).toEqual({});
    // Object key order does not make values differ.
    expect(computeDelta({ a: [{ x: 1, y: 2 }] }, { a: [{ y: 2, x: 1 }] })).toEqual({});
  });

  it('follows desired and reported in the document', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 1, state: { setpoint: 20, hvac: { fan: 'auto', zones: [1, 2] } } });
    expect(t.shadow.get().delta).toEqual({ setpoint: 20, hvac: { fan: 'auto', zones: [1, 2] } });
    t.shadow.patch({ reported: { setpoint: 20, hvac: { fan: 'auto', zones: [1] } } });
    expect(t.shadow.get().delta).toEqual({ hvac: { zones: [1, 2] } });
    t.shadow.patch({ reported: { hvac: { zones: [1, 2] } } });
    expect(t.shadow.get().delta).toEqual({});
    // A local override is part of desired, so of the delta.
    t.shadow.patch({ desired: { setpoint: 23 } });
    expect(t.shadow.get().delta).toEqual({ setpoint: 23 });
  });
});

describe('shadow: validation', () => {
  const cases: [unknown, string][] = [
    [[1, 2], 'patch: expected an object with "reported" and/or "desired", got [1,2] (an array)'],
    [null, 'patch: expected an object with "reported" and/or "desired", got null'],
    ['{"reported":{}}', 'patch: expected an object with "reported" and/or "desired", got "{\\"reported\\":{}}" (a string)'],
    [{}, 'patch: expected an object with "reported" and/or "desired", got {} (an object)'],
    [{ reported: [1, 2] }, 'reported: expected an object (a JSON merge patch), got [1,2] (an array)'],
    [{ reported: 'hot' }, 'reported: expected an object (a JSON merge patch), got "hot" (a string)'],
    [{ desired: null }, 'desired: expected an object (a JSON merge patch), got null'],
    [{ desired: 7, reported: {} }, 'desired: expected an object (a JSON merge patch), got 7 (a number)'],
    [{ reported: {}, state: {} }, 'patch: unknown field "state"; expected only "reported" and/or "desired"'],
    [{ reported: { a: { b: Number.NaN } } }, 'reported.a.b: expected a JSON value, got NaN (a number that is not finite)'],
    [{ reported: { list: [1, undefined] } }, 'reported.list[1]: expected a JSON value, got undefined'],
    [{ desired: { at: new Date(0) } }, 'desired.at: expected a JSON value, got "1970-01-01T00:00:00.000Z" (a Date)'],
    [JSON.parse('{"reported":{"__proto__":{"x":1}}}'), 'reported: the member name "__proto__" is not allowed'],
  ];

  it.each(cases)('refuses %j, naming the field, the value and what was expected', (input, message) => {
    const t = setup();
    t.shadow.patch({ reported: { a: 1 }, desired: { b: 2 } });
    const before = t.shadow.get();
    const events = t.changes.length;
    const err = shadowError(() => t.shadow.patch(input));
    expect(err.code).toBe('SHADOW_INVALID');
    expect(err.message).toBe(message);
    expect(t.shadow.get()).toEqual(before);
    expect(t.changes).toHaveLength(events);
    expect(t.reopen().get()).toEqual(before);
  });

  it('truncates a long value in the message and refuses very deep nesting', () => {
    const t = setup();
    const long = shadowError(() => t.shadow.patch({ reported: 'x'.repeat(500) }));
    expect(long.message).toMatch(/^reported: expected an object \(a JSON merge patch\), got "x{76}\.\.\. \(a string\)$/);
    let deep: Json = 1;
    for (let i = 0; i < 40; i++) deep = { d: deep };
    const err = shadowError(() => t.shadow.patch({ reported: deep }));
    expect(err.code).toBe('SHADOW_INVALID');
    expect(err.message).toMatch(/^reported(\.d)+: nested deeper than 32 levels$/);
    expect(t.shadow.get().reportedVersion).toBe(0);
  });

  it('refuses a patch that makes a document too large, naming it and its size, and changes nothing', () => {
    const t = setup({ maxBytes: 200 });
    t.shadow.patch({ reported: { a: 'x'.repeat(100) }, desired: { b: 1 } });
    const before = t.shadow.get();

    const reported = shadowError(() => t.shadow.patch({ reported: { c: 'y'.repeat(100) }, desired: { d: 1 } }));
    expect(reported.code).toBe('SHADOW_TOO_LARGE');
    expect(reported.message).toBe('reported: would be 215 bytes as JSON, over the 200-byte limit; nothing was changed');

    const overrides = shadowError(() => t.shadow.patch({ reported: { e: 1 }, desired: { big: 'z'.repeat(300) } }));
    expect(overrides.code).toBe('SHADOW_TOO_LARGE');
    expect(overrides.message).toMatch(/^overrides: would be 316 bytes as JSON, over the 200-byte limit/);

    expect(t.shadow.get()).toEqual(before);
    expect(t.changes).toHaveLength(1);
    expect(t.reopen().get()).toEqual(before);
    // Shrinking is allowed.
    expect(t.shadow.patch({ reported: { a: null } }).reportedChanged).toBe(true);
  });
});

describe('shadow: cloud desired', () => {
  it('applies a newer version and ignores a stale or duplicate one with a reason', async () => {
    const t = setup();
    expect(t.shadow.applyCloudDesired({ version: 0, state: { setpoint: 20 } })).toEqual({ applied: true, conflicts: [] });
    await t.clock.advance(500);
    expect(t.shadow.applyCloudDesired({ version: 5, state: { setpoint: 21, mode: null } })).toEqual({ applied: true, conflicts: [] });
    const doc = t.shadow.get();
    expect(doc).toMatchObject({ desiredVersion: 5, cloudDesired: { setpoint: 21 }, desired: { setpoint: 21 }, updatedAt: t.clock.now() });
    expect(t.changes.map((c) => [c.source, c.desiredChanged, c.reportedChanged])).toEqual([
      ['cloud', true, false],
      ['cloud', true, false],
    ]);

    // The retained message again after a reconnect, and an older one arriving late.
    expect(t.shadow.applyCloudDesired({ version: 5, state: { setpoint: 99 } })).toEqual({ applied: false, reason: 'stale: version 5 <= 5', conflicts: [] });
    expect(t.shadow.applyCloudDesired({ version: 2, state: { setpoint: 99 } })).toEqual({ applied: false, reason: 'stale: version 2 <= 5', conflicts: [] });
    expect(t.shadow.get()).toEqual(doc);
    expect(t.changes).toHaveLength(2);

    // A newer version with the same state is applied; the effective desired did not change.
    expect(t.shadow.applyCloudDesired({ version: 6, state: { setpoint: 21 } }).applied).toBe(true);
    expect(t.shadow.get().desiredVersion).toBe(6);
    expect(t.changes[2]).toMatchObject({ source: 'cloud', desiredChanged: false, reportedChanged: false });
  });

  it('ignores an invalid message with a reason naming the field, logs a warning, and never throws', () => {
    const log = captureLogger();
    const t = setup({ logger: log.logger, maxBytes: 100 });
    t.shadow.applyCloudDesired({ version: 1, state: { a: 1 } });
    const before = t.shadow.get();
    const cases: [unknown, string][] = [
      [undefined, 'message: expected an object {"version": <integer >= 0>, "state": <object>}, got undefined'],
      ['{"version":2}', 'message: expected an object {"version": <integer >= 0>, "state": <object>}, got "{\\"version\\":2}" (a string)'],
      [{ state: {} }, 'version: expected an integer >= 0, got undefined'],
      [{ version: -1, state: {} }, 'version: expected an integer >= 0, got -1 (a number)'],
      [{ version: 2.5, state: {} }, 'version: expected an integer >= 0, got 2.5 (a number)'],
      [{ version: '2', state: {} }, 'version: expected an integer >= 0, got "2" (a string)'],
      [{ version: 2 }, 'state: expected an object (the desired state), got undefined'],
      [{ version: 2, state: [1] }, 'state: expected an object (the desired state), got [1] (an array)'],
      [{ version: 2, state: { x: Number.POSITIVE_INFINITY } }, 'state.x: expected a JSON value, got Infinity (a number that is not finite)'],
      [{ version: 2, state: { big: 'x'.repeat(200) } }, 'state: 210 bytes as JSON, over the 100-byte limit'],
    ];
    for (const [message, reason] of cases) {
      expect(t.shadow.applyCloudDesired(message)).toEqual({ applied: false, reason, conflicts: [] });
    }
    expect(t.shadow.get()).toEqual(before);
    const warnings = log.records().filter((r) => r.level === 40);
    expect(warnings).toHaveLength(cases.length);
    expect(warnings.map((w) => w.reason)).toEqual(cases.map(([, reason]) => reason));
  });
});

describe('shadow: 3-way merge of local overrides', () => {
  it('keeps an override when the cloud changed other keys', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 1, state: { setpoint: 20, mode: 'auto' } });
    const r = t.shadow.patch({ desired: { setpoint: 22 } });
    expect(r).toMatchObject({ reportedChanged: false, desiredChanged: true });
    expect(r.document).toMatchObject({ desired: { setpoint: 22, mode: 'auto' }, cloudDesired: { setpoint: 20, mode: 'auto' }, overrides: { setpoint: 22 } });
    expect(t.changes.at(-1)).toMatchObject({ source: 'local', desiredChanged: true, reportedChanged: false });
    // An override equal to the cloud's value changes the document, not the effective desired.
    const same = t.shadow.patch({ desired: { mode: 'auto' } });
    expect(same).toMatchObject({ desiredChanged: false, document: { overrides: { setpoint: 22, mode: 'auto' } } });
    expect(t.changes.at(-1)).toMatchObject({ source: 'local', desiredChanged: false, reportedChanged: false });
    t.shadow.clearOverrides();
    t.shadow.patch({ desired: { setpoint: 22 } });

    expect(t.shadow.applyCloudDesired({ version: 2, state: { setpoint: 20, mode: 'eco', fan: 'low' } })).toEqual({ applied: true, conflicts: [] });
    expect(t.shadow.get()).toMatchObject({
      desired: { setpoint: 22, mode: 'eco', fan: 'low' },
      overrides: { setpoint: 22 },
      conflicts: [],
    });
  });

  it('drops an override the cloud changed, records the conflict and logs it', async () => {
    const log = captureLogger();
    const t = setup({ logger: log.logger });
    t.shadow.applyCloudDesired({ version: 1, state: { setpoint: 20, mode: 'auto' } });
    t.shadow.patch({ desired: { setpoint: 22, mode: 'eco' } });
    await t.clock.advance(60_000);
    const at = t.clock.now();
    const result = t.shadow.applyCloudDesired({ version: 2, state: { setpoint: 25, mode: 'auto' } });
    const conflict = { path: ['setpoint'], local: 22, cloud: 25, desiredVersion: 2, at };
    expect(result).toEqual({ applied: true, conflicts: [conflict] });
    expect(t.shadow.get()).toMatchObject({ desired: { setpoint: 25, mode: 'eco' }, overrides: { mode: 'eco' }, conflicts: [conflict] });
    expect(t.changes.at(-1)).toMatchObject({ source: 'cloud', desiredChanged: true });
    const warn = log.records().find((r) => r.level === 40);
    expect(warn).toMatchObject({ path: 'setpoint', desiredVersion: 2 });
    expect(String(warn?.msg)).toContain('setpoint');

    // The cloud now changes the other overridden key: no override is left.
    t.shadow.applyCloudDesired({ version: 3, state: { setpoint: 25, mode: 'off' } });
    expect(t.shadow.get()).toMatchObject({ desired: { setpoint: 25, mode: 'off' }, overrides: null });
    expect(t.shadow.get().conflicts.map((c) => c.path)).toEqual([['setpoint'], ['mode']]);
  });

  it('treats a local deletion (a null override) by the same rule', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 1, state: { a: 1, b: 2, c: 3 } });
    t.shadow.patch({ desired: { b: null, c: null } });
    expect(t.shadow.get()).toMatchObject({ desired: { a: 1 }, overrides: { b: null, c: null } });

    // The cloud changes a: both deletions stand.
    t.shadow.applyCloudDesired({ version: 2, state: { a: 10, b: 2, c: 3 } });
    expect(t.shadow.get()).toMatchObject({ desired: { a: 10 }, overrides: { b: null, c: null } });

    // The cloud changes b: the cloud wins. It deletes c too: both agree, no conflict.
    const r = t.shadow.applyCloudDesired({ version: 3, state: { a: 10, b: 20 } });
    expect(r.conflicts).toEqual([{ path: ['b'], local: null, cloud: 20, desiredVersion: 3, at: t.clock.now() }]);
    expect(t.shadow.get()).toMatchObject({ desired: { a: 10, b: 20 }, overrides: null });
  });

  it('merges nested paths leaf by leaf and prunes parents left empty', () => {
    const log = captureLogger();
    const t = setup({ logger: log.logger });
    t.shadow.applyCloudDesired({ version: 1, state: { hvac: { zone1: { setpoint: 20, fan: 'auto' }, zone2: { setpoint: 20 } } } });
    t.shadow.patch({ desired: { hvac: { zone1: { setpoint: 22 }, zone2: { fan: 'high' } } } });
    const r = t.shadow.applyCloudDesired({ version: 2, state: { hvac: { zone1: { setpoint: 21, fan: 'low' }, zone2: { setpoint: 19 } } } });
    expect(r.conflicts.map((c) => [c.path, c.local, c.cloud])).toEqual([[['hvac', 'zone1', 'setpoint'], 22, 21]]);
    expect(t.shadow.get()).toMatchObject({
      overrides: { hvac: { zone2: { fan: 'high' } } },
      desired: { hvac: { zone1: { setpoint: 21, fan: 'low' }, zone2: { setpoint: 19, fan: 'high' } } },
    });
    expect(log.records().find((rec) => rec.level === 40)).toMatchObject({ path: 'hvac.zone1.setpoint' });
  });

  it('counts a parent the cloud turned into a scalar, or a scalar parent it changed, as a change under an override', () => {
    const base: JsonObject = { a: { y: 1 }, s: 5, n: { k: 1 } };
    const overrides: JsonObject = { a: { x: 1 }, s: { x: 1 }, n: { m: 2 } };
    const r = threeWayMerge(base, { a: 6, s: 7, n: { k: 2 } }, overrides);
    expect(r.conflicts.map((c) => c.path)).toEqual([
      ['a', 'x'],
      ['s', 'x'],
    ]);
    expect(r.overrides).toEqual({ n: { m: 2 } });
    // An absent parent that the cloud adds as an object merges with the override.
    expect(threeWayMerge({}, { a: { z: 1 } }, { a: { x: 1 } })).toEqual({ overrides: { a: { x: 1 } }, conflicts: [], converged: [] });
  });

  it('persists conflicts, most recent last, at most 20', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 1, state: { setpoint: 0 } });
    for (let i = 1; i <= 25; i++) {
      t.shadow.patch({ desired: { setpoint: -i } });
      const r = t.shadow.applyCloudDesired({ version: i + 1, state: { setpoint: i } });
      expect(r.conflicts).toHaveLength(1);
    }
    const conflicts = t.shadow.get().conflicts;
    expect(conflicts).toHaveLength(20);
    expect(conflicts[0]).toMatchObject({ local: -6, cloud: 6, desiredVersion: 7 });
    expect(conflicts.at(-1)).toMatchObject({ local: -25, cloud: 25, desiredVersion: 26 });
    expect(t.reopen().get().conflicts).toEqual(conflicts);
  });
});

describe('shadow: overrides combine like sequential merge patches', () => {
  /** Random JSON over a few keys, so that patches overlap; `patch` adds nulls (deletions). */
  function generator(rand: Random) {
    const keys = ['a', 'b', 'c'];
    const value = (depth: number, patch: boolean): Json => {
      const r = rand();
      if (patch && r < 0.2) return null;
      if (depth < 3 && r < 0.55) return object(depth + 1, patch);
      if (r < 0.65) return [Math.floor(rand() * 3)];
      if (r < 0.85) return Math.floor(rand() * 3);
      return rand() < 0.5 ? 'x' : 'y';
    };
    const object = (depth: number, patch: boolean): JsonObject => {
      const o: JsonObject = {};
      for (const k of keys) if (rand() < 0.6) o[k] = value(depth, patch);
      return o;
    };
    return { doc: () => object(0, false), patch: () => object(0, true), count: () => 1 + Math.floor(rand() * 5) };
  }

  it('combining A then B gives what applying A then B gives (seeded, 500 cases)', () => {
    const gen = generator(seededRandom(7));
    for (let run = 0; run < 500; run++) {
      const doc = gen.doc();
      const patches = Array.from({ length: gen.count() }, () => gen.patch());
      let sequential: Json = doc;
      let combined: JsonObject | null = null;
      for (const p of patches) {
        sequential = applyMergePatch(sequential, p);
        combined = mergeOverrides(combined, p, doc);
      }
      const once = withoutNulls(applyMergePatch(doc, combined ?? {}));
      expect(once, JSON.stringify({ run, doc, patches, combined })).toEqual(sequential);
    }
  });

  it('holds through the shadow: desired after local patches one by one equals the cloud desired with each applied', () => {
    const gen = generator(seededRandom(11));
    const t = setup();
    for (let run = 0; run < 40; run++) {
      const doc = gen.doc();
      t.shadow.clearOverrides();
      t.shadow.applyCloudDesired({ version: run + 1, state: doc });
      let sequential: Json = doc;
      for (let i = gen.count(); i > 0; i--) {
        const p = gen.patch();
        sequential = applyMergePatch(sequential, p);
        t.shadow.patch({ desired: p });
        expect(t.shadow.get().desired).toEqual(sequential);
      }
    }
  });

  it('replaces an object the earlier patch had replaced with a scalar', () => {
    // {a: 5} then {a: {x: 1}} makes a = {x: 1} whatever a was: the combination nulls a.y for this doc.
    const doc: JsonObject = { a: { y: 2 } };
    const combined = mergeOverrides(mergeOverrides(null, { a: 5 }, doc), { a: { x: 1 } }, doc);
    expect(combined).toEqual({ a: { x: 1, y: null } });
    expect(withoutNulls(applyMergePatch(doc, combined))).toEqual({ a: { x: 1 } });
    // Nulls are kept: they are local deletions.
    expect(mergeOverrides({ a: 1, b: { c: 1 } }, { a: null, b: { c: null, d: 2 } }, {})).toEqual({ a: null, b: { c: null, d: 2 } });
  });

  it('turns an overrides object left empty into null', () => {
    const t = setup();
    expect(t.shadow.patch({ desired: {} })).toMatchObject({ desiredChanged: false, document: { overrides: null } });
    expect(t.changes).toHaveLength(0);
  });
});

describe('shadow: clearOverrides and storage', () => {
  it('drops every local override and emits as the operator', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 1, state: { setpoint: 20, mode: 'auto' } });
    t.shadow.patch({ desired: { setpoint: 22, mode: null } });
    expect(t.shadow.get().desired).toEqual({ setpoint: 22 });

    const doc = t.shadow.clearOverrides();
    expect(doc).toMatchObject({ overrides: null, desired: { setpoint: 20, mode: 'auto' } });
    expect(t.changes.at(-1)).toMatchObject({ source: 'operator', desiredChanged: true, reportedChanged: false });
    const events = t.changes.length;
    t.shadow.clearOverrides();
    expect(t.changes).toHaveLength(events);
    expect(t.reopen().get()).toMatchObject({ overrides: null, desired: { setpoint: 20, mode: 'auto' } });
  });

  it('starts a corrupt column from its default, logs it, and keeps the rest', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 4, state: { setpoint: 20 } });
    t.shadow.patch({ reported: { temp: 1 }, desired: { setpoint: 21 } });
    t.store.db.prepare(`UPDATE shadow SET reported = '{"temp": 1', conflicts = '{"not":"a list"}' WHERE id = 1`).run();
    t.store.close();

    const log = captureLogger();
    const store = Store.open({ path: t.store.path, logger: silentLogger(), clock: t.clock });
    stores.push(store);
    const shadow = new Shadow({ db: store.db, clock: t.clock, logger: log.logger });
    expect(shadow.get()).toMatchObject({
      reported: {},
      conflicts: [],
      reportedVersion: 1,
      cloudDesired: { setpoint: 20 },
      desiredVersion: 4,
      overrides: { setpoint: 21 },
    });
    const errors = log.records().filter((r) => r.level === 50);
    expect(errors.map((e) => e.column)).toEqual(['conflicts', 'reported']);
    // It keeps working, and the next change stores whole columns again.
    shadow.patch({ reported: { temp: 2 } });
    expect(store.db.prepare('SELECT reported, conflicts FROM shadow').get()).toEqual({ reported: '{"temp":2}', conflicts: '[]' });
  });

  it('changes nothing when the write fails: patch throws, a cloud message is not applied (so its re-delivery retries)', () => {
    const t = setup();
    t.shadow.applyCloudDesired({ version: 1, state: { a: 1 } });
    const before = t.shadow.get();
    const events = t.changes.length;
    t.store.close();
    expect(() => t.shadow.patch({ reported: { b: 2 } })).toThrow(/not open/);
    const r = t.shadow.applyCloudDesired({ version: 2, state: { a: 2 } });
    expect(r).toMatchObject({ applied: false, conflicts: [] });
    expect(r.reason).toMatch(/^not stored: /);
    expect(t.shadow.get()).toEqual(before);
    expect(t.changes).toHaveLength(events);
    expect(t.reopen().applyCloudDesired({ version: 2, state: { a: 2 } }).applied).toBe(true);
  });

  it('holds one row at most', () => {
    const t = setup();
    t.shadow.patch({ reported: { a: 1 } });
    expect(() => t.store.db.prepare(`INSERT INTO shadow (id, cloud_desired, base, reported, reported_version, conflicts) VALUES (2, '{}', '{}', '{}', 0, '[]')`).run()).toThrow(
      /CHECK constraint failed/,
    );
  });
});
