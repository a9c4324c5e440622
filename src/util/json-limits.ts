/**
 * Nesting bounds for JSON from outside. JSON.parse copes with deep nesting, but much of what follows
 * it (schema validation, JSON.stringify, structuredClone, merge patches) recurses on the stack and
 * throws a RangeError a few thousand levels down: a document is measured before it is parsed.
 */

const OPEN_OBJECT = 0x7b; // {
const OPEN_ARRAY = 0x5b; // [
const CLOSE_OBJECT = 0x7d; // }
const CLOSE_ARRAY = 0x5d; // ]
const QUOTE = 0x22; // "
const BACKSLASH = 0x5c; // \

/**
 * True when JSON text nests arrays/objects deeper than `max`. One pass over the text, no parse, no
 * recursion; it stops at the first level past `max`. Bytes or a string: in UTF-8 these ASCII
 * characters never occur inside a multi-byte sequence, so the bytes can be scanned as they are.
 * Text that is not JSON is measured as far as it goes; the parser refuses it after.
 */
export function jsonDeeperThan(text: string | Uint8Array, max: number): boolean {
  const at = typeof text === 'string' ? (i: number) => text.charCodeAt(i) : (i: number) => text[i] ?? 0;
  const length = text.length;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < length; i++) {
    const c = at(i);
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c === QUOTE) {
      inString = true;
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (++depth > max) return true;
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      depth--;
    }
  }
  return false;
}

/** True when a parsed value nests arrays/objects deeper than `max` (iterative: an explicit stack). */
export function valueDeeperThan(value: unknown, max: number): boolean {
  const stack: { v: unknown; depth: number }[] = [{ v: value, depth: 0 }];
  while (stack.length > 0) {
    const { v, depth } = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth + 1 > max) return true;
    for (const child of Object.values(v as object)) if (child !== null && typeof child === 'object') stack.push({ v: child, depth: depth + 1 });
  }
  return false;
}

/** The refusal, naming the setting and its value. */
export function depthMessage(what: string, setting: string, max: number): string {
  return `${what} nests arrays/objects deeper than ${setting} (${max} levels)`;
}
