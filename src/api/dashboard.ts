/**
 * The local dashboard: one static page. It reads the local API key from the URL fragment
 * (`/#key=...`, never sent to the server) or asks for it, keeps it in sessionStorage, and polls
 * the authenticated JSON routes.
 */
export function dashboardHtml(version: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Iotistic Agent</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px;display:flex;gap:16px;align-items:center}
header h1{font-size:16px;margin:0}#badge{padding:2px 10px;border-radius:10px;font-weight:600}
.online{background:#1f9d55;color:#fff}.degraded{background:#f0b429;color:#000}.offline{background:#d64545;color:#fff}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px;padding:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
h2{font-size:14px;margin:0 0 8px}table{border-collapse:collapse;width:100%}td{padding:2px 6px;border-bottom:1px solid #eee;vertical-align:top}
td:first-child{color:#667;white-space:nowrap}pre{white-space:pre-wrap;word-break:break-all;margin:0;font-size:12px}
#err{color:#d64545;padding:0 20px}#logsec{grid-column:1/-1}h3{font-size:13px;margin:10px 0 2px}#logs pre{background:#f5f6f8;padding:4px 6px;max-height:16em;overflow:auto}
#cfg{display:none;background:#d64545;color:#fff;padding:10px 20px;margin:0}#cfg ul{margin:4px 0 0;padding-left:20px}
</style></head>
<body><header><h1>Iotistic Agent</h1><span id="badge">…</span><span id="dev"></span><span style="margin-left:auto;opacity:.6">v${version}</span></header>
<div id="cfg" role="alert"></div>
<p id="err"></p>
<main>
<section><h2>Connection</h2><table id="conn"></table></section>
<section><h2>Channels</h2><table id="chan"></table></section>
<section><h2>Recent outages</h2><table id="out"></table></section>
<section><h2>Target state</h2><table id="state"></table></section>
<section><h2>Database</h2><table id="db"></table></section>
<section><h2>Outbox</h2><table id="queue"></table></section>
<section><h2>Jobs</h2><table id="jobs"></table></section>
<section><h2>Shadow</h2><table id="shadow"></table></section>
<section><h2>Loops</h2><table id="loops"></table></section>
<section id="logsec"><h2>Logs</h2><div id="logs"></div></section>
</main>
<script>
(function(){
  var m = location.hash.match(/key=([^&]+)/);
  if (m) { sessionStorage.setItem('iotisticKey', decodeURIComponent(m[1])); history.replaceState(null, '', location.pathname); }
  var key = sessionStorage.getItem('iotisticKey');
  if (!key) { key = prompt('Local API key (iotistic-agent status --show-key)') || ''; sessionStorage.setItem('iotisticKey', key); }
  function esc(v){ return String(v).replace(/[&<>"]/g, function(c){ return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]; }); }
  function ts(v){ return v ? new Date(v).toLocaleString() : '—'; }
  function degr(d){ if (!d) return 'normal'; var p = (d.features || []).filter(function(f){ return f.paused; }).map(function(f){ return f.name; }); return d.mode + (d.mode === 'degraded' && d.reason ? ': ' + d.reason : '') + (p.length ? '; paused: ' + p.join(', ') : ''); }
  function dur(ms){ if (ms == null) return '—'; var s = Math.round(ms/1000); return s < 120 ? s + ' s' : s < 7200 ? Math.round(s/60) + ' min' : Math.round(s/3600) + ' h'; }
  function link(l){ var b = l.budget, h = Object.keys(l.held).map(function(k){ return k + ' ' + l.held[k]; }); return (l.interface || 'no route') + (l.metered ? ' (metered)' : '') + ': ' + Math.round(b.usedBytes / 1024) + ' KiB' + (b.limitBytes > 0 ? ' of ' + Math.round(b.limitBytes / 1024) + ' KiB' : '') + ' this ' + b.period + (b.exhausted ? ' (spent)' : '') + (h.length ? '; held: ' + h.join(', ') : ''); }
  function rows(id, pairs){ document.getElementById(id).innerHTML = pairs.map(function(p){ return '<tr><td>' + esc(p[0]) + '</td><td>' + p[1] + '</td></tr>'; }).join(''); }
  function logLine(x){ return new Date(x.ts).toISOString() + ' ' + (x.stream === 'marker' ? '[dropped ' + x.dropped + ': ' + x.reason + ']' : x.stream) + ' ' + x.line; }
  function logs(l){ var all = (l && l.services) || []; return all.length === 0 ? '<p>no log lines yet</p>' : all.map(function(s){ var d = Object.keys(s.dropped).map(function(r){ return s.dropped[r] + ' ' + r; }); return '<h3>' + esc(s.service) + '</h3><small>' + esc(s.lines + ' lines' + (d.length ? ', dropped ' + d.join(', ') : '') + (s.backlogBytes ? ', ' + s.backlogBytes + ' bytes waiting' : '')) + '</small><pre>' + esc(s.last.map(logLine).join('\\n')) + '</pre>'; }).join(''); }
  function get(path){ return fetch(path, { headers: { authorization: 'Bearer ' + key } }).then(function(r){ if (r.status === 401) { sessionStorage.removeItem('iotisticKey'); throw new Error('wrong local API key: reload and enter it again'); } return r.status === 404 ? null : r.json(); }); }
  function tick(){
    Promise.all([get('/v2/connection'), get('/v2/state'), get('/v2/loops'), get('/v2/device'), get('/v2/queue'), get('/v2/jobs'), get('/v2/shadow'), get('/v2/logs/services')]).then(function(a){
      var c = a[0], s = a[1], loops = a[2], dev = a[3], q = a[4], jobs = a[5], sh = a[6];
      document.getElementById('logs').innerHTML = logs(a[7]);
      document.getElementById('err').textContent = '';
      var cf = s.config && s.config.fallback, cd = document.getElementById('cfg');
      cd.style.display = cf ? 'block' : 'none';
      cd.innerHTML = cf ? '<strong>Config fallback:</strong> ' + esc(cf.message) + '. Changes in the file are not in force.<ul>' + cf.issues.map(function(i){ return '<li>' + esc((i.path || '(document)') + ': expected ' + i.expected) + '</li>'; }).join('') + (cf.issueCount > cf.issues.length ? '<li>… ' + (cf.issueCount - cf.issues.length) + ' more (GET /v2/config)</li>' : '') + '</ul>' : '';
      var b = document.getElementById('badge'); b.textContent = c.status; b.className = c.status;
      document.getElementById('dev').textContent = dev.uuid;
      rows('conn', [['status', esc(c.status)], ['uptime', dur(c.uptime)], ['offline since', ts(c.offlineSince)], ['last poll', ts(c.lastPollSuccess)], ['last report', ts(c.lastReportSuccess)], ['poll failures', c.pollFailures], ['report failures', c.reportFailures], ['degradation', esc(degr(c.degradation))]].concat(c.link ? [['link', esc(link(c.link))]] : []));
      rows('chan', Object.keys(c.channels || {}).map(function(n){ var ch = c.channels[n]; return [n, esc(ch.status) + (ch.lastError ? '<br><small>' + esc(ch.lastError) + '</small>' : '')]; }).concat(c.mqtt ? [['mqtt session', (c.mqtt.connected ? 'connected' : 'not connected') + ', ' + c.mqtt.inflight + ' in flight, ' + c.mqtt.queued + ' waiting, ' + c.mqtt.reconnects + ' reconnects' + (c.mqtt.lastError ? '<br><small>' + esc(c.mqtt.lastError) + '</small>' : '')]] : []));
      rows('out', (c.outages || []).slice(0, 8).map(function(o){ return [ts(o.start), dur(o.durationMs) + ' — ' + esc(o.cause)]; }));
      var d = s.database, qr = d && d.quarantine;
      if (d) rows('db', [['integrity check', esc(d.integrity.state) + (d.integrity.detail && d.integrity.state !== 'ok' ? '<br><small>' + esc(d.integrity.detail) + '</small>' : '')]].concat(d.salvagePending ? [['CORRUPT', esc(d.salvagePending) + '<br><small>quarantined and salvaged at the next start</small>']] : []).concat(qr ? [['quarantined', esc(qr.at) + ' — ' + esc(qr.reason)], ['moved to', esc(qr.quarantinedTo)], ['salvaged', qr.salvageError ? esc(qr.salvageError) : qr.recovered + ' rows recovered, ' + qr.lost + ' lost' + (qr.unknownLoss.length ? ' (+ unknown in ' + esc(qr.unknownLoss.join(', ')) + ')' : '')]] : []));
      var t = s.target;
      rows('state', [['config', esc(s.config ? s.config.source : '—')], ['version', t ? t.version : '—'], ['source', t ? esc(t.source) : '—'], ['received', t ? ts(t.receivedAt) : '—'], ['rejected', s.lastRejection ? esc(s.lastRejection.message) : '—'], ['apps', t ? '<pre>' + esc(JSON.stringify(t.document.apps, null, 1)) + '</pre>' : '—']]);
      var dd = q.dataDisk;
      rows('queue', [['waiting', q.depth + ' (' + Math.round(q.bytes / 1024) + ' KiB), oldest ' + dur(q.oldestAgeMs)]].concat(dd ? [['disk', (dd.state === 'full' ? '<b>disk full</b>' : esc(dd.state)) + ', ' + (dd.freeBytes == null ? '?' : Math.round(dd.freeBytes / 1024) + ' KiB') + ' free in ' + esc(dd.dataDir)]] : []).concat(Object.keys(q.channels || {}).map(function(n){ var ch = q.channels[n]; return [n, ch.depth + ' waiting, ' + ch.delivered + ' delivered, ' + ch.dropped + ' dropped, ' + ch.parked + ' parked']; })).concat(q.ledger ? [['ledger', q.ledger.balanced ? 'balanced: every message taken is accounted for' : '<b>does not balance</b>: ' + Object.keys(q.ledger.channels).filter(function(n){ return q.ledger.channels[n].unaccounted !== 0; }).map(function(n){ return esc(n) + ' ' + q.ledger.channels[n].unaccounted + ' unaccounted'; }).join(', ')]] : []));
      rows('jobs', !jobs.enabled ? [['off', esc(jobs.reason)]] : [['running', jobs.running ? esc(jobs.running.type + ' ' + jobs.running.id) : 'nothing']].concat(jobs.recent.slice(0, 8).map(function(j){ return [esc(j.type), esc(j.status) + ' — ' + ts(j.finishedAt)]; })));
      rows('shadow', !sh ? [['off', 'features.shadow is false']] : [['reported', 'v' + sh.reportedVersion + '<pre>' + esc(JSON.stringify(sh.reported, null, 1)) + '</pre>'], ['desired', (sh.desiredVersion == null ? '—' : 'v' + sh.desiredVersion) + '<pre>' + esc(JSON.stringify(sh.desired, null, 1)) + '</pre>'], ['delta', '<pre>' + esc(JSON.stringify(sh.delta)) + '</pre>'], ['local overrides', sh.overrides ? '<pre>' + esc(JSON.stringify(sh.overrides)) + '</pre>' : 'none'], ['conflicts', sh.conflicts.length]]);
      rows('loops', loops.map(function(l){ return [l.name, esc(l.state) + (l.restarts ? ' (' + l.restarts + ' restarts)' : '')]; }));
    }).catch(function(e){ document.getElementById('err').textContent = e.message; });
  }
  tick(); setInterval(tick, 2000);
})();
</script></body></html>`;
}
