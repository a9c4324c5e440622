import { readFileSync } from 'node:fs';
import { formatIssue } from './config/issues.js';
import { errorMessage } from './util/errors.js';
import { convertCompose } from './workloads/compose.js';
import { validateTarget } from './workloads/target-schema.js';

/**
 * `iotistic-agent compose convert FILE`: prints the target (JSON) a Compose file makes, or every reason
 * it cannot (exit 1). The device's own policy (host mounts, host network) is not known here: it is
 * applied when the target reaches the device, so this checks the target with everything allowed.
 */
export function runComposeConvert(file: string, opts: { app?: string; version?: string }, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): number {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    err.write(`${file}: cannot read it: ${errorMessage(e)}\n`);
    return 1;
  }
  const version = opts.version === undefined ? undefined : Number(opts.version);
  if (version !== undefined && !(Number.isInteger(version) && version >= 0)) {
    err.write(`--version: expected a whole number from 0, got ${JSON.stringify(opts.version)}\n`);
    return 1;
  }
  const r = convertCompose(text, { ...(opts.app !== undefined ? { app: opts.app } : {}), ...(version !== undefined ? { version } : {}) });
  if (!r.ok) {
    err.write(`${file}: ${r.issues.length} problem${r.issues.length === 1 ? '' : 's'}\n${r.issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}\n`);
    return 1;
  }
  const v = validateTarget(r.target, { policy: { allowHostMounts: true, allowPrivileged: true, allowHostNetwork: true, allowDevices: true } });
  if (!v.ok) {
    err.write(`${file}: the target it makes is refused:\n${v.issues.map((i) => `  ${formatIssue(i)}`).join('\n')}\n`);
    return 1;
  }
  out.write(`${JSON.stringify(r.target, null, 2)}\n`);
  return 0;
}
