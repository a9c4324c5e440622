/**
 * A target as it came, before the schema: the checks that report on the raw input (names, policy,
 * the app graph) walk its apps and their services with this, skipping what is not an object (the
 * schema reports that).
 */
export function rawApps(doc: unknown): [app: string, services: Record<string, unknown>][] {
  const apps = (doc as { apps?: unknown } | null)?.apps;
  if (apps === null || typeof apps !== 'object') return [];
  const out: [string, Record<string, unknown>][] = [];
  for (const [app, appDoc] of Object.entries(apps)) {
    const services = (appDoc as { services?: unknown } | null)?.services;
    if (services !== null && typeof services === 'object') out.push([app, services as Record<string, unknown>]);
  }
  return out;
}
