import { CARDS_SCRIPT } from './dashboard-cards.js';
import { PAGE_SCRIPT } from './dashboard-script.js';

/**
 * The local dashboard: one static page, every asset inline (no CDN, nothing fetched but the API).
 * It asks for the local API key once (a form; or `/#key=...` in the URL, never sent to the server),
 * keeps it in the tab's sessionStorage, trades it for a single-use stream token and renders each
 * snapshot of `GET /v2/dashboard/stream`. Everything from the agent is escaped before it is markup.
 */

const STYLE = `
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center}
header h1{font-size:16px;margin:0}#badge{padding:2px 10px;border-radius:10px;font-weight:600}
.online{background:#1f9d55;color:#fff}.degraded{background:#f0b429;color:#000}.offline{background:#d64545;color:#fff}.local{background:#3b6fd6;color:#fff}
#dev{font-family:ui-monospace,monospace;font-size:12px;opacity:.8;overflow-wrap:anywhere}#ver{margin-left:auto;opacity:.6}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px;padding:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002;min-width:0}
.wide{grid-column:1/-1}
h2{font-size:14px;margin:0 0 8px}h3{font-size:13px;margin:12px 0 4px}
table{border-collapse:collapse;width:100%}td,th{padding:3px 6px;border-bottom:1px solid #eee;vertical-align:top;text-align:left}
th{font-weight:600;color:#667;font-size:12px}td:first-child{color:#667}
.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0;font-size:12px;background:#f5f6f8;padding:4px 6px;max-height:12em;overflow:auto}
time,small{color:#556}.bad{color:#b42318}.muted{color:#889}.empty{color:#889;font-style:italic;margin:4px 0}
.pill{display:inline-block;padding:0 8px;border-radius:8px;font-size:12px;font-weight:600;background:#e4e7ec}
.pill.running,.pill.online,.pill.succeeded{background:#d1fadf;color:#05603a}.pill.backoff,.pill.degraded,.pill.restarting{background:#fef0c7;color:#93370d}
.pill.exited,.pill.failed,.pill.offline,.pill.dead{background:#fee4e2;color:#b42318}
svg{display:block;width:100%;height:auto}svg.chart{max-width:720px}.legend span{margin-right:12px;font-size:12px}
#err{color:#b42318;padding:0 16px;margin:8px 0 0}
#cfg{display:none;background:#d64545;color:#fff;padding:10px 16px;margin:0}#cfg ul{margin:4px 0 0;padding-left:20px}
#keyform{max-width:420px;margin:32px auto;background:#fff;padding:16px 20px;border-radius:8px;box-shadow:0 1px 2px #0002}
#keyform label{display:block;font-weight:600;margin-bottom:6px}#keyform input{width:100%;font:inherit;padding:6px 8px;margin-bottom:8px}
#keyform button{font:inherit;padding:6px 16px}#keyerr{color:#b42318;margin:8px 0 0}
progress{width:70px;vertical-align:middle}.scroll{overflow-x:auto}
ul.plain{list-style:none;padding:0;margin:0}ul.plain li{padding:2px 0;border-bottom:1px solid #eee;overflow-wrap:anywhere}
@media (max-width:700px){main{grid-template-columns:1fr;padding:8px;gap:8px}section{padding:10px 12px}#ver{margin-left:0}}
`;

const BODY = `
<form id="keyform" hidden>
<label for="keyinput">Local API key</label>
<input id="keyinput" name="key" type="password" autocomplete="current-password" required>
<button type="submit">Open the dashboard</button>
<p><small>Print it on the device with <code>iotistic-agent status --show-key</code>. It is kept in this tab only.</small></p>
<p id="keyerr" role="alert"></p>
</form>
<div id="cfg" role="alert"></div>
<p id="err" role="status"></p>
<main id="cards" hidden>
<section class="wide"><h2>Services</h2><div id="services"></div></section>
<section><h2>Connection</h2><div id="conn"></div></section>
<section><h2>Outages</h2><div id="outages"></div></section>
<section class="wide"><h2>Outbox</h2><div id="queue"></div></section>
<section><h2>Loss ledger</h2><div id="ledger"></div></section>
<section><h2>Recent events</h2><div id="events"></div></section>
<section><h2>Jobs</h2><div id="jobs"></div></section>
<section><h2>Shadow</h2><div id="shadow"></div></section>
<section><h2>Target state</h2><div id="state"></div></section>
<section><h2>Database and loops</h2><div id="db"></div></section>
</main>`;

export function dashboardHtml(version: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Iotistic Agent</title>
<style>${STYLE}</style></head>
<body><header><h1>Iotistic Agent</h1><span id="badge" data-testid="badge">…</span><span id="dev"></span><span id="ver">v${version.replace(/[^0-9A-Za-z.+-]/g, '')}</span></header>
${BODY}
<script>
(function(){
${CARDS_SCRIPT}
${PAGE_SCRIPT}
})();
</script></body></html>`;
}
