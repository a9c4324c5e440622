import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
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

interface Element {
  innerHTML: string;
  textContent: string;
  className: string;
  hidden: boolean;
  value: string;
  style: Record<string, string>;
  attributes: Record<string, string>;
  setAttribute(name: string, value: string): void;
  addEventListener(): void;
  focus(): void;
}

/** The browser's EventSource over fetch, for the page's script in the VM: `data:` events to `onmessage`. */
function eventSourceOver(url: string, opened: { close(): void }[]) {
  return class {
    onmessage: ((e: { data: string }) => void) | null = null;
    onerror: (() => void) | null = null;
    private readonly abort = new AbortController();
    constructor(path: string) {
      opened.push(this);
      void fetch(`${url}${path}`, { signal: this.abort.signal })
        .then(async (res) => {
          let buf = '';
          const dec = new TextDecoder();
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            buf += dec.decode(chunk, { stream: true });
            for (let i = buf.indexOf('\n\n'); i !== -1; i = buf.indexOf('\n\n')) {
              const ev = buf.slice(0, i);
              buf = buf.slice(i + 2);
              if (ev.startsWith('data: ')) this.onmessage?.({ data: ev.slice(6) });
            }
          }
        })
        .catch(() => undefined);
    }
    close(): void {
      this.abort.abort();
    }
  };
}

/** Loads the page from the API and runs its script with `document`, `fetch` and `EventSource` bound to the API; returns the elements it wrote. */
async function runPage(url: string): Promise<Map<string, Element>> {
  const html = await (await fetch(`${url}/`)).text();
  const script = /<script>([\s\S]*)<\/script>/.exec(html)?.[1];
  if (!script) throw new Error('no script in the page');
  const elements = new Map<string, Element>();
  const document = {
    getElementById: (id: string) => {
      let e = elements.get(id);
      if (!e) {
        const el: Element = { innerHTML: '', textContent: '', className: '', hidden: false, value: '', style: {}, attributes: {}, setAttribute: (n, v) => void (el.attributes[n] = v), addEventListener: () => undefined, focus: () => undefined };
        elements.set(id, (e = el));
      }
      return e;
    },
  };
  const session = new Map<string, string>();
  const opened: { close(): void }[] = [];
  closers.push(() => opened.forEach((o) => o.close()));
  runInNewContext(script, {
    document,
    location: { hash: `#key=${KEY}`, pathname: '/' },
    history: { replaceState: () => undefined },
    sessionStorage: { getItem: (k: string) => session.get(k) ?? null, setItem: (k: string, v: string) => session.set(k, v), removeItem: (k: string) => session.delete(k) },
    setTimeout: () => 0,
    clearTimeout: () => undefined,
    fetch: (path: string, init: RequestInit) => fetch(`${url}${path}`, init),
    EventSource: eventSourceOver(url, opened),
    encodeURIComponent,
    decodeURIComponent,
    Promise,
    Date,
    JSON,
  });
  const deadline = Date.now() + 5_000;
  while ((elements.get('services')?.innerHTML ?? '') === '' && (elements.get('err')?.textContent ?? '') === '') {
    if (Date.now() > deadline) throw new Error('the page rendered nothing');
    await new Promise((r) => setTimeout(r, 20));
  }
  return elements;
}

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

    const page = await runPage(url);
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
    expect((await runPage(url)).get('services')?.innerHTML).toBe('<p class="empty">no services yet (no target applied) and no log lines yet</p>');
  });
});
