// discofl-p2p dashboard: renders the snapshots the server pushes (server-sent events).
// Every string that comes from the chain or a run directory is set with textContent
// (or as an SVG text node's textContent), never parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WEI = 10n ** 18n;
const COLORS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899", "#64748b", "#a16207"];

let snap = null;
let receivedAt = 0;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// Exact decimal ETH from a wei string (JSON carries wei as strings: they exceed 2^53).
function formatEth(wei) {
  const w = BigInt(wei);
  const neg = w < 0n;
  const a = neg ? -w : w;
  const frac = (a % WEI).toString().padStart(18, "0").replace(/0+$/, "");
  return (neg ? "-" : "") + (a / WEI).toString() + (frac ? "." + frac : "") + " ETH";
}

function short(addr) {
  return addr ? addr.slice(0, 8) + "…" + addr.slice(-4) : "—";
}

function workerMap() {
  const m = new Map();
  if (snap) snap.workers.forEach((w, i) => m.set(w.address, { ...w, color: COLORS[i % COLORS.length] }));
  return m;
}

function label(addr, workers) {
  const w = workers.get(addr);
  if (w && w.name) return w.name;
  return short(addr);
}

// Labels inside charts are cut to fit their space (the full text is in the tables).
function clip(s, n) {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

function fmtDuration(s) {
  if (s <= 0) return "passed";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  const mm = String(m).padStart(2, "0"), ss = String(sec).padStart(2, "0");
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function tick() {
  const out = document.getElementById("countdown");
  if (!snap || !snap.task) { out.textContent = "…"; return; }
  const t = snap.task;
  if (!["SUBMISSION", "EVALUATION"].includes(t.phase)) { out.textContent = "—"; return; }
  const chainNow = t.chain_time + (Date.now() / 1000 - receivedAt);
  out.textContent = fmtDuration(t.deadline - chainNow);
}

function renderHeader() {
  const t = snap.task;
  const err = document.getElementById("error");
  err.hidden = !snap.error;
  err.textContent = snap.error || "";
  if (!t) {
    document.getElementById("phase").textContent = "waiting for the task";
    return;
  }
  document.getElementById("contract").textContent = t.contract + " (chain " + t.chain_id + ")";
  document.getElementById("phase").textContent = t.phase;
  document.getElementById("round").textContent = t.round;
  document.getElementById("rounds-total").textContent = t.rounds;
  document.getElementById("block").textContent = t.block;
  const money = clear(document.getElementById("money"));
  const rows = [
    ["deposit", formatEth(t.deposit_wei)], ["credited", formatEth(t.total_credited_wei)],
    ["withdrawn", formatEth(t.total_withdrawn_wei)], ["refunded", formatEth(t.refunded_wei)],
    ["held by the contract", formatEth(t.held_wei)], ["reward rule", `${t.rule} (K = ${t.top_k})`],
    ["requester", t.requester],
    ["this round", `${t.submitted_count} committed, ${t.model_count} published, ${t.scored_count} scored of ${t.worker_count}`],
  ];
  for (const [k, v] of rows) { money.appendChild(el("dt", {}, k)); money.appendChild(el("dd", {}, v)); }
}

function renderWorkers(workers) {
  const body = clear(document.querySelector("#workers tbody"));
  for (const w of workers.values()) {
    const tr = el("tr", { "data-address": w.address });
    tr.appendChild(el("td", { class: "num" }, w.index));
    tr.appendChild(el("td", { class: "addr" }, w.address));
    const name = el("td", { class: "name" }, w.name || "—");
    name.style.borderLeft = `4px solid ${w.color}`;
    tr.appendChild(name);
    tr.appendChild(el("td", { class: "behavior" }, w.behavior || "—"));
    tr.appendChild(el("td", { class: "peer", title: w.peer_id || "" }, w.peer_id ? w.peer_id.slice(0, 14) + "…" : "—"));
    tr.appendChild(el("td", { class: "reward" }, formatEth(w.rewards_wei)));
    tr.appendChild(el("td", { class: "withdrawn num" }, formatEth(w.withdrawn_wei)));
    body.appendChild(tr);
  }
}

// Stacked bars: one bar per worker, one segment per settled round.
function renderCumulative(workers) {
  const root = clear(document.getElementById("cumulative"));
  const W = 640, H = 260, left = 64, bottom = 40, top = 10;
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const list = [...workers.values()];
  const settled = snap.rounds.filter((r) => r.settled);
  const totals = list.map((w) => Number(BigInt(w.rewards_wei)) / 1e18);
  const max = Math.max(1e-18, ...totals);
  const plotH = H - bottom - top, bw = list.length ? (W - left - 10) / list.length : 0;
  root.appendChild(svg("line", { x1: left, y1: top, x2: left, y2: H - bottom, class: "axis" }));
  root.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W - 10, y2: H - bottom, class: "axis" }));
  for (const f of [0, 0.5, 1]) {
    const y = H - bottom - f * plotH;
    root.appendChild(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, (max * f).toPrecision(3)));
  }
  root.appendChild(svg("text", { x: 4, y: top + 8 }, "ETH"));
  list.forEach((w, i) => {
    let y = H - bottom;
    const x = left + i * bw + bw * 0.15;
    settled.forEach((r, j) => {
      const amount = r.rewards_wei[w.address];
      if (!amount) return;
      const h = (Number(BigInt(amount)) / 1e18 / max) * plotH;
      y -= h;
      const rect = svg("rect", { x, y, width: bw * 0.7, height: Math.max(h, 0), fill: COLORS[j % COLORS.length], opacity: 0.85 });
      rect.appendChild(svg("title", {}, `${label(w.address, workers)}, round ${r.round}: ${formatEth(amount)}`));
      root.appendChild(rect);
    });
    root.appendChild(svg("text", { x: x + bw * 0.35, y: H - bottom + 14, "text-anchor": "middle" }, clip(label(w.address, workers), Math.max(4, Math.floor(bw / 7)))));
  });
  settled.forEach((r, j) => {
    const x = left + 10 + j * 70;
    root.appendChild(svg("rect", { x, y: H - 14, width: 10, height: 10, fill: COLORS[j % COLORS.length] }));
    root.appendChild(svg("text", { x: x + 14, y: H - 5 }, `round ${r.round}`));
  });
}

function renderAccuracy(workers) {
  const run = snap.run || {};
  const card = document.getElementById("accuracy-card");
  const points = run.accuracy || [];
  card.hidden = !points.length && run.final_accuracy == null;
  if (card.hidden) return;
  const root = clear(document.getElementById("accuracy"));
  const W = 640, H = 260, left = 48, bottom = 30, top = 10, right = 90;
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const rounds = points.map((p) => p.round);
  const n = Math.max(1, ...rounds, 1) + (run.final_accuracy != null ? 1 : 0);
  const xs = (r) => left + ((r - 1) / Math.max(1, n - 1)) * (W - left - right);
  const ys = (a) => top + (1 - a) * (H - top - bottom);
  root.appendChild(svg("line", { x1: left, y1: top, x2: left, y2: H - bottom, class: "axis" }));
  root.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, class: "axis" }));
  for (const a of [0, 0.5, 1]) root.appendChild(svg("text", { x: left - 6, y: ys(a) + 4, "text-anchor": "end" }, a.toFixed(1)));
  for (const r of rounds) root.appendChild(svg("text", { x: xs(r), y: H - bottom + 14, "text-anchor": "middle" }, `r${r}`));
  for (const w of workers.values()) {
    const pts = points.filter((p) => p.per_worker[w.address] != null).map((p) => `${xs(p.round)},${ys(p.per_worker[w.address])}`);
    if (!pts.length) continue;
    const line = svg("polyline", { points: pts.join(" "), fill: "none", stroke: w.color, "stroke-width": 2 });
    line.appendChild(svg("title", {}, label(w.address, workers)));
    root.appendChild(line);
    for (const p of points.filter((q) => q.per_worker[w.address] != null)) {
      root.appendChild(svg("circle", { cx: xs(p.round), cy: ys(p.per_worker[w.address]), r: 3, fill: w.color }));
    }
  }
  if (run.final_accuracy != null) {
    const x = xs(n), y = ys(run.final_accuracy);
    root.appendChild(svg("circle", { cx: x, cy: y, r: 5, fill: "#111" }));
    root.appendChild(svg("text", { x: x + 8, y: y + 4 }, `final ${run.final_accuracy.toFixed(4)}`));
  }
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// Per node: models and bytes served and fetched, from the run's logs (a bar scaled to
// the node that served most, so the requester's share of the traffic shows).
function renderP2P() {
  const rows = (snap.run && snap.run.p2p) || [];
  const card = document.getElementById("p2p-card");
  card.hidden = !rows.length;
  const body = clear(document.querySelector("#p2p tbody"));
  const most = Math.max(1, ...rows.map((r) => r.bytes_served));
  for (const r of rows) {
    const tr = el("tr", { "data-node": r.agent || r.peer_id || "" });
    tr.appendChild(el("td", { class: "name" }, r.agent || "unnamed peer"));
    tr.appendChild(el("td", { class: "peer", title: r.peer_id || "" }, r.peer_id ? r.peer_id.slice(0, 14) + "…" : "—"));
    tr.appendChild(el("td", { class: "num peers" }, r.peers));
    tr.appendChild(el("td", { class: "num" }, r.models_served));
    const served = el("td", { class: "num served" });
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.round((60 * r.bytes_served) / most)}px`;
    served.appendChild(bar);
    served.appendChild(document.createTextNode(formatBytes(r.bytes_served)));
    tr.appendChild(served);
    tr.appendChild(el("td", { class: "num" }, r.models_fetched));
    tr.appendChild(el("td", { class: "num fetched" }, formatBytes(r.bytes_fetched)));
    body.appendChild(tr);
  }
}

function heatColor(s) {
  // 0 -> red, 1 -> green, through yellow.
  return `hsl(${Math.round(120 * s)}, 70%, ${70 - 15 * s}%)`;
}

function renderHeatmap(r, workers) {
  const cols = r.models.length, rows = r.scores.length;
  const cw = 56, ch = 22, left = 110, top = r.owner_at ? 36 : 22;
  const W = left + cols * cw + 4, H = top + rows * ch + 4;
  const root = svg("svg", { class: "heatmap", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `scores of round ${r.round}` });
  root.style.maxWidth = `${W}px`;
  for (let j = 0; j < cols; j++) {
    root.appendChild(svg("text", { x: left + j * cw + cw / 2, y: 12, "text-anchor": "middle" }, `#${j}`));
    if (r.owner_at) {
      root.appendChild(svg("text", { x: left + j * cw + cw / 2, y: 28, "text-anchor": "middle" }, r.owner_at[j] ? clip(label(r.owner_at[j], workers), 8) : "—"));
    }
  }
  r.scores.forEach((row, i) => {
    const y = top + i * ch;
    root.appendChild(svg("text", { x: left - 6, y: y + ch / 2 + 4, "text-anchor": "end" }, clip(label(row.evaluator, workers), 16)));
    row.scores.forEach((s, j) => {
      const self = r.owner_at && r.owner_at[j] === row.evaluator;
      const rect = svg("rect", {
        x: left + j * cw + 1, y: y + 1, width: cw - 2, height: ch - 2,
        fill: s == null ? "#e5e7eb" : heatColor(s),
        stroke: self ? "#111" : "none", "stroke-dasharray": self ? "3 2" : "none",
      });
      rect.appendChild(svg("title", {}, `${label(row.evaluator, workers)} → #${j}: ${s == null ? "abstained" : s.toFixed(4)}${self ? " (own model: ignored)" : ""}`));
      root.appendChild(rect);
      root.appendChild(svg("text", { x: left + j * cw + cw / 2, y: y + ch / 2 + 4, "text-anchor": "middle" }, s == null ? "–" : s.toFixed(2)));
    });
  });
  return root;
}

function renderRound(r, workers) {
  const sec = el("section", { class: "card round", "data-round": r.round });
  const h = el("h2", {}, `Round ${r.round} `);
  h.appendChild(el("span", { class: "badge" + (r.settled ? " settled" : "") }, r.settled ? "settled" : "in progress"));
  sec.appendChild(h);
  sec.appendChild(el("p", { class: "muted" }, `${r.committed.length} committed, ${r.models.length} published, ${r.scores.length} scored` +
    (r.excluded.length ? `, excluded: ${r.excluded.map((a) => label(a, workers)).join(", ")}` : "")));

  sec.appendChild(el("h3", {}, "Published models (sha2-256 digests, in published order)"));
  const ul = el("ul", { class: "digests" });
  r.models.forEach((d, j) => {
    const li = el("li", {}, `#${j} `);
    li.appendChild(el("span", { class: "digest", title: d }, d.slice(0, 18) + "…"));
    if (r.owner_at && r.owner_at[j]) li.appendChild(el("span", { class: "muted" }, ` by ${label(r.owner_at[j], workers)}`));
    ul.appendChild(li);
  });
  if (!r.models.length) ul.appendChild(el("li", { class: "muted" }, "not published yet"));
  sec.appendChild(ul);

  if (r.scores.length) {
    sec.appendChild(el("h3", {}, "Scores (rows: evaluators, columns: positions; dashed: own model, ignored)"));
    sec.appendChild(renderHeatmap(r, workers));
  }

  if (r.settled) {
    sec.appendChild(el("h3", {}, "Contributions (BlockFlow, recomputed), ranking and rewards"));
    const table = el("table", { class: "rewards" });
    const head = el("tr");
    for (const c of ["worker", "m", "d", "p", "rank", "reward"]) head.appendChild(el("th", { class: c === "worker" ? "" : "num" }, c));
    table.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    for (const w of workers.values()) {
      const c = r.contributions ? r.contributions[w.address] : null;
      const rank = r.ranking.indexOf(w.address);
      const tr = el("tr", { "data-address": w.address });
      tr.appendChild(el("td", { class: "name" }, label(w.address, workers)));
      tr.appendChild(el("td", { class: "num" }, c ? c.median.toFixed(4) : "—"));
      tr.appendChild(el("td", { class: "num" }, c ? c.honesty_raw.toFixed(4) : "—"));
      tr.appendChild(el("td", { class: "num p" }, c ? c.score.toFixed(4) : "—"));
      tr.appendChild(el("td", { class: "num rank" }, rank >= 0 ? rank + 1 : "—"));
      tr.appendChild(el("td", { class: "reward" }, formatEth(r.rewards_wei[w.address] || "0")));
      body.appendChild(tr);
    }
    table.appendChild(body);
    sec.appendChild(table);
  }
  return sec;
}

function render() {
  renderHeader();
  const workers = workerMap();
  renderWorkers(workers);
  renderCumulative(workers);
  renderAccuracy(workers);
  renderP2P();
  const rounds = clear(document.getElementById("rounds"));
  for (const r of [...snap.rounds].reverse()) rounds.appendChild(renderRound(r, workers));
  tick();
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => { status.textContent = "live"; status.className = "pill live"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting"; status.className = "pill down"; });
  source.addEventListener("snapshot", (ev) => {
    snap = JSON.parse(ev.data);
    receivedAt = Date.now() / 1000;
    render();
    document.body.dataset.version = String(snap.version);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(tick, 1000);
});
