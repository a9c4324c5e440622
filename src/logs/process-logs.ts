import type { Clock } from '../util/clock.js';
import type { TypedEmitter } from '../util/typed-emitter.js';
import type { ProcessOutputEvents } from '../workloads/runtimes/process.js';
import { serviceName } from './docker-logs.js';
import { LineSplitter } from './line-splitter.js';
import type { ServiceLog } from './service-log.js';

/**
 * The output of native processes, line by line, as the process runtime reads it from their pipes
 * (docs/logs.md). A pipe cannot be read again: a line is taken when read, and one the backlog has
 * no room for is dropped and counted. A process does not outlive the agent (it is stopped and
 * started afresh), so there is no cursor: lines read and not yet committed when the agent is killed
 * are lost with the process's own pipe buffer, and the sequence numbers go on without a gap.
 */
export class ProcessLogs {
  private readonly splitters = new Map<string, LineSplitter>();

  constructor(
    private readonly o: {
      output: TypedEmitter<ProcessOutputEvents>;
      logOf: (service: string) => ServiceLog | undefined;
      clock: Pick<Clock, 'now'>;
      maxLineBytes: number;
    },
  ) {}

  /** Follows the output until the returned function is called. */
  start(): () => void {
    const offEnded = this.o.output.on('ended', ({ app, service }) => {
      const name = serviceName(app, service);
      for (const stream of ['stdout', 'stderr'] as const) {
        const key = `${name}\u0000${stream}`;
        const text = this.splitters.get(key)?.flush();
        this.splitters.delete(key);
        if (text !== undefined) this.o.logOf(name)?.push({ stream, ts: this.o.clock.now(), text });
      }
    });
    const offOutput = this.o.output.on('output', ({ app, service, stream, chunk }) => {
      const name = serviceName(app, service);
      const log = this.o.logOf(name);
      if (!log) return;
      const key = `${name}\u0000${stream}`;
      let splitter = this.splitters.get(key);
      if (!splitter) this.splitters.set(key, (splitter = new LineSplitter(this.o.maxLineBytes)));
      const ts = this.o.clock.now();
      for (const text of splitter.push(chunk)) log.push({ stream, ts, text });
    });
    return () => {
      offOutput();
      offEnded();
    };
  }
}
