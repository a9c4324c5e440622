/**
 * The lines `bench:logs` has its container print (bench/logs.ts) and checks on both sides: line i
 * (from 1) is about 80 bytes, numbered, and varies like a request log (so the outbox's compression
 * sees text, not one repeated byte). The awk program and `expectedLine` must agree.
 */

/** The container's command: busybox awk printing lines 1..n as fast as it can, then exiting. */
export function printerCommand(n: number): string[] {
  const fmt = '%08d info handled GET /api/v1/items/%d in %d ms; worker %d, queue %d, user u%d\\n';
  return ['awk', `BEGIN { for (i = 1; i <= ${n}; i++) printf "${fmt}", i, i % 9973, i % 997, i % 7, i % 31, i % 1009 }`];
}

/** Line i (from 1) as printed, without its newline. */
export function expectedLine(i: number): string {
  return `${String(i).padStart(8, '0')} info handled GET /api/v1/items/${i % 9973} in ${i % 997} ms; worker ${i % 7}, queue ${i % 31}, user u${i % 1009}`;
}
