/* global module */
// The shape of the code, checked by `npm run lint` (docs/architecture.md, "Layers"). Type-only imports
// count like any other: a cycle through types is still a cycle for whoever reads the code.

/**
 * The layers of src/, lowest first. A folder may import its own files and the folders before it, never
 * one after it; the files at the top of src/ (agent.ts, bootstrap.ts, cli.ts, database-schema.ts...)
 * compose everything and nothing imports them from a folder. The order is total, so no two folders can
 * import each other (no cycle at folder level). Adding a folder: place it here and in the docs' table.
 */
const LAYERS = [
  'util', //       clock, ids, logger, loops, errors: no imports from src/
  'boot', //       data dir, lock, identity, disk
  'store', //      the database, its migrations runner, salvage; knows none of the parts above it
  'config', //     schema, loading, last-known-good (kept in the store)
  'resilience', // backoff, retry policy, request errors and outcomes, connection monitor, probes
  'outbox', //     the durable queue and its flushers
  'workloads', //  target schema, reconciler, runtimes
  'secrets', //    the encrypted secret store (workloads see it through SecretSource)
  'logs', //       device logs: collection from the runtimes and the agent, chunks into the outbox
  'actions', //    device actions: restart a service or an app, reboot, shutdown, purge an app's data
  'cloud', //      HTTP client, pollers' loop, target state, reporters, the HTTP sink
  'mqtt', //       the session, its in-flight store, the MQTT sink
  'telemetry', //  system metrics, the sampler, the local broker
  'jobs', //       cloud jobs: poller, runner, handlers
  'lifecycle', //  self-update and config update: the launcher, releases, trials, their job handlers
  'shadow', //     the device shadow
  'api', //        the local HTTP API and dashboard
  'views', //      what status, the API and the dashboard show, computed from the parts' public methods
  'assembly', //   the factories agent.ts wires the parts with, one per concern
];

/**
 * Temporary exceptions to "no circular imports", each named: cycles through the two files being split
 * (issue #12). Remove an entry when its split lands; the checker then holds the cycle out for good.
 */
const CYCLE_EXCEPTIONS = {
  // None: the outbox's split (issue #12) removed the last one (outbox.ts → policy.ts → flusher.ts → outbox.ts).
};

const exact = (paths) => paths.map((p) => `^${p.replace(/[.]/g, '\\.')}$`).join('|');

const layerRules = LAYERS.map((layer, i) => {
  const above = LAYERS.slice(i + 1);
  return {
    name: `layer-${layer}`,
    comment: `src/${layer}/ must not import what is above it: ${[...above, 'the top-level files'].join(', ')}`,
    severity: 'error',
    from: { path: `^src/${layer}/` },
    to: { path: above.length > 0 ? `^src/(${above.join('|')})/|^src/[^/]+$` : '^src/[^/]+$' },
  };
});

const exempt = Object.values(CYCLE_EXCEPTIONS);

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: `no file imports itself through others, type-only imports included; exempt for now: ${Object.keys(CYCLE_EXCEPTIONS).join(', ') || 'none'}`,
      severity: 'error',
      from: {},
      // A cycle made only of the files of one exception is let through; any other file in it is not.
      to: exempt.length > 0 ? { circular: true, viaSomeNot: exact(exempt.flat()) } : { circular: true },
    },
    ...layerRules,
    {
      name: 'layer-top-folders',
      comment: 'a folder of src/ not in LAYERS: place it in the table (and in docs/architecture.md)',
      severity: 'error',
      from: { path: '^src/[^/]+/', pathNot: `^src/(${LAYERS.join('|')})/` },
      to: {},
    },
    {
      name: 'no-test-in-shipped-code',
      comment: 'src/, bench/ and devcloud/ never import test helpers: test code stays in test/',
      severity: 'error',
      from: { path: '^(src|bench|devcloud)/' },
      to: { path: '^test/' },
    },
    {
      name: 'no-tools-in-agent',
      comment: 'the agent (src/) never imports the reference cloud or the benchmarks',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(devcloud|bench)/' },
    },
  ],
  options: {
    // Type-only imports (`import type`) are dependencies too: they are erased at build time, not in the design.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
  },
};
