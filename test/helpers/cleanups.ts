import { afterEach } from 'vitest';

/** Undoes something a test started: closes, stops, kills or disposes it. */
export type Cleanup = () => unknown;

/**
 * Registers an `afterEach` that undoes what each test registered, in reverse order of registration:
 * what was set up last may lean on what was set up before it (a session on its proxy, the proxy on
 * its broker), so it goes first. Returns the function a test, or a helper it calls, registers with:
 * `cleanup(() => broker.dispose(), () => proxy.close())`. Each one runs even if one before it threw
 * (so a failing one leaks no broker or process); the first error is thrown once all have run.
 * `before` runs ahead of them and `after` behind them (e.g. removing the temp dirs they used), in the
 * same hook, so that order does not hang on the order in which vitest runs hooks.
 */
export function cleanupsAfterEach(opts: { before?: Cleanup; after?: Cleanup } = {}): (...fns: Cleanup[]) => void {
  const registered: Cleanup[] = [];
  afterEach(async () => {
    const errors: unknown[] = [];
    const run = async (fn: Cleanup | undefined): Promise<void> => {
      try {
        await fn?.();
      } catch (err) {
        errors.push(err);
      }
    };
    await run(opts.before);
    for (const fn of registered.splice(0).reverse()) await run(fn);
    await run(opts.after);
    if (errors.length > 0) throw errors[0];
  });
  return (...fns) => void registered.push(...fns);
}
