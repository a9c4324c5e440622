import { closeSync, existsSync, openSync, readFileSync, writeSync } from 'node:fs';

/**
 * An append-only record file: one write(2) per record, so a record is in the page cache once
 * `write` returns and survives the kill of any process (stdout would queue it in memory).
 */
export class AppendLog {
  private readonly fd: number;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'a', 0o600);
  }

  write(fields: ReadonlyArray<string | number>): void {
    writeSync(this.fd, `${fields.join(' ')}\n`);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** The records of a log, split on spaces; a torn last line (no newline) is left out. */
export function readLog(path: string): string[][] {
  if (!existsSync(path)) return [];
  const text = readFileSync(path, 'utf8');
  const complete = text.endsWith('\n') ? text : text.slice(0, text.lastIndexOf('\n') + 1);
  return complete
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' '));
}
