import { afterEach, describe, expect, it } from 'vitest';
import { startApi, type ApiView } from '../../src/api/server.js';
import { fakeApiView } from '../helpers/api-view.js';
import { runDashboardPage } from '../helpers/dashboard-page.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

/** The dashboard's cards from the stream, as a user reads them: the page's script against the real API. */

const KEY = 'page-key-0123456789abcdef';
const NOW = Date.UTC(2026, 11, 6, 8, 10, 0);
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

async function page(over: Partial<ApiView>, hash?: string) {
  const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: true, view: fakeApiView({ clock: new FakeClock(NOW), ...over }) });
  closers.push(() => app.close());
  return runDashboardPage(url, KEY, closers, hash);
}

const html = (p: Map<string, { innerHTML: string }>, id: string): string => p.get(id)?.innerHTML ?? '';

describe('dashboard page', () => {
  it('shows a recovered channel as recovered, an ongoing outage as ongoing, ISO times with ages, everything escaped', async () => {
    const p = await page({
      hasCloud: true,
      connection: () => ({
        status: 'degraded',
        uptime: 3_600_000,
        offlineSince: null,
        lastPollSuccess: NOW - 180_000,
        lastReportSuccess: 0,
        pollFailures: 2,
        reportFailures: 0,
        channels: {
          api: { status: 'online', consecutiveFailures: 0, lastSuccess: { poll: NOW - 60_000 }, lastError: '<b>refused</b>' },
          mqtt: { status: 'offline', consecutiveFailures: 3, lastSuccess: {}, lastError: 'timeout <i>x</i>' },
        },
        outages: [{ channel: 'mqtt', start: NOW - 300_000, end: null, durationMs: null, cause: 'connect: <script>alert(1)</script>' }],
      }),
      queue: () => ({ depth: 5, bytes: 2048, oldestAgeMs: 1_000, channels: { telemetry: { depth: 5, delivered: 7, dropped: 0, parked: 0, oldestAgeMs: 1_000 } }, ledger: { balanced: true, channels: {} } }),
      jobs: () => ({ enabled: true, running: null, recent: [], lastPollAt: null }),
    });
    expect(p.get('badge')).toMatchObject({ textContent: 'degraded', className: 'degraded' });
    const conn = html(p, 'conn');
    expect(conn).toContain('<small class="muted">last error: &lt;b&gt;refused&lt;/b&gt; (recovered at 2026-12-06T08:09:00Z)</small>');
    expect(conn).toContain('<small class="bad">timeout &lt;i&gt;x&lt;/i&gt;</small>');
    expect(conn).toContain('<time datetime="2026-12-06T08:07:00Z">2026-12-06T08:07:00Z · 3 min ago</time>');
    expect(html(p, 'outages')).toContain('ongoing, 5 min so far');
    expect(html(p, 'outages')).toContain('connect: &lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html(p, 'queue')).toContain('data-testid="queue-depth-telemetry" data-value="5"');
    expect(html(p, 'jobs')).toContain('no jobs yet');
    expect(html(p, 'events')).toContain('no events yet');
    expect(html(p, 'ledger')).toContain('nothing accepted yet');
    for (const id of ['conn', 'outages', 'queue', 'services', 'events']) expect(html(p, id)).not.toMatch(/<(script|b>refused|i>x)/);
  });

  it('says local mode when there is no cloud, not online', async () => {
    const p = await page({ hasCloud: false, connection: () => ({ status: 'online', uptime: 5_000, channels: {}, outages: [] }) });
    expect(p.get('badge')).toMatchObject({ textContent: 'local mode', className: 'local' });
    expect(html(p, 'conn')).toContain('local mode: no cloud.apiUrl');
    expect(html(p, 'outages')).toContain('no cloud: no outages to record');
  });

  it('asks for the key again in the form when the key is refused', async () => {
    const p = await page({}, '#key=wrong-key');
    expect(p.get('keyerr')?.textContent).toBe('That key was refused: enter the local API key again.');
    expect(p.get('keyform')?.hidden).toBe(false);
    expect(html(p, 'services')).toBe('');
  });
});
