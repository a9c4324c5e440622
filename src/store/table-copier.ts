import type { Database } from 'better-sqlite3';

export const quote = (name: string): string => `"${name.replaceAll('"', '""')}"`;

/**
 * Writes salvaged rows into one table of the fresh database, in transactions of many rows. A row the
 * fresh schema refuses (a CHECK, a UNIQUE, a STRICT type: garbage that happened to parse) is counted,
 * not fatal; any other write error (a full disk) ends the salvage.
 */
export class TableCopier {
  recovered = 0;
  errors = 0;
  private readonly write: (rows: unknown[][]) => void;

  constructor(fresh: Database, table: string, columns: string[], withRowid: boolean) {
    const cols = [...(withRowid ? ['rowid'] : []), ...columns];
    const one = fresh.prepare(`INSERT INTO ${quote(table)} (${cols.map(quote).join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`);
    this.write = fresh.transaction((rows: unknown[][]) => {
      for (const r of rows) {
        try {
          one.run(r);
          this.recovered++;
        } catch (err) {
          if (!String((err as { code?: unknown }).code).startsWith('SQLITE_CONSTRAINT')) throw err;
          this.errors++;
        }
      }
    });
  }

  flush(rows: unknown[][]): void {
    if (rows.length > 0) this.write(rows);
    rows.length = 0;
  }
}
