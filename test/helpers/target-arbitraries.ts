import fc from 'fast-check';

/**
 * fast-check generators for target-state documents (docs/protocol.md): valid ones built from the
 * schema's shape, with names chosen to collide with the agent's own files, and mutations of them.
 */

/** Valid names that look like the agent's own files and dirs, label values or JS object keys. */
export const TRICKY_VALID_NAMES = ['run', 'x.json', 'apps', 'aside', 'layout', 'migrating', 'services', 'output.log', 'output.log.1', 'constructor', 'a.b', 'a_b', 'a-b', '0', 'true', 'io.iotistic.managed', 'agent.db', 'local-api.key', 'run.x.json.1.json', 'z'.repeat(63)];

/** Names the pattern refuses: traversal, separators, case, look-alikes, control characters, length. */
export const HOSTILE_NAMES = ['', '.', '..', '...', '/', 'a/b', '../x', 'x/..', '.aside', '.layout', '.migrating', 'a..b', 'Run', 'RUN', 'аpp', 'ａpp', 'ß', 'İ', 'a\u0000b', 'a\nb', ' a', 'a ', '-a', '_a', '__proto__', 'a\\b', 'a:b', 'x'.repeat(64), 'é', '\u202e', 'a\u200bb'];

const FIRST = 'abcdefghijklmnopqrstuvwxyz0123456789'.split('');
const REST = [...FIRST, '_', '.', '-'];

export const nameArb: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(...TRICKY_VALID_NAMES),
  fc
    .tuple(fc.constantFrom(...FIRST), fc.string({ unit: fc.constantFrom(...REST), maxLength: 62 }))
    .map(([a, b]) => a + b)
    .filter((s) => !s.includes('..')),
);

const envArb = fc.dictionary(fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,8}$/), fc.string({ maxLength: 20 }), { maxKeys: 3 });
const restartArb = fc.constantFrom('no', 'always', 'on-failure', 'unless-stopped');

/** A process service that runs harmlessly for 30 s. */
export const processServiceArb = fc.record(
  { runtime: fc.constant('process'), command: fc.constant(['/bin/sleep', '30']), environment: envArb, restart: restartArb, workingDir: fc.constant('/') },
  { requiredKeys: ['runtime', 'command'] },
);

const dockerServiceArb = fc.record(
  {
    image: fc.constantFrom('nginx:1.25', 'registry.local:5000/team/app:1.0', 'busybox', 'alpine@sha256:' + 'a'.repeat(64)),
    command: fc.array(fc.string({ maxLength: 10 }), { minLength: 1, maxLength: 3 }),
    environment: envArb,
    ports: fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { maxLength: 2 }).map((ps) => ps.map((p) => `${p}:80`)),
    volumes: fc.array(nameArb.map((n) => `${n}:/data`), { maxLength: 2 }),
    restart: restartArb,
    labels: fc.dictionary(fc.stringMatching(/^[a-z][a-z.]{0,10}$/), fc.string({ maxLength: 10 }), { maxKeys: 2 }),
    network_mode: fc.constantFrom('bridge', 'none'),
  },
  { requiredKeys: ['image'] },
);

const settingsArb = fc.record(
  {
    pollIntervalMs: fc.integer({ min: 1_000, max: 10_000_000 }),
    reportIntervalMs: fc.integer({ min: 100, max: 10_000_000 }),
    metricsIntervalMs: fc.integer({ min: 1_000, max: 10_000_000 }),
    reconciliationIntervalMs: fc.integer({ min: 1_000, max: 10_000_000 }),
  },
  { requiredKeys: [] },
);

function targetArb(service: fc.Arbitrary<unknown>, maxApps: number, maxServices: number): fc.Arbitrary<Record<string, unknown>> {
  return fc.record(
    {
      version: fc.nat(),
      config: fc.record({ settings: settingsArb }, { requiredKeys: [] }),
      apps: fc.dictionary(nameArb, fc.record({ services: fc.dictionary(nameArb, service, { minKeys: 1, maxKeys: maxServices }) }), { maxKeys: maxApps }),
    },
    { requiredKeys: ['version', 'apps'] },
  );
}

/** Targets of the schema's shape, docker and process services mixed (some refused: ports used twice). */
export const targetDocArb = targetArb(fc.oneof(processServiceArb, dockerServiceArb), 3, 3);

/** Targets with only harmless process services (`/bin/sleep 30`), for the built agent. */
export const processTargetArb = targetArb(processServiceArb, 2, 2).filter((t) => Object.keys(t.apps as object).length > 0);

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every path in a JSON tree (the root is []). */
export function pathsOf(value: unknown, at: string[] = [], out: string[][] = []): string[][] {
  out.push(at);
  if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) pathsOf(v, [...at, k], out);
  return out;
}

function deepNest(depth: number, leaf: Json): Json {
  let v: Json = leaf;
  for (let i = 0; i < depth; i++) v = i % 2 === 0 ? [v] : { a: v };
  return v;
}

/** Values a hostile or broken cloud might put anywhere (JSON.stringify can write them). */
export const flatHostileValueArb: fc.Arbitrary<Json> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
  fc.constantFrom<Json>(1e308, -1e308, 2 ** 53 + 1, -1, 0.5, -0, Number.MAX_SAFE_INTEGER, '', ' ', '/', '..', 'x'.repeat(100_000), '\u0000', '😀', 'аpp', [], {}, null, true),
  fc.constantFrom(...HOSTILE_NAMES) as fc.Arbitrary<Json>,
);

/** ... and values nested up to 12,000 deep (as JSON.parse reads them; JSON.stringify cannot). */
export const hostileValueArb: fc.Arbitrary<Json> = fc.oneof(
  flatHostileValueArb,
  fc.integer({ min: 10, max: 12_000 }).map((d) => {
    const v = deepNest(d, 'x') as object;
    // fast-check prints counterexamples recursively: show this one by its depth.
    Object.defineProperty(v, fc.toStringMethod, { value: () => `<nested ${d} deep>` });
    return v as Json;
  }),
);

/** A value of hostileValueArb too deep for recursive helpers (structuredClone, pathsOf): mutate no further. */
export function isDeep(v: unknown): boolean {
  return v !== null && typeof v === 'object' && fc.toStringMethod in v;
}

export interface Mutation {
  kind: 'replace' | 'rename' | 'add' | 'delete';
  /** Which node (an index into pathsOf, modulo their count). */
  at: number;
  value?: Json;
  to?: string;
  key?: string;
}

/** A mutation of some node of `doc` (picked by index, modulo the node count). */
export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), value: hostileValueArb }),
  fc.record({ kind: fc.constant('rename' as const), at: fc.nat(), to: fc.oneof(fc.constantFrom(...HOSTILE_NAMES), fc.string({ unit: 'grapheme', maxLength: 8 })) }),
  fc.record({ kind: fc.constant('add' as const), at: fc.nat(), key: fc.oneof(fc.constantFrom(...HOSTILE_NAMES), fc.string({ maxLength: 8 })), value: hostileValueArb }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat() }),
);

/** Applies a mutation to a copy of `doc`; returns the copy and the path it touched. */
export function mutate(doc: Record<string, unknown>, m: Mutation): { doc: unknown; path: string[] } {
  const copy = structuredClone(doc) as Json;
  const paths = pathsOf(copy);
  const path = paths[m.at % paths.length] ?? [];
  if (path.length === 0) {
    if (m.kind === 'replace') return { doc: m.value, path };
    if (m.kind === 'add' && copy !== null && typeof copy === 'object' && !Array.isArray(copy)) {
      (copy as Record<string, Json>)[m.key ?? ''] = m.value ?? null;
      return { doc: copy, path: [m.key ?? ''] };
    }
    return { doc: copy, path };
  }
  const parentPath = path.slice(0, -1);
  const key = path[path.length - 1] as string;
  let parent = copy as Record<string, Json>;
  for (const k of parentPath) parent = parent[k] as Record<string, Json>;
  switch (m.kind) {
    case 'replace':
      parent[key] = m.value ?? null;
      return { doc: copy, path };
    case 'delete':
      if (Array.isArray(parent)) parent.splice(Number(key), 1);
      else delete parent[key];
      return { doc: copy, path };
    case 'rename': {
      if (Array.isArray(parent)) return { doc: copy, path };
      const v = parent[key] ?? null;
      delete parent[key];
      parent[m.to ?? ''] = v;
      return { doc: copy, path: [...parentPath, m.to ?? ''] };
    }
    case 'add': {
      const target = parent[key];
      if (target === null || typeof target !== 'object' || Array.isArray(target)) return { doc: copy, path };
      target[m.key ?? ''] = m.value ?? null;
      return { doc: copy, path: [...path, m.key ?? ''] };
    }
  }
}

/** JSON text with `key` given twice in the top-level object, `value` first or last (the parser keeps the last). */
export function withDuplicateKey(doc: Record<string, unknown>, key: string, value: Json, last: boolean): string {
  const text = JSON.stringify(doc);
  const pair = `${JSON.stringify(key)}:${JSON.stringify(value)}`;
  return last ? `${text.slice(0, -1)},${pair}}` : `{${pair},${text.slice(1)}`;
}
