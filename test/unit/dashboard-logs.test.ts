import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startApi } from '../../src/api/server.js';
import { LogEvents } from '../../src/logs/collector.js';
import { LogStore } from '../../src/logs/log-store.js';
import { fakeApiView } from '../helpers/api-view.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { chunkCommit } from '../helpers/log-chunks.js';
import { tempDirs } from '../helpers/tmp.js';
import { runDashboardPage } from '../helpers/dashboard-page.js';

/**
 * The dashboard's Logs section: the page's own script, run in a VM against the real API (a real
 * LogStore behind it), with a stand-in for the browser's document. Log lines are hostile input.
 */

const KEY = 'dash-key-0123456789abcdef';
const dirs = tempDirs();
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  dirs.cleanup();
});

describe('dashboard Services card (logs)', () => {
  it('shows per service its counts and last lines, every line as text', async () => {
    const clock = new FakeClock(Date.UTC(2026, 0, 2, 3, 4, 5));
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    closers.push(() => store.close());
    const tail = new LogStore(store.db, 100);
    const hostile = ['<script>alert(1)</script>', '<img src=x onerror="alert(2)">', '</pre><b>bold</b> & more'];
    tail.commit(chunkCommit('edge/web', 3, hostile.map((line, seq) => ({ service: 'edge/web', seq, ts: clock.now(), stream: 'stdout' as const, line }))));
    tail.commit(chunkCommit('agent', 1, [{ service: 'agent', seq: 0, ts: clock.now(), stream: 'marker', line: '7 lines dropped', dropped: 7, reason: 'lines-rate' }]));
    const stats = { 'edge/web': { lines: 3, dropped: { 'bytes-rate': 2 }, backlogBytes: 0 }, '<i>x</i>/y': { lines: 0, dropped: {}, backlogBytes: 10 } };
    const view = fakeApiView({
      logs: () => ({ tail, events: new LogEvents(), serviceStats: () => stats, clock }),
      // A database never quarantined: the page once took its `quarantine: null` for the outbox and stopped there.
      state: () => ({ target: null, database: { integrity: { state: 'ok' }, salvagePending: null, quarantine: null } }),
    });
    const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: true, view });
    closers.push(() => app.close());

    const page = await runDashboardPage(url, KEY, closers);
    expect(page.get('err')?.textContent).toBe('');
    expect(page.get('queue')?.innerHTML).toContain('waiting');
    const html = page.get('services')!.innerHTML;
    expect(html).toContain('<h3>edge/web</h3><small>3 lines, dropped 2 bytes-rate</small>');
    expect(html).toContain('2026-01-02T03:04:05.000Z stdout &lt;script&gt;alert(1)&lt;/script&gt;\n');
    expect(html).toContain('stdout &lt;img src=x onerror=&quot;alert(2)&quot;&gt;');
    expect(html).toContain('stdout &lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt; &amp; more</pre>');
    expect(html).toContain('<h3>agent</h3><small>0 lines</small><pre>2026-01-02T03:04:05.000Z [dropped 7: lines-rate] 7 lines dropped</pre>');
    expect(html).toContain('<h3>&lt;i&gt;x&lt;/i&gt;/y</h3><small>0 lines, 10 bytes waiting</small><p class="empty">no log lines yet</p>');
    // No markup but the page's own: every tag in the section is one it writes.
    expect(html.match(/<[a-z/][^>]*>/g)?.filter((t) => !/^<\/?(h3|small|pre|p)>$/.test(t) && t !== '<p class="empty">')).toEqual([]);
  });

  it('says so when there are no lines yet', async () => {
    const { app, url } = await startApi({ host: '127.0.0.1', port: 0, key: KEY, logger: silentLogger(), dashboard: true, view: fakeApiView() });
    closers.push(() => app.close());
    expect((await runDashboardPage(url, KEY, closers)).get('services')?.innerHTML).toBe('<p class="empty">no services yet (no target applied) and no log lines yet</p>');
  });
});
