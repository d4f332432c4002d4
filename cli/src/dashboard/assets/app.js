// The Trellis dashboard page: polls the JSON API every few seconds and updates the graph
// (cytoscape.js), the service view (uPlot charts) and the proxy sync table in place.
'use strict';

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
let lastGraph = null;
let structure = '';

const cy = cytoscape({
  container: $('graph'),
  minZoom: 0.05,
  maxZoom: 4,
  style: [
    { selector: 'node', style: { 'label': 'data(label)', 'font-size': 10, 'text-valign': 'bottom', 'text-wrap': 'wrap', 'background-color': '#457b9d', 'width': 22, 'height': 22 } },
    { selector: 'node[kind = "service"]', style: { 'shape': 'triangle', 'background-color': '#2a9d8f' } },
    { selector: 'node[name = "unknown"]', style: { 'background-color': '#999' } },
    { selector: 'edge', style: { 'label': 'data(label)', 'font-size': 8, 'text-rotation': 'autorotate', 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'width': 'data(width)', 'line-color': '#8d99ae', 'target-arrow-color': '#8d99ae', 'text-background-color': '#fff', 'text-background-opacity': 0.7 } },
    { selector: 'edge.error', style: { 'line-color': '#c1121f', 'target-arrow-color': '#c1121f', 'color': '#c1121f' } },
    { selector: 'edge.idle', style: { 'line-style': 'dashed' } },
    { selector: ':selected', style: { 'border-width': 3, 'border-color': '#e76f51' } },
  ],
});
cy.on('tap', 'node[kind = "service"]', (e) => { location.hash = '#service/' + e.target.data('namespace') + '/' + e.target.data('name'); });
$('fit').onclick = () => cy.fit(undefined, 20);
$('namespace').onchange = () => { structure = ''; if (lastGraph) drawGraph(lastGraph); };
window.addEventListener('hashchange', () => route());

const fmt = (n, digits) => (n === null || n === undefined) ? '–' : n.toFixed(digits);
const pct = (r) => (r === null || r === undefined) ? '–' : (100 * r).toFixed(1) + '%';

function edgeLabel(e) {
  let text = fmt(e.rps, 1) + ' rps · ' + pct(e.successRate) + ' · p50 ' + fmt(e.p50Ms, 0) + ' / p99 ' + fmt(e.p99Ms, 0) + ' ms';
  if (e.mtls) text = '🔒 ' + text;
  if (e.share !== null && e.share !== undefined) text += ' · ' + e.share.toFixed(0) + '%';
  if (e.deniedRps > 0) text += ' · ⛔ ' + fmt(e.deniedRps, 1) + '/s denied';
  return text;
}

function unhealthy(e) {
  return e.deniedRps > 0 || (e.successRate !== null && e.successRate !== undefined && e.successRate < 0.99);
}

function showError(message) {
  const box = $('error');
  box.textContent = message || '';
  box.style.display = message ? 'block' : 'none';
}

async function getJson(path) {
  let answer;
  try {
    answer = await fetch(path, { cache: 'no-store' });
  } catch (e) {
    throw new Error('the dashboard server does not answer (' + e.message + ')');
  }
  let body;
  try { body = await answer.json(); } catch (e) { throw new Error(path + ': answer is not JSON (HTTP ' + answer.status + ')'); }
  if (!answer.ok) throw new Error(body.error || (path + ': HTTP ' + answer.status));
  return body;
}

// Keeps the namespace list in step with the graph, keeping the choice.
function updateNamespaces(graph) {
  const select = $('namespace');
  const names = [...new Set(graph.nodes.map((n) => n.namespace))].sort();
  const have = [...select.options].slice(1).map((o) => o.value);
  if (names.join() === have.join()) return;
  const chosen = select.value;
  select.length = 1;
  for (const n of names) select.add(new Option(n, n, false, n === chosen));
}

// The nodes of the chosen namespace and whatever they call or are called by.
function visible(graph) {
  const ns = $('namespace').value;
  if (!ns) return graph;
  const inNs = new Set(graph.nodes.filter((n) => n.namespace === ns).map((n) => n.id));
  const edges = graph.edges.filter((e) => inNs.has(e.source) || inNs.has(e.target));
  const ids = new Set(inNs);
  edges.forEach((e) => { ids.add(e.source); ids.add(e.target); });
  return { nodes: graph.nodes.filter((n) => ids.has(n.id)), edges };
}

function drawGraph(graph) {
  const started = performance.now();
  const shown = visible(graph);
  const key = shown.nodes.map((n) => n.id).join('|') + '#' + shown.edges.map((e) => e.id).join('|');
  cy.batch(() => {
    const keep = new Set([...shown.nodes.map((n) => n.id), ...shown.edges.map((e) => e.id)]);
    cy.elements().filter((el) => !keep.has(el.id())).remove();
    for (const n of shown.nodes) {
      const data = { id: n.id, kind: n.kind, namespace: n.namespace, name: n.name, label: n.name + '\n' + n.namespace };
      const el = cy.getElementById(n.id);
      if (el.empty()) cy.add({ group: 'nodes', data }); else el.data(data);
    }
    for (const e of shown.edges) {
      const data = { id: e.id, source: e.source, target: e.target, label: edgeLabel(e), width: Math.min(8, 1 + Math.log10(1 + e.rps) * 2) };
      let el = cy.getElementById(e.id);
      if (el.empty()) el = cy.add({ group: 'edges', data }); else el.data(data);
      el.toggleClass('error', unhealthy(e));
      el.toggleClass('idle', e.rps === 0);
    }
  });
  if (key !== structure) {
    structure = key;
    cy.layout({ name: 'breadthfirst', directed: true, spacingFactor: 1.1, animate: false }).run();
    cy.fit(undefined, 20);
    document.body.dataset.layoutMs = (performance.now() - started).toFixed(0);
  }
  const list = $('edges');
  list.replaceChildren(...shown.edges.map((e) => {
    const row = document.createElement('tr');
    row.dataset.edge = e.id;
    row.dataset.mtls = e.mtls;
    row.dataset.denied = e.deniedRps > 0;
    if (unhealthy(e)) row.className = 'bad';
    const cells = [e.source, e.target, fmt(e.rps, 2), pct(e.successRate), fmt(e.p50Ms, 1), fmt(e.p99Ms, 1), e.mtls ? '🔒' : 'no', fmt(e.deniedRps, 2),
      (e.share === null || e.share === undefined) ? '' : e.share.toFixed(0) + '%'];
    for (const c of cells) { const td = document.createElement('td'); td.textContent = c; row.appendChild(td); }
    return row;
  }));
  $('graph').dataset.nodes = cy.nodes().length;
  $('graph').dataset.edges = cy.edges().length;
  document.body.dataset.renderMs = (performance.now() - started).toFixed(0);
}

async function refreshGraph() {
  try {
    const graph = await getJson('/api/graph');
    lastGraph = graph;
    showError('');
    updateNamespaces(graph);
    drawGraph(graph);
    const warnings = $('warnings');
    warnings.textContent = graph.warnings.join('\n');
    warnings.style.display = graph.warnings.length ? 'block' : 'none';
    $('status').textContent = graph.nodes.length + ' nodes · ' + graph.edges.length + ' edges · ' + graph.source + ' · ' + new Date(graph.time * 1000).toLocaleTimeString();
  } catch (e) {
    showError('Graph: ' + e.message);
    $('status').textContent = 'no data';
  }
}

function table(headers, rows) {
  const t = document.createElement('table');
  const head = t.createTHead().insertRow();
  headers.forEach((h) => { const th = document.createElement('th'); th.textContent = h; head.appendChild(th); });
  const body = t.createTBody();
  rows.forEach((r) => {
    const tr = body.insertRow();
    r.forEach((c) => { const td = tr.insertCell(); td.textContent = c; if (/NACK|STALE/.test(c)) td.className = 'bad'; });
  });
  return t;
}

async function refreshProxies() {
  const view = $('proxies-view');
  try {
    const answer = await getJson('/api/proxies');
    const types = ['settings', 'service', 'virtualhost', 'cluster', 'endpoints'];
    const rows = answer.proxies.map((p) => [p.name, p.namespace, ...types.map((t) => {
      const s = p.types[t];
      if (!s || s.state === 'NOT_SENT') return '-';
      return s.state + ' (' + s.held + ')' + (s.nack ? ': ' + s.nack : '');
    }), p.status]);
    const heading = document.createElement('p');
    heading.textContent = answer.proxies.length + ' proxies connected to ' + answer.controlPlane;
    const parts = [heading, table(['NAME', 'NAMESPACE', ...types.map((t) => t.toUpperCase()), 'STATUS'], rows)];
    if (answer.rejectedConfig.length) {
      const rejected = document.createElement('pre');
      rejected.className = 'bad';
      rejected.textContent = 'Rejected config:\n' + answer.rejectedConfig.join('\n');
      parts.push(rejected);
    }
    view.replaceChildren(...parts);
  } catch (e) {
    const p = document.createElement('p');
    p.className = 'bad';
    p.id = 'proxies-error';
    p.textContent = 'Proxy sync: ' + e.message;
    view.replaceChildren(p);
  }
}

const charts = {};
function chart(name, title, series, data, yRange) {
  const opts = { title, width: 390, height: 110, scales: { x: { time: true }, y: yRange ? { range: yRange } : {} }, legend: { show: true },
    series: [{}, ...series.map((label, i) => ({ label, stroke: ['#1d3557', '#e76f51'][i] }))] };
  const holder = document.createElement('div');
  holder.className = 'chart';
  if (charts[name]) charts[name].destroy();
  charts[name] = new uPlot(opts, data, holder);
  return holder;
}

async function refreshService(ns, name) {
  const side = $('side');
  side.style.display = 'block';
  let view;
  try {
    view = await getJson('/api/service/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name));
  } catch (e) {
    const p = document.createElement('p');
    p.className = 'bad';
    p.textContent = 'Service ' + ns + '/' + name + ': ' + e.message;
    side.replaceChildren(p);
    return;
  }
  const parts = [];
  const h = document.createElement('h2');
  h.textContent = view.name + '.' + view.namespace;
  h.id = 'service-name';
  parts.push(h);
  if (view.error) { const p = document.createElement('p'); p.className = 'bad'; p.textContent = view.error; parts.push(p); }
  const s = view.signals;
  const now = document.createElement('p');
  now.textContent = s ? (fmt(s.rps, 1) + ' rps · ' + pct(s.successRate) + ' success · p50 ' + fmt(s.p50Ms, 0) + ' ms · p99 ' + fmt(s.p99Ms, 0) + ' ms' + (s.mtls ? ' · 🔒 mTLS' : ' · not all mTLS') + (s.deniedRps > 0 ? ' · ⛔ ' + fmt(s.deniedRps, 1) + '/s denied' : '')) : 'no traffic now';
  parts.push(now);
  const t = view.history.map((p) => p.time);
  parts.push(chart('rps', 'requests/s', ['rps'], [t, view.history.map((p) => p.rps)]));
  parts.push(chart('success', 'success %', ['success'], [t, view.history.map((p) => p.successRate === null ? null : 100 * p.successRate)], [0, 100]));
  parts.push(chart('latency', 'latency ms', ['p50', 'p99'], [t, view.history.map((p) => p.p50Ms), view.history.map((p) => p.p99Ms)]));
  const eh = document.createElement('h3'); eh.textContent = 'Endpoints (workloads answering)'; parts.push(eh);
  parts.push(table(['workload', 'share', 'rps', 'success', 'p99 ms'], view.endpoints.map((e) => [e.target.replace('workload:', ''), e.share === null ? '' : e.share.toFixed(0) + '%', fmt(e.rps, 2), pct(e.successRate), fmt(e.p99Ms, 1)])));
  const ej = Object.entries(view.ejections);
  if (ej.length) parts.push(table(['cluster', 'outlier ejections'], ej.map(([c, n]) => [c, String(n)])));
  const ch = document.createElement('h3'); ch.textContent = 'Routes, splits and policies'; parts.push(ch);
  if (!view.config) {
    const p = document.createElement('p'); p.textContent = 'Start the dashboard with --config DIR (the mesh\'s YAML) to see them.'; parts.push(p);
  } else {
    for (const split of view.config.splits) {
      const p = document.createElement('p');
      p.className = 'split';
      p.textContent = 'Split (' + split.virtualService + ', route ' + split.route + '): ' + split.destinations.map((d) => (d.subset || d.host) + ' ' + d.weight + '%').join(', ');
      parts.push(p);
    }
    for (const a of view.config.applied) {
      const d = document.createElement('details');
      d.className = 'applied';
      const sum = document.createElement('summary');
      sum.textContent = a.kind + ' ' + a.namespace + '/' + a.name + ' (' + a.scope + ')';
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify(a.spec, null, 1);
      d.append(sum, pre);
      parts.push(d);
    }
    for (const e of view.config.errors) { const p = document.createElement('p'); p.className = 'bad'; p.textContent = e; parts.push(p); }
  }
  side.replaceChildren(...parts);
}

// `#graph`, `#proxies` or `#service/<ns>/<name>`.
function route() {
  const hash = location.hash.slice(1);
  const proxies = hash === 'proxies';
  $('proxies-view').style.display = proxies ? 'block' : 'none';
  $('graph').style.display = proxies ? 'none' : 'block';
  $('tab-graph').classList.toggle('active', !proxies);
  $('tab-proxies').classList.toggle('active', proxies);
  const service = hash.match(/^service\/([^/]+)\/([^/]+)$/);
  if (!service) $('side').style.display = 'none';
  if (!proxies) cy.resize();
  return { proxies, service: service ? [decodeURIComponent(service[1]), decodeURIComponent(service[2])] : null };
}

async function tick() {
  const where = route();
  if (where.proxies) await refreshProxies(); else await refreshGraph();
  if (where.service) await refreshService(where.service[0], where.service[1]);
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function loop() {
  await tick();
  setTimeout(loop, REFRESH_MS);
}
loop();
