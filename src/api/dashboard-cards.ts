/**
 * The dashboard's cards: functions of the browser's script (ES5, no library) from a snapshot of
 * `GET /v2/dashboard/stream` to markup. Every value from the agent goes through `esc` (log lines,
 * errors, names are hostile input); numbers a test reads are in `data-value` of a `data-testid`.
 * Times are ISO (as the CLI prints them) with their age relative to the snapshot.
 */
export const CARDS_SCRIPT = String.raw`
function esc(v){ return String(v).replace(/[&<>"']/g, function(c){ return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]; }); }
function iso(ms){ return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z'); }
function dur(ms){ if (ms == null) return '—'; var s = Math.round(Math.abs(ms)/1000); return s < 120 ? s + ' s' : s < 7200 ? Math.round(s/60) + ' min' : s < 172800 ? Math.round(s/3600) + ' h' : Math.round(s/86400) + ' d'; }
function ago(ms, now){ var d = now - ms; return Math.abs(d) < 1500 ? 'now' : d > 0 ? dur(d) + ' ago' : 'in ' + dur(d); }
function when(ms, now){ return ms ? '<time datetime="' + iso(ms) + '">' + iso(ms) + ' · ' + ago(ms, now) + '</time>' : '—'; }
function pill(state){ return '<span class="pill ' + esc(state).replace(/[^a-z-]/g, '') + '">' + esc(state) + '</span>'; }
function tid(name, value, shown){ return '<span data-testid="' + esc(name) + '" data-value="' + esc(value) + '">' + (shown === undefined ? esc(value) : shown) + '</span>'; }
function empty(text){ return '<p class="empty">' + esc(text) + '</p>'; }
function kv(pairs){ return '<table>' + pairs.map(function(p){ return '<tr><td>' + esc(p[0]) + '</td><td>' + p[1] + '</td></tr>'; }).join('') + '</table>'; }
function grid(head, rows){ return '<div class="scroll"><table><tr>' + head.map(function(h){ return '<th>' + esc(h) + '</th>'; }).join('') + '</tr>' + rows.map(function(r){ return '<tr>' + r.map(function(c){ return '<td>' + c + '</td>'; }).join('') + '</tr>'; }).join('') + '</table></div>'; }
function keys(o){ return Object.keys(o || {}); }
function num(n){ return Number(n || 0).toLocaleString('en'); }

function logLine(x){ return new Date(x.ts).toISOString() + ' ' + (x.stream === 'marker' ? '[dropped ' + x.dropped + ': ' + x.reason + ']' : x.stream) + ' ' + x.line; }

/** Services: the workloads' current state joined with their log counts and last 5 lines (and the agent's own). */
function servicesCard(s){
  var now = s.at, apps = (s.state && s.state.current && s.state.current.apps) || {}, logs = {}, names = [];
  ((s.logs && s.logs.services) || []).forEach(function(l){ logs[l.service] = l; });
  keys(apps).forEach(function(a){ keys(apps[a].services).forEach(function(v){ names.push(a + '/' + v); }); });
  keys(logs).forEach(function(n){ if (names.indexOf(n) === -1) names.push(n); });
  if (names.length === 0) return empty('no services yet (no target applied) and no log lines yet');
  return names.map(function(n){
    var i = n.indexOf('/'), st = i > 0 && apps[n.slice(0, i)] ? apps[n.slice(0, i)].services[n.slice(i + 1)] : null, l = logs[n];
    var head = '<h3>' + esc(n) + (st ? ' ' + tid('service-state-' + n, st.status, pill(st.status)) : '') + '</h3>';
    var facts = st ? [['restarts', tid('service-restarts-' + n, st.restarts)]].concat(st.status === 'backoff' || st.nextRetryAt ? [['next retry', when(st.nextRetryAt, now)]] : []).concat(st.startedAt ? [['started', when(st.startedAt, now)]] : []).concat(st.exitCode != null || st.lastError ? [['last exit', (st.exitCode != null ? 'code ' + esc(st.exitCode) : '') + (st.lastError ? ' <small class="bad">' + esc(st.lastError) + '</small>' : '')]] : []).concat([[st.image ? 'image' : 'runtime', esc(st.image || st.runtime || '—')]]) : [];
    var d = l ? keys(l.dropped).map(function(r){ return l.dropped[r] + ' ' + r; }) : [];
    var lines = l ? '<small>' + esc(l.lines + ' lines' + (d.length ? ', dropped ' + d.join(', ') : '') + (l.backlogBytes ? ', ' + l.backlogBytes + ' bytes waiting' : '')) + '</small>' + (l.last.length ? '<pre>' + esc(l.last.map(logLine).join('\n')) + '</pre>' : empty('no log lines yet')) : empty('no log lines yet');
    return head + (facts.length ? kv(facts) : '') + lines;
  }).join('');
}

function lastSuccess(ch){ var t = 0; keys(ch.lastSuccess).forEach(function(k){ t = Math.max(t, ch.lastSuccess[k]); }); return t; }

/** A channel's error: current while it fails; once it succeeded again, "last error … (recovered at …)". */
function channelError(ch, now){
  if (!ch.lastError) return '';
  if (ch.status === 'online' || ch.consecutiveFailures === 0) { var r = lastSuccess(ch); return '<br><small class="muted">last error: ' + esc(ch.lastError) + (r ? ' (recovered at ' + iso(r) + ')' : ' (recovered)') + '</small>'; }
  return '<br><small class="bad">' + esc(ch.lastError) + '</small>';
}

function degr(d){ if (!d) return 'normal'; var p = (d.features || []).filter(function(f){ return f.paused; }).map(function(f){ return f.name; }); return d.mode + (d.mode === 'degraded' && d.reason ? ': ' + d.reason : '') + (p.length ? '; paused: ' + p.join(', ') : ''); }
function link(l){ var b = l.budget, h = keys(l.held).map(function(k){ return k + ' ' + l.held[k]; }); return (l.interface || 'no route') + (l.metered ? ' (metered)' : '') + ': ' + Math.round(b.usedBytes / 1024) + ' KiB' + (b.limitBytes > 0 ? ' of ' + Math.round(b.limitBytes / 1024) + ' KiB' : '') + ' this ' + b.period + (b.exhausted ? ' (spent)' : '') + (h.length ? '; held: ' + h.join(', ') : ''); }

function connectionCard(s){
  var c = s.connection || {}, now = s.at;
  if (!s.hasCloud) return kv([['mode', tid('connection-status', c.status, 'local mode: no cloud.apiUrl, nothing is sent')], ['uptime', esc(dur(c.uptime))]]);
  var off = c.offlineSince ? when(c.offlineSince, now) + ' <small>(ongoing, ' + esc(dur(now - c.offlineSince)) + ' so far)</small>' : '—';
  var rows = [['status', tid('connection-status', c.status, pill(c.status))], ['offline since', off], ['uptime', esc(dur(c.uptime))], ['last poll', when(c.lastPollSuccess, now)], ['last report', when(c.lastReportSuccess, now)], ['failures', esc(num(c.pollFailures) + ' poll, ' + num(c.reportFailures) + ' report')], ['degradation', esc(degr(c.degradation))]];
  if (c.link) rows.push(['link', esc(link(c.link))]);
  keys(c.channels).forEach(function(n){ var ch = c.channels[n]; rows.push(['channel ' + n, tid('channel-status-' + n, ch.status, pill(ch.status)) + channelError(ch, now)]); });
  var m = c.mqtt;
  if (m) rows.push(['mqtt session', esc((m.connected ? 'connected' : 'not connected') + ', ' + m.inflight + ' in flight, ' + m.queued + ' waiting, ' + m.reconnects + ' reconnects') + (m.lastError ? '<br><small class="' + (m.connected ? 'muted' : 'bad') + '">' + (m.connected ? 'last error: ' : '') + esc(m.lastError) + '</small>' : '')]);
  return kv(rows);
}

/** The outages of the last 24 h as bars on a timeline, then each one (ongoing ones say so). */
function outagesCard(s){
  var os = (s.connection && s.connection.outages) || [], now = s.at, from = now - 86400000;
  if (os.length === 0) return empty(s.hasCloud ? 'no outages recorded' : 'no cloud: no outages to record');
  var bars = os.filter(function(o){ return (o.end || now) > from; }).map(function(o){ var x = Math.max(0, (o.start - from) / 86400000 * 600), w = Math.max(1.5, ((o.end || now) - Math.max(o.start, from)) / 86400000 * 600); return '<rect x="' + x.toFixed(1) + '" y="4" width="' + w.toFixed(1) + '" height="16" fill="' + (o.end ? '#d64545' : '#b42318') + '"><title>' + esc(iso(o.start) + ' ' + o.cause) + '</title></rect>'; }).join('');
  var svg = '<svg viewBox="0 0 600 38" role="img" aria-label="outages over the last 24 hours"><rect x="0" y="4" width="600" height="16" fill="#d1fadf"/>' + bars + '<text x="0" y="34" font-size="11" fill="#667">−24 h</text><text x="300" y="34" font-size="11" fill="#667" text-anchor="middle">−12 h</text><text x="600" y="34" font-size="11" fill="#667" text-anchor="end">now</text></svg>';
  var list = os.slice(0, 8).map(function(o){ return '<li>' + when(o.start, now) + ' — ' + (o.end ? esc(dur(o.durationMs)) : '<b class="bad">ongoing, ' + esc(dur(now - o.start)) + ' so far</b>') + ' <small>' + esc((o.channel ? o.channel + ': ' : '') + o.cause) + '</small></li>'; }).join('');
  return svg + '<ul class="plain">' + list + '</ul>';
}

function eventsCard(s){
  var ev = s.events || [];
  return ev.length === 0 ? empty('no events yet (changes show here as they happen)') : '<ul class="plain">' + ev.slice(0, 15).map(function(e){ return '<li>' + when(e.at, s.at) + ' <span class="pill">' + esc(e.kind) + '</span> ' + esc(e.text) + '</li>'; }).join('') + '</ul>';
}

function jobsCard(s){
  var j = s.jobs || {};
  if (!j.enabled) return empty('jobs are off: ' + (j.reason || 'not enabled'));
  var head = kv([['running', j.running ? esc(j.running.type + ' ' + j.running.id) : 'nothing'], ['last poll', when(j.lastPollAt, s.at)]].concat(j.lastPollError ? [['poll error', '<small class="bad">' + esc(j.lastPollError) + '</small>']] : []));
  var recent = j.recent || [];
  return head + (recent.length === 0 ? empty('no jobs yet') : grid(['job', 'status', 'finished'], recent.slice(0, 8).map(function(x){ return [esc(x.type) + ' <small>' + esc(x.id) + '</small>', pill(x.status), when(x.finishedAt, s.at)]; })));
}

function compact(v){ return '<pre>' + esc(JSON.stringify(v, null, 1)) + '</pre>'; }

function shadowCard(s){
  var sh = s.shadow;
  if (!sh) return empty('the shadow is off (features.shadow is false)');
  var delta = keys(sh.delta);
  return kv([['reported', 'v' + esc(sh.reportedVersion) + compact(sh.reported)], ['desired', (sh.desiredVersion == null ? 'none yet' : 'v' + esc(sh.desiredVersion)) + (sh.desired && keys(sh.desired).length ? compact(sh.desired) : '')], ['delta', delta.length ? compact(sh.delta) : 'none: in sync'], ['local overrides', sh.overrides && keys(sh.overrides).length ? compact(sh.overrides) : 'none'], ['conflicts', esc(sh.conflicts ? sh.conflicts.length : 0)]]);
}

/** The target's apps as a list (app, service, what it runs), never a JSON dump. */
function targetCard(s){
  var st = s.state || {}, t = st.target;
  var rows = [['mode', esc(st.mode || (s.hasCloud ? 'cloud' : 'local'))], ['config', esc(st.config ? st.config.source : '—')]];
  if (st.lastRejection) rows.push(['rejected', '<small class="bad">' + esc(st.lastRejection.message) + '</small>']);
  if (!t) return kv(rows) + empty('no target yet');
  rows.push(['version', esc(t.version)], ['source', esc(t.source)], ['received', when(t.receivedAt, s.at)]);
  var apps = (t.document && t.document.apps) || {}, items = [];
  keys(apps).forEach(function(a){ keys(apps[a].services).forEach(function(v){ var d = apps[a].services[v] || {}; items.push('<li><b>' + esc(a + '/' + v) + '</b> <small>' + esc(d.image || (Array.isArray(d.command) ? d.command.join(' ') : d.command) || '') + '</small></li>'); }); });
  return kv(rows) + (items.length ? '<ul class="plain">' + items.join('') + '</ul>' : empty('the target has no services'));
}

function dbCard(s){
  var d = s.state && s.state.database, rows = [];
  if (d) {
    rows.push(['integrity', esc(d.integrity.state) + (d.integrity.detail && d.integrity.state !== 'ok' ? '<br><small>' + esc(d.integrity.detail) + '</small>' : '')]);
    if (d.salvagePending) rows.push(['CORRUPT', esc(d.salvagePending) + '<br><small>quarantined and salvaged at the next start</small>']);
    var q = d.quarantine;
    if (q) rows.push(['quarantined', when(Date.parse(q.at), s.at) + ' — ' + esc(q.reason)], ['salvaged', q.salvageError ? esc(q.salvageError) : esc(q.recovered + ' rows recovered, ' + q.lost + ' lost')]);
  }
  (s.loops || []).forEach(function(l){ rows.push(['loop ' + l.name, pill(l.state) + (l.restarts ? ' <small>' + esc(l.restarts) + ' restarts</small>' : '') + (l.lastError ? '<br><small class="bad">' + esc(l.lastError) + '</small>' : '')]); });
  return rows.length ? kv(rows) : empty('no database facts yet');
}
`;
