/**
 * Container image references, by the grammar of the distribution project's reference spec:
 *
 *   reference  := name [ ":" tag ] [ "@" digest ]
 *   name       := [ domain "/" ] path-component ( "/" path-component )*
 *   domain     := host [ ":" port ]          host: DNS labels joined by ".", or an IPv6 address in []
 *   path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
 *   tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
 *   digest     := algorithm ":" hex      algorithm: [A-Za-z][A-Za-z0-9]* joined by [+._-]; hex 32+ chars
 *
 * The first component is a registry only when it looks like a host ("." or ":" in it, or
 * "localhost"), as the Docker engine reads it; the whole name is at most 255 characters.
 */

const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const DOMAIN_LABEL = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST = `(?:${DOMAIN_LABEL}(?:\\.${DOMAIN_LABEL})*|\\[[0-9a-fA-F:.]+\\])`;
const DOMAIN = `${HOST}(?::[0-9]+)?`;
const TAG = '[\\w][\\w.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';

const REFERENCE = new RegExp(`^(?<name>(?:(?<domain>${DOMAIN})/)?${COMPONENT}(?:/${COMPONENT})*)(?::(?<tag>${TAG}))?(?:@(?<digest>${DIGEST}))?$`);
const PATH_ONLY = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);

export const MAX_IMAGE_NAME = 255;

export interface ImageReference {
  /** The repository as written (registry included when given), without tag or digest. */
  repository: string;
  /** The registry host, when the reference names one. */
  registry?: string;
  tag?: string;
  digest?: string;
}

function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost' || component.startsWith('[');
}

/** Parses a reference, or returns a sentence saying what is wrong with it. */
export function parseImageReference(ref: string): ImageReference | { error: string } {
  if (ref.length === 0) return { error: 'an image reference, got an empty string' };
  if (ref !== ref.trim() || /\s/.test(ref)) return { error: 'an image reference without spaces' };
  const m = REFERENCE.exec(ref);
  if (!m?.groups?.name) {
    if (/[A-Z]/.test(ref.split(/[:@]/)[0]?.split('/').slice(-1)[0] ?? '')) {
      return { error: 'an image reference whose repository name is lowercase' };
    }
    return { error: 'an image reference like "name", "name:tag", "registry:port/path/name:tag" or "name@sha256:<hex>"' };
  }
  const name = m.groups.name;
  let domain = m.groups.domain;
  // "a/b" with no dot, colon or localhost is a path on the default registry: the regex took "a" as
  // a domain only because the grammar allows it; it must also be a valid path component then.
  if (domain !== undefined && !looksLikeHost(domain)) {
    if (!PATH_ONLY.test(name)) return { error: 'an image reference whose repository name is lowercase' };
    domain = undefined;
  }
  if (name.length > MAX_IMAGE_NAME) return { error: `an image name of at most ${MAX_IMAGE_NAME} characters` };
  const out: ImageReference = { repository: name };
  if (domain !== undefined) out.registry = domain;
  if (m.groups.tag !== undefined) out.tag = m.groups.tag;
  if (m.groups.digest !== undefined) out.digest = m.groups.digest;
  return out;
}

export function isImageReference(ref: string): boolean {
  return !('error' in parseImageReference(ref));
}

/**
 * The reference to pull and to look up: a reference without tag or digest means `:latest` (a pull of a
 * bare repository would otherwise fetch every tag).
 */
export function normalizeImage(ref: string): string {
  const parsed = parseImageReference(ref);
  if ('error' in parsed) return ref;
  if (parsed.tag === undefined && parsed.digest === undefined) return `${parsed.repository}:latest`;
  return ref;
}
