import { readdirSync, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Samples the machine from /proc and /sys: CPU (busy % since the previous sample), memory, the data
 * dir's filesystem, the hottest thermal zone (where the machine has one) and network byte counters.
 * Keys are flat numbers, so downsampling can keep min/max/mean of each.
 */
export class SystemMetrics {
  private prevCpu: { busy: number; total: number } | undefined;

  constructor(
    private readonly o: { dataDir: string; procRoot?: string; sysRoot?: string },
  ) {}

  sample(): Record<string, number> {
    const values: Record<string, number> = {};
    const proc = this.o.procRoot ?? '/proc';
    const cpu = this.cpu(proc);
    if (cpu !== undefined) values.cpuPct = cpu;
    Object.assign(values, this.memory(proc), this.disk(), this.temperature(), this.network(proc));
    const load = readNumberList(join(proc, 'loadavg'));
    if (load?.[0] !== undefined) values.load1 = load[0];
    return values;
  }

  private cpu(proc: string): number | undefined {
    const line = readText(join(proc, 'stat'))?.split('\n').find((l) => l.startsWith('cpu '));
    if (!line) return undefined;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const total = f.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
    const prev = this.prevCpu;
    this.prevCpu = { busy: total - idle, total };
    if (!prev || total <= prev.total) return undefined;
    return round(((total - idle - prev.busy) / (total - prev.total)) * 100);
  }

  private memory(proc: string): Record<string, number> {
    const text = readText(join(proc, 'meminfo'));
    if (!text) return {};
    const kb = (key: string): number | undefined => {
      const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text);
      return m ? Number(m[1]) * 1024 : undefined;
    };
    const total = kb('MemTotal');
    const available = kb('MemAvailable');
    if (total === undefined || available === undefined) return {};
    return { memTotalBytes: total, memUsedBytes: total - available, memUsedPct: round(((total - available) / total) * 100) };
  }

  private disk(): Record<string, number> {
    try {
      const s = statfsSync(this.o.dataDir);
      const total = s.blocks * s.bsize;
      const free = s.bavail * s.bsize;
      return { diskTotalBytes: total, diskFreeBytes: free, diskUsedPct: total > 0 ? round(((total - free) / total) * 100) : 0 };
    } catch {
      return {};
    }
  }

  private temperature(): Record<string, number> {
    const root = join(this.o.sysRoot ?? '/sys', 'class', 'thermal');
    let best: number | undefined;
    try {
      for (const zone of readdirSync(root)) {
        if (!zone.startsWith('thermal_zone')) continue;
        const milli = Number(readText(join(root, zone, 'temp'))?.trim());
        if (Number.isFinite(milli)) best = Math.max(best ?? -Infinity, milli / 1000);
      }
    } catch {
      // No sensor on this machine: no temperature in the sample.
    }
    return best === undefined ? {} : { temperatureC: round(best) };
  }

  private network(proc: string): Record<string, number> {
    const text = readText(join(proc, 'net', 'dev'));
    if (!text) return {};
    let rx = 0;
    let tx = 0;
    for (const line of text.split('\n').slice(2)) {
      const [name, rest] = line.split(':');
      if (!name || rest === undefined || name.trim() === 'lo') continue;
      const f = rest.trim().split(/\s+/).map(Number);
      rx += f[0] ?? 0;
      tx += f[8] ?? 0;
    }
    return { netRxBytes: rx, netTxBytes: tx };
  }
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readNumberList(path: string): number[] | undefined {
  return readText(path)?.trim().split(/\s+/).map(Number);
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
