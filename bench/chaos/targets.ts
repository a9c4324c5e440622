/**
 * Target documents a cloud (or whoever holds its credentials) could send, to see the agent take
 * them or refuse them and stay healthy, across a restart too:
 * - `hostile-names`: names the schema accepts that match the agent's own files under the data dir
 *   (its process runtime keeps pid files in `services/run/*.json`, services in `services/APP/SERVICE`).
 * - `huge`: 16 MiB of environment strings.
 * - `deep`: arrays nested 3,000 deep (deeper, the devcloud itself cannot store it: JSON.stringify runs out of stack) in a field the schema does not know.
 */

export type HostileKind = 'hostile-names' | 'huge' | 'deep';

const SLEEP = ['/usr/bin/sleep', '600'];

export function hostileTarget(kind: HostileKind, version: number): Record<string, unknown> {
  switch (kind) {
    case 'hostile-names':
      return {
        version,
        apps: {
          run: { services: { 'x.json': { runtime: 'process', command: SLEEP }, 'agent.json': { runtime: 'process', command: SLEEP } } },
          'agent.db': { services: { wal: { runtime: 'process', command: SLEEP } } },
          'local-api.key': { services: { x: { runtime: 'process', command: SLEEP } } },
          services: { services: { run: { runtime: 'process', command: SLEEP } } },
        },
      };
    case 'huge': {
      const environment: Record<string, string> = {};
      for (let i = 0; i < 16; i++) environment[`BIG_${i}`] = 'x'.repeat(1024 * 1024);
      return { version, apps: { big: { services: { s: { runtime: 'process', command: SLEEP, environment } } } } };
    }
    case 'deep': {
      let deep: unknown = 'bottom';
      for (let i = 0; i < 3_000; i++) deep = [deep];
      return { version, apps: {}, config: { settings: { deep } } };
    }
  }
}
