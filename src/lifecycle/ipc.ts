import type { Json } from '../util/json-diff.js';
import type { ReleaseName, Trial } from './release-store.js';

/** Set in the environment of an agent the launcher started. */
export const LAUNCHED_ENV = 'IOTISTIC_LAUNCHED';

/** What an agent asks of its launcher: a switch to a version or config on trial. */
export interface SwitchRequest {
  kind: Trial['kind'];
  jobId: string;
  from: { release: ReleaseName; version: string; schemaVersion: number };
  to: { release: ReleaseName; version: string };
  dbCopy?: string;
  configFile?: string;
  configBackup?: string;
  changed?: Json;
}

/** Agent → launcher. */
export type ChildMessage = { type: 'healthy'; version: string } | { type: 'switch'; request: SwitchRequest };
/** Launcher → agent. */
export type LauncherMessage = { type: 'confirmed'; jobId: string };

export function isChildMessage(m: unknown): m is ChildMessage {
  const t = (m as { type?: unknown } | null)?.type;
  return t === 'healthy' || (t === 'switch' && typeof (m as { request?: unknown }).request === 'object');
}
