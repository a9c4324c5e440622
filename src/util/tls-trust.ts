import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';

/**
 * The CAs to trust when a config adds one: Node's bundled roots, the `NODE_EXTRA_CA_CERTS` file
 * Node would also trust, then the added PEM. Passing `ca` with the added PEM alone would replace
 * them all, so a CA meant to add trust would take the public roots away.
 */
export function trustWithDefaults(addedPem: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const cas = [...rootCertificates];
  const extra = env.NODE_EXTRA_CA_CERTS;
  if (extra) {
    try {
      cas.push(readFileSync(extra, 'utf8'));
    } catch {
      // Node itself warns at startup about an unreadable NODE_EXTRA_CA_CERTS.
    }
  }
  cas.push(addedPem);
  return cas;
}
