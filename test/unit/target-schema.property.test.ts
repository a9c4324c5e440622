import fc from 'fast-check';
import { resolve, sep } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ProcessFiles } from '../../src/workloads/runtimes/process-files.js';
import { NAME_PATTERN, validateTarget, type TargetValidation } from '../../src/workloads/target-schema.js';
import { systemClock } from '../../src/util/clock.js';
import { silentLogger } from '../helpers/logger.js';
import { flatHostileValueArb, HOSTILE_NAMES, isDeep, mutate, mutationArb, nameArb, targetDocArb, TRICKY_VALID_NAMES, withDuplicateKey } from '../helpers/target-arbitraries.js';

/**
 * Property-based: whatever the cloud sends, `validateTarget` answers (never throws); a refusal
 * names the field; an accepted target only has names that stay inside the service directories.
 */

const files = new ProcessFiles({ root: '/data/services', clock: systemClock, logger: silentLogger() });

function validate(doc: unknown): TargetValidation {
  let r: TargetValidation | undefined;
  expect(() => (r = validateTarget(doc))).not.toThrow();
  return r as TargetValidation;
}

/** An accepted target's names all follow the pattern, and every service dir is inside apps/. */
function expectSafe(r: TargetValidation & { ok: true }): void {
  for (const [app, a] of Object.entries(r.target.apps)) {
    expect(app).toMatch(NAME_PATTERN);
    for (const service of Object.keys(a.services)) {
      expect(service).toMatch(NAME_PATTERN);
      const dir = resolve(files.serviceDir(app, service));
      expect(dir.startsWith(`${files.appsDir}${sep}`)).toBe(true);
      expect(dir.split(sep).length).toBe(files.appsDir.split(sep).length + 2);
    }
  }
}

/** The refusal names the mutated field or one in the same object (a sibling the change made wrong). */
function expectNamesField(r: TargetValidation & { ok: false }, path: string[]): void {
  expect(r.issues.length).toBeGreaterThan(0);
  expect(r.message.length).toBeGreaterThan(0);
  const p = path.join('.');
  const parent = path.slice(0, -1).join('.');
  const related = r.issues.some(
    (i) => i.path === '' || p.startsWith(i.path) || i.path.startsWith(p) || (parent === '' ? true : i.path.startsWith(`${parent}.`)) || i.expected.includes(p),
  );
  if (!related) throw new Error(`mutation at "${p}" refused without naming it: ${r.message}`);
}

describe('target validation, property-based', () => {
  it('accepts generated targets of the schema\'s shape (or refuses host ports used twice), never throwing', () => {
    fc.assert(
      fc.property(targetDocArb, (doc) => {
        const r = validate(doc);
        if (r.ok) expectSafe(r);
        else for (const i of r.issues) expect(i.expected).toMatch(/host port not already used/);
      }),
      { numRuns: 300 },
    );
  });

  it('answers mutated targets (wrong types, hostile names, huge numbers, deep nesting, unicode) with a refusal naming the field, or accepts them safely', () => {
    fc.assert(
      fc.property(targetDocArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }), (doc, ms) => {
        let cur: unknown = doc;
        let path: string[] = [];
        for (const m of ms) {
          if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) break;
          ({ doc: cur, path } = mutate(cur as Record<string, unknown>, m));
          if (isDeep(m.value)) break;
        }
        const r = validate(cur);
        if (r.ok) expectSafe(r);
        else if (ms.length === 1) expectNamesField(r, path);
      }),
      { numRuns: 400 },
    );
  });

  it('reads JSON text with a key given twice as the parser does (the last wins), and never throws', () => {
    fc.assert(
      fc.property(targetDocArb, fc.constantFrom('version', 'apps', 'config', 'extra'), flatHostileValueArb, fc.boolean(), (doc, key, value, last) => {
        const r = validate(JSON.parse(withDuplicateKey(doc, key, value, last)));
        if (r.ok) expectSafe(r);
        else expect(r.message).toMatch(/^[^:]*\b(version|apps|config|extra)\b/);
      }),
      { numRuns: 200 },
    );
  });

  it('refuses every hostile app, service and volume name, naming the field, the value and the pattern', () => {
    for (const bad of HOSTILE_NAMES) {
      for (const doc of [
        { version: 1, apps: { [bad]: { services: { s: { runtime: 'process', command: ['/bin/true'] } } } } },
        { version: 1, apps: { a: { services: { [bad]: { runtime: 'process', command: ['/bin/true'] } } } } },
        { version: 1, apps: { a: { services: { s: { image: 'busybox', volumes: [`${bad}:/data`] } } } } },
      ]) {
        const r = validate(doc);
        expect(r.ok, `${JSON.stringify(bad)} in ${JSON.stringify(doc)}`).toBe(false);
        if (r.ok) continue;
        if (bad === '' || bad.startsWith('/')) continue; // an empty key / a host path: refused on other grounds
        expect(r.message).toContain(String(NAME_PATTERN));
        if (!('volumes' in (doc.apps.a?.services.s ?? {}))) expect(r.message).toContain(JSON.stringify(bad).slice(0, 20));
      }
    }
  });

  it('accepts the names that look like the agent\'s own files: the layout keeps them apart', () => {
    fc.assert(
      fc.property(fc.constantFrom(...TRICKY_VALID_NAMES), nameArb, (app, service) => {
        const r = validate({ version: 1, apps: { [app]: { services: { [service]: { runtime: 'process', command: ['/bin/true'] } } } } });
        expect(r.ok).toBe(true);
        if (r.ok) expectSafe(r);
      }),
    );
  });
});
