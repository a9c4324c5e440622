/**
 * Registry names as the target (`registries`) and the device's config (`workloads.registries`) key
 * them: a hostname or IP with an optional port, no scheme and no path, as the engine writes the
 * first component of an image reference. Here, below both, so the config schema can check its keys.
 */

const LABEL = '[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?';
const REGISTRY_HOST_RE = new RegExp(`^(?:${LABEL}(?:\\.${LABEL})*|\\[[0-9a-fA-F:.]+\\])(?::(?<port>[0-9]{1,5}))?$`);

export const REGISTRY_HOST_EXPECTED = 'a registry host[:port] like "registry.example.com", "localhost:5000" or "10.0.0.2:5000" (no scheme, no path)';

/** Whether a key names a registry: a hostname or IP with an optional port 1-65535. */
export function isRegistryHost(key: string): boolean {
  const m = REGISTRY_HOST_RE.exec(key);
  if (!m || key.length > 255) return false;
  const port = m.groups?.port;
  return port === undefined || (Number(port) >= 1 && Number(port) <= 65_535);
}

/** Docker Hub's names, all one registry to the engine. */
export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/** The registry a key names, as images are matched against it (Docker Hub's aliases are one; hosts ignore case). */
export function canonicalRegistry(host: string): string {
  const lower = host.toLowerCase();
  return DOCKER_HUB_ALIASES.has(lower) ? DOCKER_HUB : lower;
}
