import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ActionError, DeviceActions, type DeviceActionsOptions } from '../../src/actions/device-actions.js';
import { powerCommand } from '../../src/actions/power.js';
import { LOCAL_ONLY_CONFIG_KEYS } from '../../src/config/schema.js';
import { seededRandom } from '../../src/util/random.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { ProcessRuntime } from '../../src/workloads/runtimes/process.js';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';
import { RecordingPowerControl } from '../helpers/recording-power.js';
import { tempDirs } from '../helpers/tmp.js';

const tmp = tempDirs();
const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

function target(doc: Record<string, unknown>): TargetState {
  const v = validateTarget(doc);
  if (!v.ok) throw new Error(v.message);
  return v.target;
}

function rig(config: Partial<DeviceActionsOptions['config']> = {}, process?: ProcessRuntime) {
  const clock = new FakeClock();
  const docker = new MemoryRuntime('docker', clock);
  docker.pullBehaviour = () => Promise.resolve();
  const proc = process ?? new MemoryRuntime('process', clock);
  const source = new MemoryTargetSource(target({ version: 1, apps: { sensors: { services: { a: { runtime: 'process', command: ['/bin/sleep', '300'] }, b: { runtime: 'process', command: ['/bin/sleep', '301'] } } } } }));
  const reconciler = new Reconciler({ source, docker, process: proc, clock, random: seededRandom(3), logger: silentLogger(), reconciliationIntervalMs: 30_000 });
  const ctl = new AbortController();
  const loop = reconciler.run(ctl.signal);
  stops.push(async () => {
    ctl.abort();
    await loop;
    await reconciler.close();
  });
  const power = new RecordingPowerControl();
  const events: Record<string, unknown>[] = [];
  const order: string[] = [];
  const actions = new DeviceActions({
    config: { allowReboot: false, allowShutdown: false, ...config },
    reconciler,
    source,
    runtimes: [proc, docker],
    record: (type, data) => {
      events.push({ type, ...data });
      order.push('event');
      return Promise.resolve();
    },
    power: (a) => {
      order.push('power');
      void power.run(a);
    },
    logger: silentLogger(),
  });
  return { actions, power, events, order, reconciler, proc };
}

async function settled(reconciler: Reconciler): Promise<void> {
  for (let i = 0; i < 50 && reconciler.currentState().status !== 'applied'; i++) {
    reconciler.reconcileNow();
    await new Promise((r) => setTimeout(r, 10));
  }
  expect(reconciler.currentState().status).toBe('applied');
}

describe('device actions: reboot and shutdown', () => {
  it.each(['reboot', 'shutdown'] as const)('%s is refused unless the device allows it, naming the key; nothing is called', async (action) => {
    const r = rig();
    const err = await r.actions.power(action, { by: 'local-api' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ActionError);
    expect((err as ActionError).code).toBe('ACTION_NOT_ALLOWED');
    expect((err as Error).message).toContain(action === 'reboot' ? 'actions.allowReboot' : 'actions.allowShutdown');
    expect(r.power.calls).toEqual([]);
    expect(r.events).toEqual([expect.objectContaining({ type: 'device-action', action, by: 'local-api', outcome: 'refused' })]);
  });

  it('allowed: the event is durable first, the power action runs once when the caller says go', async () => {
    const r = rig({ allowReboot: true });
    const req = await r.actions.power('reboot', { by: 'job', jobId: 'j1' });
    expect(req.requested).toBe('reboot');
    expect(r.power.calls).toEqual([]);
    req.go();
    req.go();
    expect(r.order).toEqual(['event', 'power']);
    expect(r.power.calls).toEqual(['reboot']);
    expect(r.events[0]).toMatchObject({ action: 'reboot', by: 'job', jobId: 'j1', outcome: 'done' });
  });

  it('the actions section is local only: a cloud config update cannot allow a reboot', () => {
    expect(LOCAL_ONLY_CONFIG_KEYS).toContain('actions');
  });

  it('the command: the configured one, else systemd where it runs, else /sbin', () => {
    const none = { allowReboot: true, allowShutdown: true };
    expect(powerCommand('reboot', none, true)).toEqual(['/usr/bin/systemctl', 'reboot']);
    expect(powerCommand('shutdown', none, true)).toEqual(['/usr/bin/systemctl', 'poweroff']);
    expect(powerCommand('reboot', none, false)).toEqual(['/sbin/reboot']);
    expect(powerCommand('shutdown', none, false)).toEqual(['/sbin/poweroff']);
    expect(powerCommand('reboot', { ...none, rebootCommand: ['/opt/x/reboot', '--now'] }, true)).toEqual(['/opt/x/reboot', '--now']);
  });
});

describe('device actions: restart and purge', () => {
  it('restarts every service of an app; an unknown app names the apps there are', async () => {
    const r = rig();
    await settled(r.reconciler);
    const out = await r.actions.restartApp('sensors', { by: 'local-api' });
    expect(out.services).toEqual({ a: { instances: 1 }, b: { instances: 1 } });
    const err = await r.actions.restartApp('nope', { by: 'local-api' }).catch((e: unknown) => e);
    expect((err as ActionError).code).toBe('UNKNOWN_APP');
    expect((err as Error).message).toContain('apps: sensors');
    expect(r.events.map((e) => e.outcome)).toEqual(['done', 'refused']);
  });

  it('purge needs the app name typed again; with it the data goes and the services come back', async () => {
    const dir = tmp.make();
    const clock = new FakeClock();
    const proc = new ProcessRuntime({ dataDir: dir, clock, logger: silentLogger(), stopTimeoutMs: 2_000 });
    const r = rig({}, proc);
    await settled(r.reconciler);
    const work = join(dir, 'apps', 'sensors', 'a');
    mkdirSync(join(work, 'db'), { recursive: true });
    writeFileSync(join(work, 'db', 'data.bin'), 'precious');

    for (const confirm of [undefined, 'Sensors', 'other']) {
      const err = await r.actions.purgeApp('sensors', confirm, { by: 'local-api' }).catch((e: unknown) => e);
      expect((err as ActionError).code).toBe('ACTION_BAD_CONFIRM');
      expect((err as Error).message).toMatch(/^confirm: expected the app's name "sensors" typed again/);
    }
    expect(existsSync(join(work, 'db', 'data.bin'))).toBe(true);

    const out = await r.actions.purgeApp('sensors', 'sensors', { by: 'local-api' });
    expect(out.instances).toBe(2);
    expect(out.removed).toContain(join(work, 'db'));
    expect(existsSync(join(work, 'db'))).toBe(false);
    // The log stays; the services are created again.
    expect(existsSync(join(work, 'output.log'))).toBe(true);
    const running = async (): Promise<number> => (await proc.list()).filter((i) => i.state === 'running').length;
    for (let i = 0; i < 500 && (await running()) < 2; i++) {
      r.reconciler.reconcileNow();
      await new Promise((res) => setTimeout(res, 10));
    }
    expect(await running()).toBe(2);
  });
});
