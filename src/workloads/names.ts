/**
 * The one pattern for every name a target gives (apps, services, named volumes). Names become
 * directory names, container and volume names and label values: lowercase ASCII only (no two names
 * differ only in case or by a look-alike letter), no "/", no leading "." and no "..", at most 63.
 */
export const NAME_PATTERN = /^(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62}$/;
export const NAME_EXPECTED = `a name matching ${String(NAME_PATTERN)} (1-63 lowercase letters, digits, "_", "." or "-", starting with a letter or digit, no "..")`;

/** Whether a name from a target is one the agent accepts (and may use in a path). */
export function isSafeName(name: unknown): name is string {
  return typeof name === 'string' && NAME_PATTERN.test(name);
}
