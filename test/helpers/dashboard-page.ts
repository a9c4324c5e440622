import { runInNewContext } from 'node:vm';

/**
 * The dashboard's own script, run in a VM against the real API (its token route and stream), with a
 * stand-in for the browser's document and EventSource; returns the elements it wrote. The browser
 * test (test/integration/dashboard-browser.test.ts) runs it in chromium.
 */

export interface Element {
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
export async function runDashboardPage(url: string, key: string, closers: (() => void)[], hash = `#key=${key}`): Promise<Map<string, Element>> {
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
    location: { hash, pathname: '/' },
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
  while ((elements.get('services')?.innerHTML ?? '') === '' && (elements.get('err')?.textContent ?? '') === '' && (elements.get('keyerr')?.textContent ?? '') === '') {
    if (Date.now() > deadline) throw new Error('the page rendered nothing');
    await new Promise((r) => setTimeout(r, 20));
  }
  return elements;
}

