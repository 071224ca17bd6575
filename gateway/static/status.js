// infercdn fleet page: renders the documents of /status/events (one a second) on a world map and
// in one card per region, explains routes through /admin/plan and drains through /admin/*.
// No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const xy = (lon, lat) => [lon + 180, 90 - lat];
const num = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
let last = null;

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

async function drawLand() {
  try {
    const world = await (await fetch("/status/world.json")).json();
    const d = world.rings.map((ring) => "M" + ring.map(([lon, lat]) => xy(lon, lat).map((n) => n.toFixed(1)).join(",")).join("L") + "Z").join("");
    $("land").replaceChildren(svg("path", {d, class: "land"}));
  } catch (err) {
    console.warn("no world outline", err);
  }
}

function drawMap(doc) {
  const traffic = doc.traffic || {};
  const [gx, gy] = xy(doc.gateway.lon, doc.gateway.lat);
  const links = [], markers = [];
  for (const r of doc.regions) {
    const [x, y] = xy(r.lon, r.lat);
    const rate = (traffic[r.name] || {}).requests_per_s || 0;
    const mx = (gx + x) / 2, my = Math.min(gy, y) - Math.abs(gx - x) / 5 - 4;
    links.push(svg("path", {d: `M${gx},${gy} Q${mx},${my} ${x},${y}`, class: "link", "stroke-width": (0.3 + Math.log1p(rate) * 0.6).toFixed(2)}));
    const pools = doc.pools.filter((p) => p.region === r.name);
    pools.forEach((p, i) => {
      const a = (i / Math.max(pools.length, 1)) * 2 * Math.PI - Math.PI / 2;
      markers.push(svg("circle", {cx: x + 6 * Math.cos(a), cy: y + 6 * Math.sin(a), r: 1.6, class: `dot ${p.health}`, "data-pool": p.name}));
    });
    const dot = svg("circle", {cx: x, cy: y, r: 4, class: `dot ${r.health}`, "data-region": r.name, "data-health": r.health});
    dot.appendChild(svg("title", {}, `${r.name} (${r.city || ""}): ${r.health}`));
    markers.push(dot);
    markers.push(svg("text", {x: x + 8, y: y - 0.5}, r.name));
    markers.push(svg("text", {x: x + 8, y: y + 4, class: "small"}, `${num(rate, 1)} req/s · ${r.health}`));
  }
  markers.push(svg("rect", {x: gx - 2.2, y: gy - 2.2, width: 4.4, height: 4.4, transform: `rotate(45 ${gx} ${gy})`,
                            fill: "none", stroke: "#ffffff", "stroke-width": 0.6, "data-gateway": "1"}));
  markers.push(svg("text", {x: gx - 8, y: gy + 9, class: "small"}, doc.draining ? "gateway (draining)" : "gateway"));
  $("links").replaceChildren(...links);
  $("markers").replaceChildren(...markers);
}

function spark(series) {
  const max = Math.max(1, ...series);
  const pts = series.map((v, i) => `${(i * 100 / Math.max(series.length - 1, 1)).toFixed(1)},${(27 - (v / max) * 25).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 100 28" preserveAspectRatio="none"><polyline points="${pts}" vector-effect="non-scaling-stroke"/></svg>`;
}

function endpointRow(ep) {
  const load = ep.running === null && ep.waiting === null ? "–" : `${num(ep.running)} / ${num(ep.waiting)}`;
  const kv = ep.kv_usage === null ? "–" : `${num(ep.kv_usage * 100)}%`;
  const drained = ep.drained;
  return `<tr data-endpoint="${esc(ep.id)}" data-state="${esc(ep.state)}">
    <td title="${esc(ep.url)}">${esc(ep.id)}</td>
    <td><span class="badge st-${esc(ep.state)}">${esc(ep.state.replace("_", " "))}</span></td>
    <td class="num">${ep.inflight}</td><td class="num">${load}</td><td class="num">${kv}</td>
    <td class="num">${ep.latency_ms === null ? "–" : num(ep.latency_ms, 1) + " ms"}</td><td class="num">${num(ep.error_rate * 100, 0)}%</td>
    <td><button data-kind="endpoint" data-id="${esc(ep.id)}" data-action="${drained ? "undrain" : "drain"}">${drained ? "Undrain" : "Drain"}</button></td>
  </tr>`;
}

function poolBlock(p) {
  const drained = p.drained;
  const flag = p.draining ? `<span class="badge st-drained">draining (config)</span>` : "";
  return `<div class="pool" data-pool="${esc(p.name)}" data-health="${esc(p.health)}">
    <div class="pool-head"><span class="badge ${esc(p.health)}">${esc(p.health)}</span>
      <span class="name">${esc(p.name)}</span><span class="dim">${esc(p.models.join(", "))} · tier ${p.tier} · ${p.inflight} in flight</span>${flag}
      <button style="margin-left:auto" data-kind="pool" data-id="${esc(p.name)}" data-action="${drained ? "undrain" : "drain"}">${drained ? "Undrain pool" : "Drain pool"}</button></div>
    <table><thead><tr><th>endpoint</th><th>state</th><th class="num" title="requests in flight from this gateway">in flight</th>
      <th class="num" title="vLLM's running / waiting requests (scraped)">run/wait</th><th class="num" title="vLLM's KV cache usage">KV</th>
      <th class="num" title="measured latency (EWMA), ms">latency</th><th class="num" title="recent error rate">errors</th><th></th></tr></thead>
      <tbody>${p.endpoints.map(endpointRow).join("")}</tbody></table></div>`;
}

function regionCard(r, doc) {
  const t = (doc.traffic || {})[r.name] || {series: []};
  const stat = (v, label) => `<div><b>${v}</b><span>${label}</span></div>`;
  return `<div class="region ${esc(r.health)}" data-region="${esc(r.name)}" data-health="${esc(r.health)}">
    <h3>${esc(r.name)} <small>${esc(r.city || "")} · ${esc(r.jurisdiction || "")}</small>
      <span class="badge ${esc(r.health)}" style="margin-left:auto">${esc(r.health)}</span></h3>
    <div class="stats">${stat(num(t.requests_per_s, 1), "req/s")}${stat(num(t.tokens_per_s, (t.tokens_per_s || 0) < 10 ? 1 : 0), "tok/s")}
      ${stat(t.requests_1m ?? 0, "req 1m")}${stat(t.errors_1m ?? 0, "errors 1m")}
      ${stat(t.failovers_1m ?? 0, "failovers 1m")}${stat(t.resumes_1m ?? 0, "resumes 1m")}</div>
    ${spark(t.series || [])}
    ${doc.pools.filter((p) => p.region === r.name).map(poolBlock).join("")}
  </div>`;
}

// Bring `into` to look like `from` in place: elements that stay keep their identity, so a
// button under the pointer survives the redraw of each second (a click is not lost).
function morph(into, from) {
  if (into.nodeType !== from.nodeType || into.nodeName !== from.nodeName) {
    into.replaceWith(from.cloneNode(true));
    return;
  }
  if (into.nodeType !== Node.ELEMENT_NODE) {
    if (into.nodeValue !== from.nodeValue) into.nodeValue = from.nodeValue;
    return;
  }
  for (const {name} of [...into.attributes]) if (!from.hasAttribute(name)) into.removeAttribute(name);
  for (const {name, value} of [...from.attributes]) if (into.getAttribute(name) !== value) into.setAttribute(name, value);
  const want = [...from.childNodes];
  while (into.childNodes.length > want.length) into.lastChild.remove();
  want.forEach((child, i) => {
    const have = into.childNodes[i];
    if (have) morph(have, child);
    else into.appendChild(child.cloneNode(true));
  });
}

function render(doc) {
  last = doc;
  const g = doc.gateway;
  $("gateway").textContent = `gateway ${g.city || ""} (${g.region || "no region"})${doc.draining ? " — draining" : ""}`;
  $("updated").textContent = "updated " + new Date(doc.time * 1000).toLocaleTimeString();
  drawMap(doc);
  const next = $("regions").cloneNode(false);
  next.innerHTML = doc.regions.map((r) => regionCard(r, doc)).join("");
  morph($("regions"), next);
  const all = Object.values(doc.traffic || {});
  const sum = (k) => all.reduce((a, t) => a + (t[k] || 0), 0);
  $("fleet-totals").textContent = `fleet, last minute: ${sum("requests_1m")} requests, ${sum("errors_1m")} errors, ` +
    `${sum("failed_attempts_1m")} failed attempts, ${sum("failovers_1m")} failovers, ${sum("resumes_1m")} resumes`;
  const select = $("plan-model");
  if (select.options.length !== doc.models.length) {
    select.innerHTML = doc.models.map((m) => `<option>${esc(m)}</option>`).join("");
  }
}

function connect() {
  const source = new EventSource("/status/events");
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "on"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => { $("live").textContent = "disconnected — retrying"; $("live").className = "off"; };
}

async function act(button) {
  const {kind, id, action} = button.dataset;
  button.disabled = true;
  try {
    const resp = await fetch(`/admin/${kind}s/${encodeURIComponent(id)}/${action}`, {
      method: "POST", headers: {"Content-Type": "application/json", "X-Infercdn-Admin": "1"}, body: "{}"});
    if (!resp.ok) alert(((await resp.json()).error || {}).message || `HTTP ${resp.status}`);
  } finally {
    button.disabled = false;
  }
}

function planTable(plan) {
  const rows = plan.candidates.map((c) => `<tr><td>${c.rank}</td><td>${esc(c.region)}</td><td>${esc(c.pool)}</td>
    <td>${esc(c.endpoint)}</td><td class="num">${num(c.score_ms, 1)}</td><td class="num">${num(c.geo_ms, 1)}</td>
    <td class="num">${num(c.excess_ms, 1)}</td><td class="num">${num(c.queue_ms, 1)}</td><td class="num">${num(c.penalty_ms, 1)}</td></tr>`).join("");
  const rejected = plan.rejected.map((r) => `<li>${esc(r.pool)}${r.endpoint ? "/" + esc(r.endpoint) : ""}: ${esc(r.reason)}</li>`).join("");
  const c = plan.client;
  return `<p class="note">client ${esc(plan.ip || "-")}: ${esc(c.country || "?")}/${esc(c.continent || "?")} at
      ${num(c.lat, 2)}, ${num(c.lon, 2)} (${esc(c.source)}); policy ${esc(plan.policy)}${plan.panic ? " — PANIC" : ""}</p>
    <table id="plan-table"><thead><tr><th>#</th><th>region</th><th>pool</th><th>endpoint</th><th class="num">score</th>
      <th class="num">geo</th><th class="num">excess</th><th class="num">queue</th><th class="num">penalty</th></tr></thead>
      <tbody>${rows}</tbody></table>
    ${rejected ? `<p class="note">left out:</p><ul class="note">${rejected}</ul>` : ""}
    ${plan.notes.map((n) => `<p class="note">note: ${esc(n)}</p>`).join("")}`;
}

function drawRoute(plan) {
  const first = plan.candidates[0];
  const region = first && last ? last.regions.find((r) => r.name === first.region) : null;
  const [cx, cy] = xy(plan.client.lon, plan.client.lat);
  const parts = [svg("circle", {cx, cy, r: 1.6, fill: "#f5f5f5"})];
  if (region) {
    const [x, y] = xy(region.lon, region.lat);
    parts.push(svg("path", {d: `M${cx},${cy} L${x},${y}`, class: "route"}));
  }
  $("route-line").replaceChildren(...parts);
}

async function explain(event) {
  event.preventDefault();
  const params = new URLSearchParams({model: $("plan-model").value});
  const ip = $("plan-ip").value.trim();
  if (ip) params.set("ip", ip);
  try {
    const resp = await fetch(`/admin/plan?${params}`);
    const plan = await resp.json();
    if (!resp.ok) throw new Error((plan.error || {}).message || `HTTP ${resp.status}`);
    $("plan-out").innerHTML = planTable(plan);
    drawRoute(plan);
  } catch (err) {
    $("plan-out").innerHTML = `<p class="note err">${esc(err.message)}</p>`;
  }
}

$("regions").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) act(button);
});
$("plan-form").addEventListener("submit", explain);
drawLand();
connect();
