/**
 * The dashboard's script past the cards (dashboard-cards.ts): the outbox card with its depth chart
 * (inline SVG from the stream's hour of samples) and, while a channel drains, its progress and ETA;
 * the loss ledger; then the page itself: the key form, the stream token, the EventSource, a
 * reconnect after a loss, and rendering each snapshot.
 */
export const PAGE_SCRIPT = String.raw`
var COLORS = ['#3b6fd6', '#d64545', '#1f9d55', '#b54708', '#7a5af8', '#0e9384'];
var hist = [];

function depthsOf(s){ var q = (s.queue && s.queue.channels) || {}, d = {}; keys(q).forEach(function(n){ d[n] = q[n].depth; }); return d; }

/** Progress and ETA of a channel's drain: the rate over the last 30 s of snapshots, the peak since it was last empty. */
function drain(s, n, depth){
  if (!depth) return '<small class="muted">empty</small>';
  var old = null, peak = depth, samples = ((s.depth && s.depth.samples) || []).concat(hist);
  samples.forEach(function(x){ var v = x.depths ? x.depths[n] : x.d[n]; if (v === 0) peak = depth; else if (v > peak) peak = v; });
  for (var i = 0; i < hist.length; i++) if (hist[i].t >= s.at - 30000 && hist[i].d[n] != null) { old = hist[i]; break; }
  var rate = old && s.at > old.t ? (old.d[n] - depth) / ((s.at - old.t) / 1000) : 0;
  if (rate <= 0) return '<small class="' + (rate < 0 ? 'bad' : 'muted') + '">' + (rate < 0 ? 'growing' : 'not draining') + '</small>';
  var done = peak > 0 ? Math.round((peak - depth) / peak * 100) : 0;
  return '<progress max="' + peak + '" value="' + (peak - depth) + '"></progress> ' + tid('drain-progress-' + n, done, done + '%') + ' <small>ETA ' + esc(dur(depth / rate * 1000)) + ' (' + esc(rate.toFixed(1)) + '/s)</small>';
}

/** The depth of each channel over the last hour, one line per channel. */
function depthChart(s, chans){
  var pts = ((s.depth && s.depth.samples) || []).map(function(x){ return { t: x.t, d: x.depths }; }).concat([{ t: s.at, d: depthsOf(s) }]);
  if (pts.length < 2) return empty('depth chart: collecting samples (one per ' + dur((s.depth && s.depth.everyMs) || 10000) + ')');
  var from = s.at - 3600000, max = 1;
  pts.forEach(function(p){ chans.forEach(function(n){ max = Math.max(max, p.d[n] || 0); }); });
  var lines = chans.map(function(n, i){
    var xy = pts.filter(function(p){ return p.t >= from; }).map(function(p){ return ((p.t - from) / 3600000 * 580 + 10).toFixed(1) + ',' + (110 - (p.d[n] || 0) / max * 100).toFixed(1); });
    return '<polyline fill="none" stroke-width="2" stroke="' + COLORS[i % COLORS.length] + '" points="' + xy.join(' ') + '"/>';
  }).join('');
  var axis = '<line x1="10" y1="110" x2="590" y2="110" stroke="#ccd"/><text x="10" y="9" font-size="10" fill="#667">' + esc(num(max)) + '</text><text x="10" y="124" font-size="10" fill="#667">−1 h</text><text x="590" y="124" font-size="10" fill="#667" text-anchor="end">now</text>';
  var legend = '<div class="legend">' + chans.map(function(n, i){ return '<span style="color:' + COLORS[i % COLORS.length] + '">■ ' + esc(n) + '</span>'; }).join('') + '</div>';
  return '<svg class="chart" viewBox="0 0 600 128" role="img" aria-label="outbox depth per channel over the last hour">' + axis + lines + '</svg>' + legend;
}

function outboxCard(s){
  var q = s.queue || {}, chans = keys(q.channels), dd = q.dataDisk;
  var rows = [['waiting', tid('queue-depth', q.depth, esc(num(q.depth))) + ' <small>(' + esc(Math.round((q.bytes || 0) / 1024)) + ' KiB), oldest ' + esc(dur(q.oldestAgeMs)) + '</small>']];
  if (dd) rows.push(['disk', (dd.state === 'full' ? '<b class="bad">disk full</b>' : esc(dd.state)) + ', ' + esc(dd.freeBytes == null ? '?' : Math.round(dd.freeBytes / 1048576) + ' MiB') + ' free in ' + esc(dd.dataDir)]);
  if (chans.length === 0) return kv(rows) + empty('nothing queued yet: no channel has carried a message');
  var table = grid(['channel', 'waiting', 'delivered', 'dropped', 'parked', 'oldest', 'draining'], chans.map(function(n){
    var ch = q.channels[n];
    return [esc(n), tid('queue-depth-' + n, ch.depth, esc(num(ch.depth))), esc(num(ch.delivered)), esc(num(ch.dropped)), esc(num(ch.parked)), esc(dur(ch.oldestAgeMs)), drain(s, n, ch.depth)];
  }));
  return kv(rows) + table + depthChart(s, chans);
}

function ledgerCard(s){
  var l = s.queue && s.queue.ledger, chans = l ? keys(l.channels) : [];
  if (chans.length === 0) return empty('nothing accepted yet: no losses to account for');
  var head = l.balanced ? '<p>balanced: every message taken is accounted for</p>' : '<p class="bad"><b>does not balance</b>: some messages are unaccounted for</p>';
  return head + grid(['channel', 'accepted', 'delivered', 'queued', 'parked', 'dropped', 'expired', 'superseded', 'unaccounted'], chans.map(function(n){
    var c = l.channels[n], why = keys(c.dropped).filter(function(r){ return c.dropped[r] > 0; }), dropped = why.reduce(function(a, r){ return a + c.dropped[r]; }, 0);
    return [esc(n), esc(num(c.accepted)), esc(num(c.delivered)), esc(num(c.queued)), esc(num(c.parked)), esc(num(dropped)) + (why.length ? '<br><small>' + esc(why.map(function(r){ return c.dropped[r] + ' ' + r; }).join(', ')) + '</small>' : ''), esc(num(c.expired)), esc(num(c.superseded)), c.unaccounted ? '<b class="bad">' + esc(c.unaccounted) + '</b>' : '0'];
  }));
}

function $(id){ return document.getElementById(id); }

function fallbackBanner(s){
  var cf = s.state && s.state.config && s.state.config.fallback, cd = $('cfg');
  cd.style.display = cf ? 'block' : 'none';
  cd.innerHTML = cf ? '<strong>Config fallback:</strong> ' + esc(cf.message) + '. Changes in the file are not in force.<ul>' + cf.issues.map(function(i){ return '<li>' + esc((i.path || '(document)') + ': expected ' + i.expected) + '</li>'; }).join('') + (cf.issueCount > cf.issues.length ? '<li>… ' + (cf.issueCount - cf.issues.length) + ' more (GET /v2/config)</li>' : '') + '</ul>' : '';
}

var CARDS = { services: servicesCard, conn: connectionCard, outages: outagesCard, queue: outboxCard, ledger: ledgerCard, events: eventsCard, jobs: jobsCard, shadow: shadowCard, state: targetCard, db: dbCard };

function render(s){
  hist.push({ t: s.at, d: depthsOf(s) });
  while (hist.length > 0 && hist[0].t < s.at - 60000) hist.shift();
  var c = s.connection || {}, b = $('badge');
  b.textContent = s.hasCloud ? c.status : 'local mode';
  b.className = s.hasCloud ? c.status : 'local';
  b.setAttribute('data-value', s.hasCloud ? c.status : 'local');
  $('dev').textContent = s.device.uuid;
  fallbackBanner(s);
  keys(CARDS).forEach(function(id){
    try { $(id).innerHTML = CARDS[id](s); } catch (e) { $(id).innerHTML = empty('cannot show this card: ' + e.message); }
  });
  $('cards').hidden = false;
}

var KEY = 'iotisticKey', key = null, source = null, retry = null;

function problem(msg){ $('err').textContent = msg; }

function askKey(msg){
  $('cards').hidden = true;
  $('keyform').hidden = false;
  $('keyerr').textContent = msg;
  $('keyinput').focus();
}

function later(){ clearTimeout(retry); retry = setTimeout(connect, 2000); }

/** Trades the key for a single-use stream token, then opens the stream; a refused key asks again. */
function connect(){
  fetch('/v2/dashboard/token', { method: 'POST', headers: { authorization: 'Bearer ' + key } }).then(function(r){
    if (r.status === 401) { sessionStorage.removeItem(KEY); key = null; askKey('That key was refused: enter the local API key again.'); return null; }
    if (!r.ok) throw new Error('the agent answered ' + r.status);
    return r.json();
  }).then(function(t){ if (t) open(t.token); }).catch(function(e){ problem('Cannot reach the agent (' + e.message + '): retrying.'); later(); });
}

function open(token){
  source = new EventSource('/v2/dashboard/stream?token=' + encodeURIComponent(token));
  source.onmessage = function(e){ problem(''); render(JSON.parse(e.data)); };
  source.onerror = function(){ source.close(); source = null; problem('Lost the stream: reconnecting.'); later(); };
}

$('keyform').addEventListener('submit', function(e){
  e.preventDefault();
  var v = $('keyinput').value.trim();
  if (!v) return;
  key = v;
  sessionStorage.setItem(KEY, v);
  $('keyinput').value = '';
  $('keyform').hidden = true;
  connect();
});

var m = location.hash.match(/key=([^&]+)/);
if (m) { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); history.replaceState(null, '', location.pathname); }
key = sessionStorage.getItem(KEY);
if (key) connect(); else askKey('');
`;
