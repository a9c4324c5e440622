import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Receiver, type Arrivals } from './freshness-parts.js';

/**
 * The receiver of `bench:drain` in a process of its own, as the cloud is: its parsing then costs
 * the agent's event loop nothing. The parent drives it over IPC (`RemoteReceiver`); run as a
 * script, this file is the child.
 */

type ToChild = { type: 'expect'; items: number; streams: number } | { type: 'comeBack' } | { type: 'close' };
type ToParent = { type: 'listening'; url: string } | { type: 'ready' } | { type: 'arrivals'; arrivals: Arrivals };

export class RemoteReceiver {
  private child: ChildProcess | undefined;
  private waiting: ((m: ToParent) => void)[] = [];

  async start(): Promise<string> {
    const child = (this.child = fork(fileURLToPath(import.meta.url), ['--child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    child.on('message', (m: ToParent) => this.waiting.shift()?.(m));
    const m = await this.next();
    if (m.type !== 'listening') throw new Error(`the receiver said ${m.type}`);
    return m.url;
  }

  /** Away again, expecting `items` over `streams`: resolves with what arrived once all did, after `comeBack`. */
  async expect(items: number, streams: number): Promise<{ arrived: Promise<Arrivals> }> {
    const ready = this.next();
    this.send({ type: 'expect', items, streams });
    await ready;
    const arrived = this.next().then((m) => {
      if (m.type !== 'arrivals') throw new Error(`the receiver said ${m.type}`);
      return m.arrivals;
    });
    return { arrived };
  }

  comeBack(): void {
    this.send({ type: 'comeBack' });
  }

  async close(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    this.send({ type: 'close' });
    await exited;
  }

  private next(): Promise<ToParent> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private send(m: ToChild): void {
    this.child?.send(m);
  }
}

async function child(): Promise<void> {
  const receiver = new Receiver();
  const send = (m: ToParent): void => void process.send?.(m);
  process.on('message', (m: ToChild) => {
    if (m.type === 'expect') {
      void receiver.expect(m.items, m.streams).then((arrivals) => send({ type: 'arrivals', arrivals }));
      send({ type: 'ready' });
    } else if (m.type === 'comeBack') receiver.comeBack();
    else void receiver.close().then(() => process.exit(0));
  });
  send({ type: 'listening', url: await receiver.start() });
}

if (process.argv.includes('--child')) void child();
