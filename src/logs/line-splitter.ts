/**
 * Cuts a byte stream (a process's stdout or stderr) into lines. A line longer than `maxLineBytes`
 * is cut there and marked with how much was cut; the rest of it, up to its newline, is counted and
 * skipped, so a program that never prints a newline costs at most `maxLineBytes` of memory.
 * UTF-8 is decoded per line: a character split across two reads is whole again.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private held = 0;
  /** Bytes of the current line past the cap, skipped. */
  private cut = 0;

  constructor(private readonly maxLineBytes: number) {}

  /** The complete lines in `chunk` (after what earlier chunks left over), without their newlines. */
  push(chunk: Buffer): string[] {
    const out: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl === -1) break;
      this.take(chunk.subarray(start, nl));
      out.push(this.finish());
      start = nl + 1;
    }
    if (start < chunk.length) this.take(chunk.subarray(start));
    return out;
  }

  /** What is left of an unfinished line (the stream ended, or it waited too long), as a line; undefined when nothing is. */
  flush(): string | undefined {
    return this.held > 0 || this.cut > 0 ? this.finish() : undefined;
  }

  /** Whether part of a line is waiting for its newline. */
  get pending(): boolean {
    return this.held > 0 || this.cut > 0;
  }

  private take(bytes: Buffer): void {
    const room = this.maxLineBytes - this.held;
    if (bytes.length <= room) {
      if (bytes.length > 0) {
        this.parts.push(bytes);
        this.held += bytes.length;
      }
      return;
    }
    if (room > 0) {
      this.parts.push(bytes.subarray(0, room));
      this.held += room;
    }
    this.cut += bytes.length - Math.max(room, 0);
  }

  private finish(): string {
    let text = this.parts.length === 1 ? (this.parts[0] as Buffer).toString('utf8') : Buffer.concat(this.parts, this.held).toString('utf8');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    if (this.cut > 0) text = cutMark(text, this.cut);
    this.parts = [];
    this.held = 0;
    this.cut = 0;
    return text;
  }
}

/** A line cut at the cap, saying how many bytes were cut. */
export function cutMark(text: string, cutBytes: number): string {
  return `${text} [… ${cutBytes} bytes cut]`;
}
