/**
 * The status page: one self-contained HTML document (inline CSS and JS, no framework, no build step). It
 * polls `api/status` every second, keeps two minutes of history in the browser and draws it on a canvas.
 */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shaperr status</title>
<style>
  :root { color-scheme: light dark; --accent: #e5a00d; font-family: system-ui, sans-serif; }
  body { margin: 1.5rem auto; max-width: 72rem; padding: 0 1rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .25rem; } h1 span { color: var(--accent); }
  .muted { opacity: .7; font-size: .9rem; }
  .warn { color: #e5a00d; }
  .bar { height: .9rem; border-radius: .45rem; background: #8884; overflow: hidden; margin: .35rem 0 1rem; }
  .bar > div { height: 100%; width: 0; background: var(--accent); transition: width .4s; }
  canvas { width: 100%; height: 220px; border: 1px solid #8886; border-radius: .4rem; }
  table { width: 100%; border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #8884; }
  td.num, th.num { text-align: right; }
  .axis { display: flex; justify-content: space-between; font-size: .8rem; opacity: .7; margin: .15rem 0 .3rem; }
  #legend { display: flex; flex-wrap: wrap; gap: .2rem 1rem; font-size: .85rem; }
  .swatch { display: inline-block; width: .7rem; height: .7rem; border-radius: 50%; margin-right: .4rem; }
  #error, .short { color: #d33; }
  ul { padding-left: 1.2rem; } li { margin: .15rem 0; }
</style>
</head>
<body>
<h1><span>shaperr</span> — per-client shaping for Plex</h1>
<div class="muted" id="summary">connecting…</div>
<div id="error"></div>
<div id="shortfall" class="short"></div>
<h2 class="muted">Server ceiling</h2>
<div class="bar"><div id="utilisation"></div></div>
<div class="muted" id="ceiling" hidden></div>
<div id="ceiling-cause" class="warn"></div>
<canvas id="chart" width="1100" height="220" data-points="0" aria-label="throughput per client over the last two minutes"></canvas>
<div class="axis" id="axis"><span>2 min ago</span><span>90 s</span><span>60 s</span><span>30 s</span><span>now</span></div>
<div id="legend"></div>
<table>
  <thead><tr><th>client</th><th>user</th><th>state</th><th>sessions</th><th class="num">guaranteed / ceil</th><th class="num">wants</th><th class="num">now</th><th class="num">sent</th><th class="num">drops</th><th>since</th></tr></thead>
  <tbody id="clients"><tr><td colspan="10" class="muted">no client is throttled</td></tr></tbody>
</table>
<h2 class="muted">Recent decisions</h2>
<ul id="decisions"></ul>
<section id="sources" hidden>
  <h2 class="muted">Sources</h2>
  <ul id="source-list"></ul>
  <div id="reserve" class="muted"></div>
  <ul id="streams"></ul>
</section>
<script>
const token = new URLSearchParams(location.search).get('token');
const HISTORY = 120;
const history = new Map(); // address -> [bits/s]
let ceilingSeries = []; // the server ceiling, bits/s, one a second (dashed on the chart)
const colours = ['#e5a00d', '#3b82f6', '#10b981', '#ef4444', '#a855f7', '#14b8a6', '#f97316', '#64748b'];
const colourOf = (address) => colours[[...address].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % colours.length];
const rate = (bits) => bits === undefined ? '…' : bits >= 1e9 ? (bits / 1e9).toFixed(2) + ' Gbit/s' : bits >= 1e6 ? (bits / 1e6).toFixed(2) + ' Mbit/s' : (bits / 1e3).toFixed(0) + ' kbit/s';
const bytes = (n) => n >= 2 ** 30 ? (n / 2 ** 30).toFixed(2) + ' GiB' : n >= 2 ** 20 ? (n / 2 ** 20).toFixed(1) + ' MiB' : (n / 1024).toFixed(0) + ' KiB';
const text = (tag, value, className) => { const el = document.createElement(tag); el.textContent = value; if (className) el.className = className; return el; };
let points = 0;

function draw() {
  const canvas = document.getElementById('chart');
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1e6, ...[...history.values()].flat(), ...ceilingSeries);
  ctx.fillStyle = '#888'; ctx.font = '12px system-ui';
  ctx.fillText(rate(max), 6, 14);
  // One sample a second: a line every 30 s, under the axis labels below the canvas.
  ctx.strokeStyle = '#8883'; ctx.lineWidth = 1;
  for (let seconds = 30; seconds < HISTORY; seconds += 30) {
    const x = width - seconds * (width / (HISTORY - 1));
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, height); ctx.stroke();
  }
  for (const [address, series] of history) {
    ctx.strokeStyle = colourOf(address); ctx.lineWidth = 2; ctx.beginPath();
    series.forEach((value, i) => {
      const x = width - (series.length - 1 - i) * (width / (HISTORY - 1));
      const y = height - 4 - (value / max) * (height - 24);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
  if (ceilingSeries.length) {
    ctx.strokeStyle = '#888'; ctx.lineWidth = 2; ctx.setLineDash([6, 4]); ctx.beginPath();
    ceilingSeries.forEach((value, i) => {
      const x = width - (ceilingSeries.length - 1 - i) * (width / (HISTORY - 1));
      const y = height - 4 - (value / max) * (height - 24);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke(); ctx.setLineDash([]);
  }
  canvas.dataset.points = String(points);
  canvas.dataset.ceilingPoints = String(ceilingSeries.length);
  document.getElementById('legend').replaceChildren(...[...history.keys()].map((address) => {
    const entry = text('span', address);
    entry.dataset.address = address;
    entry.prepend(Object.assign(document.createElement('span'), { className: 'swatch', style: 'background:' + colourOf(address) }));
    return entry;
  }));
}

function render(report) {
  const server = report.server;
  document.getElementById('summary').textContent =
    report.device + ' · leaf ' + report.leaf + ' · ' + report.clients.length + ' throttled · server ' +
    (server ? rate(server.bitsPerSecond) + ' of ' + rate(server.rate) + (server.note ? ' (' + server.note + ')' : '') : 'not set up') + ' · ' + new Date(report.at).toLocaleTimeString() +
    (report.operation ? ' · ' + report.operation.what + ' ' + report.operation.done + '/' + report.operation.total : '');
  const short = report.clients.filter((c) => c.rate < c.wanted).length;
  document.getElementById('shortfall').textContent = short ? short + ' of ' + report.clients.length +
    ' clients are guaranteed less than they want: the server rate is shared by more viewers than it holds (' + (report.ceiling ? 'the uplink carries no more now' : 'raise server.rate, or lower the client rates') + ')' : '';
  if (server) ceilingSeries = [...ceilingSeries, server.rate].slice(-HISTORY);
  renderCeiling(report.ceiling);
  document.getElementById('utilisation').style.width = Math.min(100, 100 * (server?.utilisation ?? 0)).toFixed(1) + '%';
  const body = document.getElementById('clients');
  body.replaceChildren();
  if (!report.clients.length) body.append(Object.assign(document.createElement('tr'), { innerHTML: '<td colspan="10" class="muted">no client is throttled</td>' }));
  const seen = new Set();
  for (const client of report.clients) {
    seen.add(client.address);
    const series = history.get(client.address) ?? [];
    if (client.bitsPerSecond !== undefined) { series.push(client.bitsPerSecond); points++; }
    history.set(client.address, series.slice(-HISTORY));
    const row = document.createElement('tr');
    row.dataset.address = client.address;
    if (client.shortfall) row.title = client.shortfall;
    const name = text('td', client.address);
    name.prepend(Object.assign(document.createElement('span'), { className: 'swatch', style: 'background:' + colourOf(client.address) }));
    row.append(name, text('td', client.user ?? ''), text('td', client.state), text('td', String(client.sessions.length)),
      text('td', rate(client.rate) + ' / ' + rate(client.ceil), client.shortfall ? 'num short' : 'num'), text('td', rate(client.wanted), 'num'), text('td', rate(client.bitsPerSecond), 'num'),
      text('td', bytes(client.bytes), 'num'), text('td', String(client.drops), 'num'), text('td', client.since ? new Date(client.since).toLocaleTimeString() : ''));
    body.append(row);
  }
  for (const address of history.keys()) if (!seen.has(address)) history.delete(address);
  const list = document.getElementById('decisions');
  list.replaceChildren(...report.decisions.slice().reverse().map((d) =>
    text('li', new Date(d.at).toLocaleTimeString() + ' ' + d.action + ' ' + d.address + (d.user ? ' (' + d.user + ')' : '') + (d.reason ? ' — ' + d.reason : ''))));
  renderSources(report);
  draw();
}

/** The automatic ceiling: where it is, what it measures, why it last moved, and what it cannot help. */
function renderCeiling(ceiling) {
  const line = document.getElementById('ceiling');
  line.hidden = !ceiling;
  document.getElementById('ceiling-cause').textContent = ceiling?.cause ? ceiling.cause + ': only the router can shape it (the ceiling stays at its min meanwhile)' : '';
  if (!ceiling) return;
  line.textContent = 'automatic ceiling (dashed) ' + rate(ceiling.rate) + ' between ' + rate(ceiling.min) + ' and ' + rate(ceiling.max) +
    ' · uplink delay ' + (ceiling.delayMs === undefined ? 'not measured (nothing flows)' : ceiling.delayMs + ' ms') +
    ' · capacity ' + (ceiling.capacity === undefined ? 'not measured yet' : rate(ceiling.capacity)) + ' · ' + ceiling.signal + ' signal' +
    (ceiling.lastChange ? ' · ' + new Date(ceiling.lastChange.at).toLocaleTimeString() + ': ' + ceiling.lastChange.why : '');
}

/** Each source's state (the log, each media server), the streams it cannot shape (and why), and each stream's bandwidth beside its pipe. */
function renderSources(report) {
  document.getElementById('sources').hidden = !report.sources;
  if (!report.sources) return;
  document.getElementById('source-list').replaceChildren(...report.sources.flatMap((source) => [
    text('li', source.source + ' ' + (source.server?.name ?? source.target) + ': ' + source.state + (source.lastError ? ' — ' + source.lastError : '') +
      (source.source === 'log' ? '' : ' · ' + source.sessions + ' sessions') + (source.note ? ' · ' + source.note : '')),
    ...source.skipped.map((skipped) => text('li', 'not shaped: ' + (skipped.user ?? '?') + ' on ' + (skipped.player ?? '?') + ' — ' + skipped.reason, 'warn')),
  ]));
  document.getElementById('reserve').textContent = 'kept for streams without a pipe: ' + rate(report.reservedRate ?? 0) +
    (report.server ? ' of the server’s ' + rate(report.server.rate) : '');
  document.getElementById('streams').replaceChildren(...report.clients.filter((client) => client.source).map((client) =>
    text('li', client.address + ' · ' + (client.user ?? '?') + ' · ' + (client.player ?? '?') + ' · stream ' + rate(client.streamBandwidth) + ' · pipe ' + rate(client.rate) + ' (' + client.source + ')')));
}

async function poll() {
  try {
    const response = await fetch('api/status' + (token ? '?token=' + encodeURIComponent(token) : ''), { cache: 'no-store' });
    if (!response.ok) throw new Error(response.status + ' ' + (await response.text()));
    render(await response.json());
    document.getElementById('error').textContent = '';
  } catch (error) {
    document.getElementById('error').textContent = 'cannot reach shaperrd: ' + error.message;
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
`;
