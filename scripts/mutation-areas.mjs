// The areas of `npm run test:mutation`: what each mutates and the fast tests (unit, in-process) that guard it.
// Integration tests run the built agent (dist/), so they cannot see a mutant in src/: they stay out of mutation runs.
// Every fast unit test of src/outbox (globs): the queue, each of its parts, its limits, the flusher, the
// salvage's corrupt drops and the counters' copy, the policy's settings, downsampling and the codec.
const OUTBOX_TESTS = [
  'test/unit/outbox*.test.ts',
  'test/unit/flusher*.test.ts',
  'test/unit/offline-settings.test.ts',
  'test/unit/downsample.test.ts',
  'test/unit/counter-mirror.test.ts',
];
// What leaves the queue and what the outbox is told from outside (the rest of src/outbox is the queue itself).
const OUTBOX_FLOW = ['flusher', 'downsample', 'codec', 'policy', 'limits', 'salvage-losses', 'counter-mirror'].map((f) => `src/outbox/${f}.ts`);

export const AREAS = {
  // The outbox is the largest area (~2,000 mutants, hours at concurrency 1 here): it runs as two parts, each
  // of which finishes (Stryker writes its report only at the end), and the summary adds them up.
  outbox: { parts: ['outbox-queue', 'outbox-flow'] },
  // The queue: outbox.ts (since issue 12 a front) and the parts it is built of.
  'outbox-queue': { mutate: ['src/outbox/**/*.ts', ...OUTBOX_FLOW.map((f) => `!${f}`)], tests: OUTBOX_TESTS },
  'outbox-flow': { mutate: OUTBOX_FLOW, tests: OUTBOX_TESTS },
  mqtt: {
    mutate: ['src/mqtt/**/*.ts'],
    tests: ['test/unit/mqtt-*.test.ts'],
  },
  resilience: {
    // retry-policy.ts came from cloud/retry.ts; cloud-error.ts and outcome.ts came from cloud/ (no area
    // mutated them then) and stay out until this area's tests are checked against them.
    mutate: ['src/resilience/**/*.ts', '!src/resilience/cloud-error.ts', '!src/resilience/outcome.ts'],
    tests: [
      'test/unit/backoff.test.ts', 'test/unit/retry.test.ts', 'test/unit/connection-monitor.test.ts',
      'test/unit/channel-probes.test.ts', 'test/unit/probe.test.ts', 'test/unit/degradation.test.ts',
      'test/unit/wakeup.test.ts', 'test/unit/outage-log.test.ts',
      // In-process, loopback only, imports src/: the one test of the real TCP connect.
      'test/integration/probe-tcp.test.ts',
    ],
  },
  target: {
    mutate: ['src/cloud/target-state.ts', 'src/workloads/target-schema.ts'],
    // Not the property tests (target-schema.property.test.ts): most mutants here are in the module-level
    // schema, which Stryker can only test by re-running every test; the examples kill what they would.
    tests: ['test/unit/target-schema.test.ts', 'test/unit/target-schema-workloads.test.ts', 'test/unit/target-schema-edges.test.ts', 'test/unit/target-state.test.ts'],
  },
  config: {
    mutate: ['src/config/**/*.ts'],
    tests: ['test/unit/config.test.ts', 'test/unit/config-fallback.test.ts', 'test/unit/config-messages.test.ts', 'test/unit/offline-settings.test.ts'],
  },
  api: {
    mutate: ['src/api/auth.ts', 'src/api/server.ts', 'src/api/http-router.ts', 'src/api/http-server.ts'],
    tests: ['test/unit/api*.test.ts'],
  },
  store: {
    mutate: ['src/store/**/*.ts'],
    // The page-by-page salvage, the target copy and the corrupt-loss hook are store code too.
    tests: [
      'test/unit/store.test.ts', 'test/unit/salvage.test.ts', 'test/unit/salvage-pages.test.ts',
      'test/unit/checkpointer.test.ts', 'test/unit/target-mirror.test.ts', 'test/unit/outbox-corrupt-losses.test.ts',
      'test/unit/page-scan.test.ts', 'test/unit/btree-cells.test.ts',
      'test/unit/quarantine.test.ts', 'test/unit/quarantine-durability.test.ts', 'test/unit/salvage-report.test.ts',
      'test/unit/integrity.test.ts', 'test/unit/target-mirror-shape.test.ts', 'test/unit/database-open.test.ts',
      'test/unit/store-health.test.ts',
      // The damaged-file reader and the index readers, field by field.
      'test/unit/page-file.test.ts', 'test/unit/index-pages.test.ts', 'test/unit/index-count.test.ts',
      'test/unit/salvage-scan.test.ts', 'test/unit/wal-index.test.ts', 'test/unit/salvage-first-pass.test.ts',
      // The WAL's fsync off the event loop, and the commits made without their own (the outbox's acks).
      'test/unit/wal-sync.test.ts', 'test/unit/outbox-ack.test.ts', 'test/unit/outbox.test.ts',
    ],
  },
};

/** The area named by MUTATION_AREA; throws naming the known ones. */
export function areaFromEnv(env = process.env) {
  const name = env.MUTATION_AREA;
  const area = name ? AREAS[name] : undefined;
  if (area?.parts) throw new Error(`MUTATION_AREA "${name}" is run as its parts: ${area.parts.join(', ')}`);
  if (!area) throw new Error(`MUTATION_AREA is ${name === undefined ? 'not set' : `"${name}"`}; expected one of ${Object.keys(AREAS).join(', ')}`);
  return { name, ...area };
}
