// Pulseboard's browser UI: login, dashboard list, a live dashboard grid, the panel editor.
// Plain JavaScript, no build step; uPlot draws time series, gridstack the grid.
"use strict";

const CHART_TYPES = ["line", "area", "bar", "scatter", "pie", "donut", "stat", "gauge", "table", "heatmap"];
const AGGREGATIONS = ["sum", "avg", "min", "max", "count", "last", "rate", "p50", "p90", "p95", "p99"];
const RANGES = ["5m", "15m", "1h", "6h", "24h"];
const PALETTE = ["#5b5bd6", "#e5484d", "#12a594", "#f76b15", "#8e4ec6", "#0090ff", "#d6409f", "#46a758", "#ffb224", "#6e56cf"];
const $ = (sel, root = document) => root.querySelector(sel);

// ---------- small helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

function toast(msg) {
  const t = $("#toast");
  t.textContent = msg;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3000);
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(3);
}

function dimsLabel(d) {
  const parts = Object.entries(d || {}).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(", ") : "all";
}

function download(name, blob) {
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function parseFilter(text) {
  return text.split(",").map(s => s.trim()).filter(Boolean);
}

// ---------- API ----------

const api = {
  token: localStorage.getItem("pb.token"),
  async call(method, path, body) {
    const headers = {};
    if (this.token) headers.authorization = "Bearer " + this.token;
    if (body !== undefined) headers["content-type"] = "application/json";
    const r = await fetch("/api/v1" + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401 && this.token) {
      logout();
      throw new Error("your session ended; log in again");
    }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!r.ok) {
      const d = data && data.detail;
      throw new Error((d && (d.message || d.reason)) || (data && data.error) || r.statusText);
    }
    return data;
  },
  get(p) { return this.call("GET", p); },
  post(p, b) { return this.call("POST", p, b); },
  put(p, b) { return this.call("PUT", p, b); },
  del(p) { return this.call("DELETE", p); },
  async raw(path) {
    const r = await fetch("/api/v1" + path, { headers: { authorization: "Bearer " + this.token } });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    return r;
  },
};

function logout() {
  if (api.token) fetch("/api/v1/auth/logout", { method: "POST", headers: { authorization: "Bearer " + api.token } }).catch(() => {});
  api.token = null;
  localStorage.removeItem("pb.token");
  live.close();
  location.hash = "#/login";
}

// ---------- live updates: one socket, many subscriptions ----------

const live = {
  ws: null,
  subs: new Map(), // id -> {query, minInterval, onMessage, stream, seq}
  backoff: 500,
  connected: false,
  open() {
    if (this.ws || !api.token) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/ws?token=${encodeURIComponent(api.token)}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      this.backoff = 500;
      // Resume every subscription where it left off: the server replays what was missed
      // or sends a fresh snapshot.
      for (const [id, s] of this.subs) this.sendSub(id, s, s.seq !== null);
      document.dispatchEvent(new Event("pb-live"));
    };
    ws.onmessage = ev => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      if (m.type === "alert") {
        document.dispatchEvent(new CustomEvent("pb-alert", { detail: m }));
        return;
      }
      const s = m.id && this.subs.get(m.id);
      if (m.type === "error") {
        if (s) s.onMessage(m); else console.warn("live:", m);
        return;
      }
      if (!s) return;
      if (m.type === "snapshot" || m.type === "update") {
        s.stream = m.stream;
        s.seq = m.seq;
      }
      s.onMessage(m);
    };
    ws.onclose = () => {
      this.ws = null;
      this.connected = false;
      document.dispatchEvent(new Event("pb-live"));
      if (!api.token) return;
      setTimeout(() => this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 10000);
    };
  },
  sendSub(id, s, resume) {
    if (!this.ws || this.ws.readyState !== 1) return;
    const msg = resume
      ? { type: "resume", id, query: s.query, min_interval_ms: s.minInterval, after_seq: s.seq, stream: s.stream }
      : { type: "subscribe", id, query: s.query, min_interval_ms: s.minInterval };
    this.ws.send(JSON.stringify(msg));
  },
  subscribe(id, query, minInterval, onMessage) {
    const s = { query, minInterval, onMessage, stream: null, seq: null };
    this.subs.set(id, s);
    this.open();
    this.sendSub(id, s, false);
  },
  unsubscribe(id) {
    if (!this.subs.delete(id)) return;
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify({ type: "unsubscribe", id }));
  },
  close() {
    this.subs.clear();
    if (this.ws) { const ws = this.ws; this.ws = null; ws.onclose = null; ws.close(); }
  },
};

// ---------- panel data: buckets per group, overwritten by absolute values ----------

class PanelData {
  constructor() { this.groups = new Map(); this.totals = new Map(); }
  key(d) { return JSON.stringify(Object.entries(d || {}).sort()); }
  group(d) {
    const k = this.key(d);
    let g = this.groups.get(k);
    if (!g) { g = { dims: d || {}, points: new Map() }; this.groups.set(k, g); }
    return g;
  }
  reset() { this.groups.clear(); this.totals.clear(); }
  applySeries(list) {
    for (const s of list || []) {
      const g = this.group(s.dimensions);
      for (const [t, v] of s.points) g.points.set(t, v);
    }
  }
  applyTotals(list) {
    for (const t of list || []) {
      // null: the group's last bucket left the window.
      if (t.value === null) this.totals.delete(this.key(t.dimensions));
      else this.totals.set(this.key(t.dimensions), { dims: t.dimensions, value: t.value });
    }
  }
  slide(oldest) {
    for (const [k, g] of this.groups) {
      for (const t of g.points.keys()) if (t < oldest) g.points.delete(t);
      if (!g.points.size) { this.groups.delete(k); this.totals.delete(k); }
    }
  }
  // uPlot's aligned columns: x in seconds, one y array per group (null where missing).
  aligned() {
    const groups = [...this.groups.values()].sort((a, b) => dimsLabel(a.dims).localeCompare(dimsLabel(b.dims)));
    const xs = [...new Set(groups.flatMap(g => [...g.points.keys()]))].sort((a, b) => a - b);
    const cols = groups.map(g => xs.map(x => (g.points.has(x) ? g.points.get(x) : null)));
    return { groups, data: [xs.map(x => x / 1000), ...cols] };
  }
  totalsList() {
    return [...this.totals.values()].sort((a, b) => b.value - a.value);
  }
}

// The chart type that fits a query's shape, shown as ★ in the editor.
function suggestType(query, data) {
  const grouped = query.group_by && String(query.group_by).length > 0;
  const groups = data ? data.groups.size : 0;
  if (!grouped) return query.aggregation === "last" ? "stat" : "line";
  if (groups > 12) return "heatmap";
  if (["sum", "count"].includes(query.aggregation || "avg")) return groups <= 6 ? "pie" : "bar";
  return "line";
}

// ---------- charts ----------

function seriesColor(i) { return PALETTE[i % PALETTE.length]; }

function drawTimeSeries(panel, body) {
  const { groups, data } = panel.data.aligned();
  const overlay = panel.overlay;
  const extra = [];
  if (overlay && overlay.series.length) {
    // Past period shifted onto now's axis: one dashed series per group, aligned to xs.
    for (const s of overlay.series) {
      const m = new Map(s.points.map(([t, v]) => [t / 1000, v]));
      extra.push({ label: `${dimsLabel(s.dimensions)} (−${overlay.offset})`, col: data[0].map(x => (m.has(x) ? m.get(x) : null)) });
    }
  }
  const type = panel.viz.type;
  const sig = type + "|" + groups.map(g => dimsLabel(g.dims)).join(";") + "|" + extra.map(e => e.label).join(";") + "|" + document.documentElement.dataset.theme;
  const width = Math.max(body.clientWidth - 8, 100);
  const height = Math.max(body.clientHeight - 40, 60);
  const all = [...data, ...extra.map(e => e.col)];
  if (panel.plot && panel.plotSig === sig) {
    panel.plot.setData(all);
    if (panel.plot.width !== width || panel.plot.height !== height) panel.plot.setSize({ width, height });
    return;
  }
  if (panel.plot) panel.plot.destroy();
  body.replaceChildren();
  const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 }, ticks: { stroke: cssVar("--grid") } };
  const series = [{}];
  groups.forEach((g, i) => {
    const c = seriesColor(i);
    const s = { label: dimsLabel(g.dims), stroke: c, width: 2, spanGaps: type !== "bar", points: { show: type === "scatter", size: 5, fill: c } };
    if (type === "area") s.fill = c + "33";
    if (type === "bar") {
      // Grouped bars: each series takes its own slot within the bucket.
      const n = Math.max(groups.length, 1);
      const slot = (panel.granularity || 1000) / 1000 / n;
      s.paths = uPlot.paths.bars({ disp: {
        x0: { unit: 1, values: u => u.data[0].map(x => x + i * slot) },
        size: { unit: 1, values: () => [slot * 0.85] },
      } });
      s.fill = c + "cc"; s.width = 0;
    }
    if (type === "scatter") s.paths = () => null;
    series.push(s);
  });
  extra.forEach((e, i) => series.push({ label: e.label, stroke: seriesColor(i), width: 1.5, dash: [6, 4], spanGaps: true }));
  panel.plot = new uPlot({
    width, height, series,
    scales: {
      // The x axis always spans the window up to now, so a dashboard reads like a clock.
      x: { time: true, range: () => [(Date.now() - (panel.windowMs || 900000)) / 1000, (Date.now() + (panel.granularity || 1000)) / 1000] },
      y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] },
    },
    axes: [axis, { ...axis, values: (u, vals) => vals.map(fmt), size: 56 }],
    legend: { show: true, live: false },
    cursor: { points: { size: 6 } },
    hooks: { draw: [u => drawGuides(u, panel.board.guides(panel.viz.query.metric))] },
  }, all, body);
  panel.plotSig = sig;
  // Drill-down: clicking a legend entry opens the panel filtered by that series.
  panel.plot.root.querySelectorAll(".u-legend .u-series").forEach((el, i) => {
    if (i === 0 || i > groups.length) return;
    el.addEventListener("click", ev => { ev.stopPropagation(); panel.drill(groups[i - 1].dims); }, true);
  });
}

// Alert thresholds as dashed lines and anomaly bands as shaded ranges, over the plot.
function drawGuides(u, guides) {
  if (!guides.length) return;
  const ctx = u.ctx, { left, top, width, height } = u.bbox;
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
  for (const g of guides) {
    if (g.kind === "threshold") {
      const y = u.valToPos(g.value, "y", true);
      ctx.strokeStyle = cssVar("--danger"); ctx.lineWidth = 1.5 * devicePixelRatio; ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
    } else {
      const y0 = u.valToPos(g.upper, "y", true), y1 = u.valToPos(g.lower, "y", true);
      ctx.fillStyle = "rgba(245, 165, 36, 0.15)";
      ctx.fillRect(left, Math.min(y0, y1), width, Math.abs(y1 - y0));
    }
  }
  ctx.restore();
}

function canvasFor(body) {
  let c = body.querySelector("canvas.pb");
  if (!c) { body.replaceChildren(); c = h("canvas", { class: "pb" }); body.append(c); }
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(body.clientWidth - 16, 60), hgt = Math.max(body.clientHeight - 16, 60);
  c.style.width = w + "px"; c.style.height = hgt + "px";
  c.width = w * dpr; c.height = hgt * dpr;
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { c, ctx, w, h: hgt };
}

function drawPie(panel, body, donut) {
  const totals = panel.data.totalsList().filter(t => t.value > 0);
  if (!totals.length) return empty(body);
  const { c, ctx, w, h: ht } = canvasFor(body);
  const sum = totals.reduce((a, t) => a + t.value, 0);
  const legendW = w > 360 ? Math.min(180, w * 0.4) : 0;
  const r = Math.min((w - legendW) / 2, ht / 2) - 8;
  const cx = (w - legendW) / 2, cy = ht / 2;
  let a0 = -Math.PI / 2;
  const slices = [];
  totals.forEach((t, i) => {
    const a1 = a0 + (t.value / sum) * Math.PI * 2;
    ctx.beginPath(); ctx.moveTo(cx, cy); ctx.arc(cx, cy, r, a0, a1); ctx.closePath();
    ctx.fillStyle = seriesColor(i); ctx.fill();
    slices.push({ a0, a1, t });
    a0 = a1;
  });
  if (donut) {
    ctx.globalCompositeOperation = "destination-out";
    ctx.beginPath(); ctx.arc(cx, cy, r * 0.58, 0, Math.PI * 2); ctx.fill();
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = cssVar("--text"); ctx.font = "600 18px " + cssVar("--font");
    ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.fillText(fmt(sum), cx, cy);
  }
  if (legendW) {
    ctx.font = "12px " + cssVar("--font"); ctx.textAlign = "left"; ctx.textBaseline = "middle";
    totals.slice(0, Math.floor(ht / 20)).forEach((t, i) => {
      const y = 14 + i * 20, x = w - legendW + 8;
      ctx.fillStyle = seriesColor(i); ctx.fillRect(x, y - 5, 10, 10);
      ctx.fillStyle = cssVar("--text");
      ctx.fillText(`${dimsLabel(t.dims)}  ${(100 * t.value / sum).toFixed(1)}%`, x + 16, y);
    });
  }
  c.onclick = ev => {
    const x = ev.offsetX - cx, y = ev.offsetY - cy;
    if (Math.hypot(x, y) > r) return;
    let a = Math.atan2(y, x);
    if (a < -Math.PI / 2) a += Math.PI * 2;
    const s = slices.find(s => a >= s.a0 && a < s.a1);
    if (s) panel.drill(s.t.dims);
  };
}

function totalValue(panel) {
  const list = panel.data.totalsList();
  if (!list.length) return null;
  if (list.length === 1) return list[0].value;
  const agg = panel.viz.query.aggregation || "avg";
  const vals = list.map(t => t.value);
  if (["sum", "count", "rate"].includes(agg)) return vals.reduce((a, b) => a + b, 0);
  if (agg === "max") return Math.max(...vals);
  if (agg === "min") return Math.min(...vals);
  return vals.reduce((a, b) => a + b, 0) / vals.length;
}

function drawStat(panel, body) {
  const v = totalValue(panel);
  const q = panel.viz.query;
  body.replaceChildren(h("div", { class: "stat" },
    h("div", { class: "value", text: fmt(v) }),
    h("div", { class: "sub", text: `${q.aggregation || "avg"} of ${q.metric} · last ${panel.window()}` })));
}

function drawGauge(panel, body) {
  const v = totalValue(panel);
  if (v === null) return empty(body);
  const o = panel.viz.options || {};
  panel.gaugeMax = Math.max(panel.gaugeMax || 0, v * 1.25);
  const max = Number(o.max) || panel.gaugeMax || 1, min = Number(o.min) || 0;
  const { ctx, w, h: ht } = canvasFor(body);
  const r = Math.min(w / 2, ht * 0.8) - 10, cx = w / 2, cy = ht * 0.85;
  const frac = Math.max(0, Math.min(1, (v - min) / (max - min || 1)));
  ctx.lineWidth = Math.max(10, r * 0.18); ctx.lineCap = "round";
  ctx.strokeStyle = cssVar("--line");
  ctx.beginPath(); ctx.arc(cx, cy, r, Math.PI, 2 * Math.PI); ctx.stroke();
  const warn = Number(o.warn), crit = Number(o.critical);
  ctx.strokeStyle = crit && v >= crit ? cssVar("--danger") : warn && v >= warn ? "#f5a524" : cssVar("--accent");
  ctx.beginPath(); ctx.arc(cx, cy, r, Math.PI, Math.PI + frac * Math.PI); ctx.stroke();
  ctx.fillStyle = cssVar("--text"); ctx.textAlign = "center";
  ctx.font = `700 ${Math.max(16, r * 0.35)}px ${cssVar("--font")}`;
  ctx.fillText(fmt(v), cx, cy - 6);
  ctx.font = "12px " + cssVar("--font"); ctx.fillStyle = cssVar("--muted");
  ctx.fillText(`${fmt(min)} – ${fmt(max)}`, cx, cy + 16);
}

function drawTable(panel, body) {
  const list = panel.data.totalsList();
  if (!list.length) return empty(body);
  const keys = [...new Set(list.flatMap(t => Object.keys(t.dims)))];
  const q = panel.viz.query;
  const table = h("table", { class: "data" },
    h("thead", {}, h("tr", {}, ...(keys.length ? keys : ["series"]).map(k => h("th", { text: k })), h("th", { text: `${q.aggregation || "avg"} (${panel.window()})` }))),
    h("tbody", {}, ...list.map(t => h("tr", { class: keys.length ? "clickable" : "", onclick: () => keys.length && panel.drill(t.dims) },
      ...(keys.length ? keys.map(k => h("td", { text: t.dims[k] ?? "" })) : [h("td", { text: "all" })]),
      h("td", { class: "num", text: fmt(t.value) })))));
  body.replaceChildren(h("div", { class: "table-wrap" }, table));
}

function drawHeatmap(panel, body) {
  const { groups, data } = panel.data.aligned();
  if (!groups.length) return empty(body);
  const { c, ctx, w, h: ht } = canvasFor(body);
  const labelW = Math.min(140, w * 0.3), xs = data[0];
  const rowH = (ht - 18) / groups.length, colW = (w - labelW) / Math.max(xs.length, 1);
  // Colour spans the values present, so differences show even far from zero.
  let max = -Infinity, min = Infinity;
  for (let i = 1; i < data.length; i++) for (const v of data[i]) if (v !== null) { if (v > max) max = v; if (v < min) min = v; }
  const accent = cssVar("--accent");
  for (let r = 0; r < groups.length; r++) {
    for (let x = 0; x < xs.length; x++) {
      const v = data[r + 1][x];
      if (v === null) continue;
      ctx.globalAlpha = 0.1 + 0.9 * (max > min ? (v - min) / (max - min) : 1);
      ctx.fillStyle = accent;
      ctx.fillRect(labelW + x * colW, r * rowH, Math.ceil(colW), Math.ceil(rowH) - 1);
    }
  }
  ctx.globalAlpha = 1; ctx.fillStyle = cssVar("--text"); ctx.font = "11px " + cssVar("--font");
  ctx.textBaseline = "middle"; ctx.textAlign = "left";
  if (rowH >= 10) groups.forEach((g, r) => ctx.fillText(dimsLabel(g.dims).slice(0, 22), 2, r * rowH + rowH / 2));
  ctx.fillStyle = cssVar("--muted");
  if (xs.length) {
    ctx.fillText(new Date(xs[0] * 1000).toLocaleTimeString(), labelW, ht - 8);
    ctx.textAlign = "right"; ctx.fillText(new Date(xs[xs.length - 1] * 1000).toLocaleTimeString(), w, ht - 8);
  }
  c.onclick = ev => {
    const r = Math.floor(ev.offsetY / rowH);
    if (groups[r]) panel.drill(groups[r].dims);
  };
}

function empty(body) {
  body.replaceChildren(h("div", { class: "empty", text: "No data in this window yet" }));
}

// ---------- a panel on the grid ----------

class Panel {
  constructor(board, viz) {
    this.board = board;
    this.viz = viz;
    this.data = new PanelData();
    this.drills = []; // [{dims, group_by}] applied on top of the saved query
    this.visible = true;
    this.dirty = true;
    this.overlay = null;
    this.subId = "panel-" + viz.id;
  }
  window() { return this.board.range || this.viz.query.window || "15m"; }
  query() {
    const q = { ...this.viz.query, window: this.window() };
    delete q.offset;
    const filters = [].concat(q.filter || []);
    for (const d of this.drills) {
      for (const [k, v] of Object.entries(d.dims)) filters.push(`${k}:${v}`);
      q.group_by = d.group_by;
    }
    if (filters.length) q.filter = filters; else delete q.filter;
    if (!q.group_by || (Array.isArray(q.group_by) && !q.group_by.length)) delete q.group_by;
    return q;
  }
  element() {
    const head = h("div", { class: "panel-head" },
      this.liveDot = h("span", { class: "live", title: "live" }),
      h("h2", { text: this.viz.title || this.viz.query.metric }),
      h("div", { class: "panel-menu" },
        h("button", { class: "ghost", title: "Edit panel", "data-act": "edit", onclick: () => this.board.editPanel(this) }, "Edit"),
        h("details", { class: "menu" },
          h("summary", { title: "Export", "data-act": "menu" }, "⋯"),
          h("div", { class: "menu-items" },
            h("button", { class: "ghost", "data-act": "csv", onclick: () => this.exportData("csv") }, "Data as CSV"),
            h("button", { class: "ghost", "data-act": "json", onclick: () => this.exportData("json") }, "Data as JSON"),
            h("button", { class: "ghost", "data-act": "png", onclick: () => this.exportPng() }, "Image (PNG)")))));
    this.crumbs = h("div", { class: "crumbs" });
    this.body = h("div", { class: "panel-body" });
    this.el = h("div", { class: "grid-stack-item-content panel", "data-panel": this.viz.id }, head, this.crumbs, this.body);
    // Redraw at the new size whenever the grid (or the window) resizes the panel.
    this.resizer = new ResizeObserver(() => { this.dirty = true; this.board.schedule(); });
    this.resizer.observe(this.body);
    head.querySelectorAll("button, summary").forEach(b => b.addEventListener("mousedown", e => e.stopPropagation()));
    head.querySelectorAll(".menu-items button").forEach(b => b.addEventListener("click", () => b.closest("details").removeAttribute("open")));
    return this.el;
  }
  start() {
    this.data.reset();
    this.dirty = true;
    live.subscribe(this.subId, this.query(), this.visible ? 20 : 1000, m => this.onLive(m));
    this.renderCrumbs();
    this.loadOverlay();
  }
  stop() { live.unsubscribe(this.subId); if (this.plot) { this.plot.destroy(); this.plot = null; } }
  dispose() { this.stop(); if (this.resizer) this.resizer.disconnect(); }
  setVisible(v) {
    if (v === this.visible) return;
    this.visible = v;
    // Off-screen panels ask the server for at most one update a second.
    live.subscribe(this.subId, this.query(), v ? 20 : 1000, m => this.onLive(m));
  }
  onLive(m) {
    if (m.type === "error") { this.body.replaceChildren(h("div", { class: "empty", text: m.detail || m.error })); return; }
    if (this.board.paused) { this.missed = true; return; }
    if (m.type === "snapshot") { this.data.reset(); this.data.applySeries(m.series); this.granularity = m.granularity_ms; this.windowMs = m.window_ms; }
    this.data.applySeries(m.points);
    this.data.applySeries(m.corrections);
    this.data.applyTotals(m.totals);
    if (this.windowMs) this.data.slide(Date.now() - this.windowMs - (this.granularity || 0));
    this.dirty = true;
    this.board.schedule();
  }
  render() {
    if (!this.dirty || !this.body) return;
    this.dirty = false;
    this.liveDot.classList.toggle("on", live.connected && !this.board.paused);
    const t = this.viz.type;
    if (["line", "area", "bar", "scatter"].includes(t)) {
      if (!this.data.groups.size) { if (this.plot) { this.plot.destroy(); this.plot = null; } return empty(this.body); }
      return drawTimeSeries(this, this.body);
    }
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    if (t === "pie" || t === "donut") return drawPie(this, this.body, t === "donut");
    if (t === "stat") return drawStat(this, this.body);
    if (t === "gauge") return drawGauge(this, this.body);
    if (t === "table") return drawTable(this, this.body);
    if (t === "heatmap") return drawHeatmap(this, this.body);
  }
  async drill(dims) {
    // Filter by the clicked series and group by the next dimension that says more.
    const info = await api.get(`/metrics/${encodeURIComponent(this.viz.query.metric)}/dimensions`);
    const used = new Set([...Object.keys(dims), ...this.drills.flatMap(d => Object.keys(d.dims))]);
    const next = info.dimensions.map(d => d.key).find(k => !used.has(k));
    this.drills.push({ dims, group_by: next || "" });
    this.stop();
    this.start();
  }
  renderCrumbs() {
    this.crumbs.replaceChildren(...this.drills.map((d, i) => h("button", {
      title: "Back out of this drill-down",
      onclick: () => { this.drills = this.drills.slice(0, i); this.stop(); this.start(); },
    }, `${dimsLabel(d.dims)} ✕`)));
  }
  dataPath(format) {
    const q = this.query();
    const p = new URLSearchParams({ start: "now-" + q.window, format });
    if (q.aggregation) p.set("aggregation", q.aggregation);
    if (q.granularity) p.set("granularity", q.granularity);
    if (q.group_by) p.set("group_by", [].concat(q.group_by).join(","));
    for (const f of [].concat(q.filter || [])) p.append("filter", f);
    return `/metrics/${encodeURIComponent(q.metric)}/data?${p}`;
  }
  async exportData(format) {
    try {
      const r = await api.raw(this.dataPath(format));
      download(`${this.viz.title || this.viz.query.metric}.${format}`, await r.blob());
    } catch (e) { toast("Export failed: " + e.message); }
  }
  exportPng() {
    const src = this.body.querySelector("canvas");
    if (!src) return toast("This panel type has no image; export CSV instead");
    const out = h("canvas");
    out.width = src.width; out.height = src.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = cssVar("--panel"); ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(src, 0, 0);
    out.toBlob(b => download(`${this.viz.title || "panel"}.png`, b), "image/png");
  }
  async loadOverlay() {
    const offset = (this.viz.options || {}).overlay_offset;
    clearTimeout(this.overlayTimer);
    if (!offset || !["line", "area", "bar", "scatter"].includes(this.viz.type)) { this.overlay = null; return; }
    try {
      const d = await api.get(this.dataPath("json") + "&offset=" + encodeURIComponent(offset));
      this.overlay = { offset, series: d.series };
      this.plotSig = null;
      this.dirty = true;
      this.board.schedule();
    } catch (e) { console.warn("overlay", e); }
    this.overlayTimer = setTimeout(() => this.loadOverlay(), 60000);
  }
}

// ---------- the dashboard page ----------

class Board {
  constructor(dash) {
    this.dash = dash;
    this.panels = new Map();
    this.range = null;
    this.paused = false;
    this.frame = 0;
  }
  async loadAlerts() {
    const { alerts } = await api.get("/alerts");
    this.rules = new Map(alerts.map(r => [r.id, r]));
    this.firing = new Map();
    for (const r of alerts) for (const st of r.states || []) {
      if (st.state === "firing") this.firing.set(alertKey(r.id, st.dimensions), { rule_id: r.id, rule: r.name, severity: r.severity, condition: r.condition, threshold: r.threshold, value: st.value, dimensions: st.dimensions, band: null });
    }
    this.onAlert = ev => {
      const m = ev.detail;
      const key = alertKey(m.rule_id, m.dimensions);
      if (m.state === "firing") this.firing.set(key, m); else this.firing.delete(key);
      if (m.state === "firing") toast(`${m.condition === "anomaly" ? "Anomaly" : "Alert"}: ${m.rule} (${dimsLabel(m.dimensions)})`);
      this.renderAlerts();
    };
    document.addEventListener("pb-alert", this.onAlert);
    this.renderAlerts();
  }
  // Firing alerts on top of the dashboard, anomalies first; panels on their metric marked.
  renderAlerts() {
    const list = [...this.firing.values()].sort((a, b) => (b.condition === "anomaly") - (a.condition === "anomaly"));
    this.banner.replaceChildren(...list.map(a => h("a", { class: `alert-chip ${a.condition === "anomaly" ? "anomaly" : ""} sev-${a.severity}`, href: "#/alerts" },
      `${a.condition === "anomaly" ? "◆ anomaly" : "● firing"} · ${a.rule}${Object.keys(a.dimensions || {}).length ? " · " + dimsLabel(a.dimensions) : ""} · ${fmt(a.value)}`)));
    this.banner.hidden = !list.length;
    for (const p of this.panels.values()) {
      const mine = list.filter(a => (this.rules.get(a.rule_id) || {}).query?.metric === p.viz.query.metric);
      p.el.classList.toggle("alerting", mine.length > 0);
      p.el.classList.toggle("anomalous", mine.some(a => a.condition === "anomaly"));
      p.plotSig = null;
      p.dirty = true;
    }
    this.schedule();
  }
  // Threshold lines and anomaly bands of the rules on a metric, for charts to draw.
  guides(metric) {
    const out = [];
    for (const r of (this.rules || new Map()).values()) {
      if (r.query?.metric !== metric) continue;
      if (r.condition !== "anomaly" && typeof r.threshold === "number") out.push({ kind: "threshold", value: r.threshold });
    }
    for (const a of (this.firing || new Map()).values()) {
      if (a.band && (this.rules.get(a.rule_id) || {}).query?.metric === metric) out.push({ kind: "band", lower: a.band[0], upper: a.band[1] });
    }
    return out;
  }
  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; for (const p of this.panels.values()) p.render(); });
  }
  mount(main) {
    const controls = $("#controls");
    const range = h("select", { "aria-label": "Time range", id: "range" },
      h("option", { value: "", text: "Panel ranges" }), ...RANGES.map(r => h("option", { value: r, text: "Last " + r })));
    range.onchange = () => { this.range = range.value || null; for (const p of this.panels.values()) { p.stop(); p.start(); } };
    const pause = h("button", { id: "pause", "aria-pressed": "false", title: "Pause live updates" }, "Pause");
    pause.onclick = () => {
      this.paused = !this.paused;
      pause.setAttribute("aria-pressed", String(this.paused));
      pause.textContent = this.paused ? "Resume" : "Pause";
      if (!this.paused) for (const p of this.panels.values()) if (p.missed) { p.missed = false; p.stop(); p.start(); }
      for (const p of this.panels.values()) p.dirty = true;
      this.schedule();
    };
    controls.replaceChildren(range, pause,
      h("button", { id: "add-panel", class: "primary", onclick: () => this.editPanel(null) }, "Add panel"),
      h("button", { id: "export-dashboard", onclick: () => this.exportDashboard() }, "Export"));
    this.gridEl = h("div", { class: "grid-stack" });
    this.banner = h("div", { class: "alert-banner", id: "alert-banner", hidden: true });
    main.replaceChildren(
      this.banner,
      h("div", { class: "page-head" }, h("h1", { text: this.dash.name }),
        this.dash.is_public ? h("span", { class: "badge", text: "public" }) : null,
        h("span", { class: "badge", text: this.dash.description || "" })),
      this.gridEl);
    this.grid = GridStack.init({
      column: 12, cellHeight: 64, margin: 6, handle: ".panel-head",
      columnOpts: { breakpoints: [{ w: 700, c: 1 }, { w: 1100, c: 6 }] },
    }, this.gridEl);
    const pos = new Map((this.dash.layout.panels || []).map(p => [p.id, p]));
    for (const viz of this.dash.visualizations) this.addPanel(viz, pos.get(viz.id));
    this.grid.on("change", () => this.saveLayout());
    this.grid.on("resizestop", (_e, el) => { const p = this.panels.get(Number(el.getAttribute("gs-id"))); if (p) { p.plotSig = null; p.dirty = true; this.schedule(); } });
    this.observer = new IntersectionObserver(entries => {
      for (const e of entries) { const p = this.panels.get(Number(e.target.dataset.panel)); if (p) p.setVisible(e.isIntersecting); }
    });
    for (const p of this.panels.values()) this.observer.observe(p.el);
    this.onResize = () => { for (const p of this.panels.values()) { p.dirty = true; } this.schedule(); };
    window.addEventListener("resize", this.onResize);
    this.onTheme = () => { for (const p of this.panels.values()) { p.plotSig = null; p.dirty = true; } this.schedule(); };
    document.addEventListener("pb-theme", this.onTheme);
    this.onLive = () => { for (const p of this.panels.values()) p.dirty = true; this.schedule(); };
    document.addEventListener("pb-live", this.onLive);
  }
  addPanel(viz, pos) {
    const panel = new Panel(this, viz);
    const item = h("div", { class: "grid-stack-item", "gs-id": viz.id, "gs-x": pos ? pos.x : 0, "gs-y": pos ? pos.y : 1000, "gs-w": pos ? pos.w : 6, "gs-h": pos ? pos.h : 5 }, panel.element());
    this.gridEl.append(item);
    this.grid.makeWidget(item);
    this.panels.set(viz.id, panel);
    if (this.observer) this.observer.observe(panel.el);
    panel.start();
  }
  unmount() {
    for (const p of this.panels.values()) p.dispose();
    if (this.observer) this.observer.disconnect();
    window.removeEventListener("resize", this.onResize);
    document.removeEventListener("pb-theme", this.onTheme);
    document.removeEventListener("pb-live", this.onLive);
    if (this.onAlert) document.removeEventListener("pb-alert", this.onAlert);
    if (this.grid) this.grid.destroy(false);
    $("#controls").replaceChildren();
  }
  async saveLayout() {
    // Only the full-width layout is saved: the phone and tablet columns are derived from it.
    if (this.grid.getColumn() !== 12) return;
    const panels = this.grid.save(false).map(n => ({ id: Number(n.id), x: n.x || 0, y: n.y || 0, w: n.w || 1, h: n.h || 1 }));
    const layout = { ...this.dash.layout, panels };
    try {
      const d = await api.put(`/dashboards/${this.dash.id}`, { layout, version: this.dash.version });
      this.dash.version = d.version;
      this.dash.layout = d.layout;
    } catch (e) {
      toast("Layout not saved: " + e.message);
    }
  }
  async exportDashboard() {
    const doc = await api.get(`/dashboards/${this.dash.id}/export`);
    download(`${this.dash.name}.json`, new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
  }
  async editPanel(panel) {
    const viz = panel ? panel.viz : { title: "", type: "", query: { metric: "", aggregation: "sum", window: "15m" }, options: {} };
    const metrics = (await api.get("/metrics")).metrics.map(m => m.name);
    const q = viz.query;
    const f = {
      title: h("input", { id: "f-title", value: viz.title || "" }),
      metric: h("input", { id: "f-metric", list: "metric-list", value: q.metric || "", required: true }),
      aggregation: h("select", { id: "f-aggregation" }, ...AGGREGATIONS.map(a => h("option", { value: a, text: a, selected: a === (q.aggregation || "avg") }))),
      window: h("select", { id: "f-window" }, ...RANGES.map(r => h("option", { value: r, text: "Last " + r, selected: r === (q.window || "15m") }))),
      granularity: h("input", { id: "f-granularity", placeholder: "auto (e.g. 1s, 10s, 1m)", value: q.granularity || "" }),
      group_by: h("input", { id: "f-group-by", list: "dim-list", placeholder: "e.g. country", value: [].concat(q.group_by || []).join(",") }),
      filter: h("input", { id: "f-filter", placeholder: "key:value, key:!value", value: [].concat(q.filter || []).join(", ") }),
      overlay: h("select", { id: "f-overlay" }, ...[["", "None"], ["1h", "1 hour ago"], ["1d", "1 day ago"], ["7d", "7 days ago"]].map(([v, t]) => h("option", { value: v, text: t, selected: v === ((viz.options || {}).overlay_offset || "") }))),
    };
    let type = viz.type;
    const dimList = h("datalist", { id: "dim-list" });
    const typeBtns = h("div", { class: "types", id: "f-types" });
    const current = () => ({
      metric: f.metric.value.trim(), aggregation: f.aggregation.value, window: f.window.value,
      ...(f.granularity.value.trim() ? { granularity: f.granularity.value.trim() } : {}),
      ...(f.group_by.value.trim() ? { group_by: f.group_by.value.trim() } : {}),
      ...(parseFilter(f.filter.value).length ? { filter: parseFilter(f.filter.value) } : {}),
    });
    const drawTypes = () => {
      const s = suggestType(current(), panel && panel.data);
      if (!type) type = s;
      typeBtns.replaceChildren(...CHART_TYPES.map(t => h("button", {
        type: "button", "data-type": t, class: t === s ? "suggested" : "", "aria-pressed": String(t === type),
        title: t === s ? "Suggested for this query" : "", onclick: () => { type = t; drawTypes(); },
      }, t)));
    };
    const loadDims = async () => {
      const m = f.metric.value.trim();
      if (!metrics.includes(m)) return;
      const d = await api.get(`/metrics/${encodeURIComponent(m)}/dimensions`);
      dimList.replaceChildren(...d.dimensions.map(k => h("option", { value: k.key })));
    };
    f.metric.onchange = () => { loadDims(); drawTypes(); };
    f.group_by.oninput = drawTypes;
    f.aggregation.onchange = drawTypes;
    const err = h("div", { class: "error" });
    const field = (label, el, wide) => h("div", { class: wide ? "wide" : "" }, h("label", { for: el.id, text: label }), el);
    const close = () => back.remove();
    const save = async () => {
      const body = { title: f.title.value.trim(), type, query: current(), options: { ...(viz.options || {}), overlay_offset: f.overlay.value || undefined } };
      try {
        if (panel) {
          const v = await api.put(`/dashboards/${this.dash.id}/visualizations/${viz.id}`, body);
          panel.viz = v; panel.drills = []; panel.plotSig = null;
          panel.el.querySelector("h2").textContent = v.title || v.query.metric;
          panel.stop(); panel.start();
        } else {
          const v = await api.post(`/dashboards/${this.dash.id}/visualizations`, body);
          const d = await api.get(`/dashboards/${this.dash.id}`);
          this.dash.version = d.version; this.dash.layout = d.layout;
          this.addPanel(v, (d.layout.panels || []).find(p => p.id === v.id));
        }
        close();
      } catch (e) { err.textContent = e.message; }
    };
    const remove = async () => {
      if (!confirm("Delete this panel?")) return;
      await api.del(`/dashboards/${this.dash.id}/visualizations/${viz.id}`);
      panel.stop();
      this.grid.removeWidget(panel.el.parentElement);
      this.panels.delete(viz.id);
      const d = await api.get(`/dashboards/${this.dash.id}`);
      this.dash.version = d.version; this.dash.layout = d.layout;
      close();
    };
    const back = h("div", { class: "modal-back", onclick: e => { if (e.target === back) close(); } },
      h("form", { class: "modal", onsubmit: e => { e.preventDefault(); save(); } },
        h("h2", { text: panel ? "Edit panel" : "New panel" }),
        h("div", { class: "form-grid" },
          field("Title", f.title, true), field("Metric", f.metric), field("Aggregation", f.aggregation),
          field("Window", f.window), field("Granularity", f.granularity),
          field("Group by", f.group_by), field("Filter", f.filter),
          field("Compare with", f.overlay),
          h("div", { class: "wide" }, h("label", { text: "Chart type (★ suggested)" }), typeBtns)),
        h("datalist", { id: "metric-list" }, ...metrics.map(m => h("option", { value: m }))), dimList,
        err,
        h("div", { class: "actions" },
          panel ? h("button", { type: "button", class: "danger", onclick: remove }, "Delete") : null,
          h("div", { class: "spacer" }),
          h("button", { type: "button", onclick: close }, "Cancel"),
          h("button", { type: "submit", class: "primary", id: "f-save" }, "Save"))));
    document.body.append(back);
    drawTypes();
    loadDims();
    f.metric.focus();
  }
}

// ---------- alerts ----------

const CONDITIONS = [">", ">=", "<", "<=", "==", "!=", "anomaly"];

function alertKey(ruleId, dims) { return `${ruleId}|${JSON.stringify(Object.entries(dims || {}).sort())}`; }

function ruleSummary(r) {
  const q = r.query || {};
  const what = `${q.aggregation || "avg"}(${q.metric}) over ${q.window || "15m"}`;
  const cond = r.condition === "anomaly" ? `anomalous (${r.sensitivity || "medium"})` : `${r.condition} ${r.threshold}`;
  return `${what} ${cond}${r.for ? ` for ${r.for}` : ""}${q.group_by ? ` · per ${[].concat(q.group_by).join(",")}` : ""}`;
}

function editRule(rule, done) {
  const q = rule ? rule.query : { aggregation: "avg", window: "1m" };
  const hook = rule && (rule.notification_channels || []).find(c => c.type === "webhook");
  const f = {
    name: h("input", { id: "r-name", value: rule ? rule.name : "" }),
    metric: h("input", { id: "r-metric", value: q.metric || "" }),
    aggregation: h("select", { id: "r-aggregation" }, ...AGGREGATIONS.map(a => h("option", { value: a, text: a, selected: a === (q.aggregation || "avg") }))),
    window: h("input", { id: "r-window", value: q.window || "1m" }),
    group_by: h("input", { id: "r-group-by", placeholder: "e.g. host", value: [].concat(q.group_by || []).join(",") }),
    filter: h("input", { id: "r-filter", placeholder: "key:value, key:!value", value: [].concat(q.filter || []).join(", ") }),
    condition: h("select", { id: "r-condition" }, ...CONDITIONS.map(c => h("option", { value: c, text: c, selected: c === (rule ? rule.condition : ">") }))),
    threshold: h("input", { id: "r-threshold", type: "number", step: "any", value: rule && rule.threshold !== undefined ? rule.threshold : "" }),
    sensitivity: h("select", { id: "r-sensitivity" }, ...["low", "medium", "high"].map(x => h("option", { value: x, text: x, selected: x === ((rule && rule.sensitivity) || "medium") }))),
    for: h("input", { id: "r-for", placeholder: "e.g. 1m", value: (rule && rule.for) || "" }),
    severity: h("select", { id: "r-severity" }, ...["info", "warning", "critical"].map(x => h("option", { value: x, text: x, selected: x === ((rule && rule.severity) || "warning") }))),
    webhook: h("input", { id: "r-webhook", placeholder: "https://… (optional)", value: hook ? hook.url : "" }),
  };
  const err = h("div", { class: "error" });
  const field = (label, el, wide) => h("div", { class: wide ? "wide" : "" }, h("label", { for: el.id, text: label }), el);
  const back = h("div", { class: "modal-back", onclick: e => { if (e.target === back) back.remove(); } });
  const save = async () => {
    const query = { metric: f.metric.value.trim(), aggregation: f.aggregation.value, window: f.window.value.trim() || "1m" };
    if (f.group_by.value.trim()) query.group_by = f.group_by.value.trim();
    if (parseFilter(f.filter.value).length) query.filter = parseFilter(f.filter.value);
    const channels = [{ type: "websocket" }, { type: "log" }];
    if (f.webhook.value.trim()) channels.push({ type: "webhook", url: f.webhook.value.trim() });
    const body = {
      name: f.name.value.trim(), query, condition: f.condition.value, severity: f.severity.value,
      notification_channels: channels,
    };
    if (f.condition.value === "anomaly") body.sensitivity = f.sensitivity.value;
    else body.threshold = f.threshold.value === "" ? null : Number(f.threshold.value);
    if (f.for.value.trim()) body.for = f.for.value.trim();
    try {
      if (rule) await api.put(`/alerts/${rule.id}`, { ...body, version: rule.version });
      else await api.post("/alerts", body);
      back.remove();
      done();
    } catch (e) { err.textContent = e.message; }
  };
  back.append(h("form", { class: "modal", onsubmit: e => { e.preventDefault(); save(); } },
    h("h2", { text: rule ? "Edit alert rule" : "New alert rule" }),
    h("div", { class: "form-grid" },
      field("Name", f.name, true), field("Metric", f.metric), field("Aggregation", f.aggregation),
      field("Window", f.window), field("Group by (alert per group)", f.group_by), field("Filter", f.filter, true),
      field("Condition", f.condition), field("Threshold", f.threshold), field("Anomaly sensitivity", f.sensitivity),
      field("For (hold before firing)", f.for), field("Severity", f.severity), field("Webhook", f.webhook, true)),
    err,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => back.remove() }, "Cancel"),
      h("button", { type: "submit", class: "primary", id: "r-save" }, "Save"))));
  document.body.append(back);
  f.name.focus();
}

async function showAlerts(main) {
  const [{ alerts }, { events }] = await Promise.all([api.get("/alerts"), api.get("/alerts/events?limit=50")]);
  const reload = () => route();
  $("#controls").replaceChildren(h("button", { class: "primary", id: "new-rule", onclick: () => editRule(null, reload) }, "New rule"));
  const stateBadge = r => {
    const firing = (r.states || []).filter(s => s.state === "firing");
    const pending = (r.states || []).filter(s => s.state === "pending");
    if (firing.length) return h("span", { class: `badge firing ${r.condition === "anomaly" ? "anomaly" : ""}`, text: `firing ×${firing.length}` });
    if (pending.length) return h("span", { class: "badge pending", text: `pending ×${pending.length}` });
    return h("span", { class: "badge ok", text: "ok" });
  };
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { text: "Alert rules" })),
    alerts.length ? h("div", { class: "rules" }, ...alerts.map(r => h("div", { class: "card rule", "data-rule": r.id },
      h("div", { class: "rule-head" }, h("h3", { text: r.name }), stateBadge(r), h("span", { class: `badge sev-${r.severity}`, text: r.severity }),
        h("div", { class: "spacer" }),
        h("button", { class: "ghost", onclick: () => editRule(r, reload) }, "Edit"),
        h("button", { class: "ghost danger", onclick: async () => { if (confirm(`Delete ${r.name}?`)) { await api.del(`/alerts/${r.id}`); reload(); } } }, "Delete")),
      h("p", { text: ruleSummary(r) }),
      ...(r.states || []).filter(s => s.state === "firing").map(s => h("p", { class: "firing-line", text: `● ${dimsLabel(s.dimensions)} = ${fmt(s.value)} since ${new Date(s.since_ms).toLocaleTimeString()}` })))))
      : h("div", { class: "empty", text: "No alert rules yet." }),
    h("div", { class: "page-head history-head" }, h("h1", { text: "History" })),
    h("div", { class: "card" }, events.length ? h("table", { class: "data", id: "alert-history" },
      h("thead", {}, h("tr", {}, ...["time", "rule", "group", "state", "value", "severity"].map(t => h("th", { text: t })))),
      h("tbody", {}, ...events.map(e => h("tr", {},
        h("td", { text: new Date(e.at).toLocaleString() }), h("td", { text: e.rule }), h("td", { text: dimsLabel(e.dimensions) }),
        h("td", {}, h("span", { class: `badge ${e.state}`, text: e.state })), h("td", { class: "num", text: fmt(e.value) }), h("td", { text: e.severity })))))
      : h("div", { class: "empty", text: "Nothing has fired yet." })));
}

// ---------- pages ----------

let board = null;

function showLogin(main) {
  const user = h("input", { id: "username", autocomplete: "username", value: "admin" });
  const pass = h("input", { id: "password", type: "password", autocomplete: "current-password" });
  const err = h("div", { class: "error" });
  main.replaceChildren(h("form", {
    class: "login", onsubmit: async e => {
      e.preventDefault();
      try {
        const r = await api.post("/auth/login", { username: user.value, password: pass.value });
        api.token = r.token;
        localStorage.setItem("pb.token", r.token);
        location.hash = "#/";
      } catch (x) { err.textContent = x.message; }
    },
  }, h("h1", { text: "Sign in to Pulseboard" }),
  h("div", { class: "field" }, h("label", { for: "username", text: "Username" }), user),
  h("div", { class: "field" }, h("label", { for: "password", text: "Password" }), pass),
  err, h("button", { class: "primary", type: "submit", id: "login" }, "Sign in")));
  pass.focus();
}

function newDashboard() {
  const name = h("input", { id: "d-name", required: true, placeholder: "e.g. Ad campaigns" });
  const description = h("input", { id: "d-description", placeholder: "optional" });
  const err = h("div", { class: "error" });
  const back = h("div", { class: "modal-back", onclick: e => { if (e.target === back) back.remove(); } },
    h("form", {
      class: "modal", onsubmit: async e => {
        e.preventDefault();
        try {
          const d = await api.post("/dashboards", { name: name.value.trim(), description: description.value.trim() });
          back.remove();
          location.hash = `#/d/${d.id}`;
        } catch (x) { err.textContent = x.message; }
      },
    }, h("h2", { text: "New dashboard" }),
    h("div", { class: "form-grid" },
      h("div", { class: "wide" }, h("label", { for: "d-name", text: "Name" }), name),
      h("div", { class: "wide" }, h("label", { for: "d-description", text: "Description" }), description)),
    err,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => back.remove() }, "Cancel"),
      h("button", { type: "submit", class: "primary", id: "d-create" }, "Create"))));
  document.body.append(back);
  name.focus();
}

async function showList(main) {
  const { dashboards } = await api.get("/dashboards");
  const file = h("input", { type: "file", accept: "application/json", hidden: true, id: "import-file" });
  file.onchange = async () => {
    try {
      const doc = JSON.parse(await file.files[0].text());
      const d = await api.post("/dashboards/import", doc);
      location.hash = `#/d/${d.id}`;
    } catch (e) { toast("Import failed: " + e.message); }
  };
  $("#controls").replaceChildren(
    h("button", { class: "primary", id: "new-dashboard", onclick: newDashboard }, "New dashboard"),
    h("button", { onclick: () => file.click() }, "Import"), file);
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { text: "Dashboards" })),
    dashboards.length
      ? h("div", { class: "cards" }, ...dashboards.map(d => h("a", { class: "card", href: `#/d/${d.id}` },
        h("h3", { text: d.name }), h("p", { text: d.description || "" }),
        h("p", {}, h("span", { class: "badge", text: `${d.visualization_count} panels` }), " ", d.is_public ? h("span", { class: "badge", text: "public" }) : null))))
      : h("div", { class: "empty", text: "No dashboards yet: create one, or run `pulseboard demo`." }));
}

async function showDashboard(main, id) {
  const dash = await api.get(`/dashboards/${id}`);
  board = new Board(dash);
  board.mount(main);
  await board.loadAlerts();
}

async function route() {
  if (board) { board.unmount(); board = null; }
  $("#controls").replaceChildren();
  document.querySelectorAll(".modal-back").forEach(m => m.remove());
  const main = $("#main");
  const hash = location.hash || "#/";
  $("#logout").hidden = !api.token;
  $("#nav").replaceChildren(...(api.token ? [
    h("a", { href: "#/", class: hash === "#/" ? "active" : "" }, "Dashboards"),
    h("a", { href: "#/alerts", id: "nav-alerts", class: hash.startsWith("#/alerts") ? "active" : "" }, "Alerts"),
  ] : []));
  if (api.token) live.open();
  if (!api.token && !hash.startsWith("#/login")) { location.hash = "#/login"; return; }
  try {
    if (hash.startsWith("#/login")) return showLogin(main);
    const m = hash.match(/^#\/d\/(\d+)/);
    if (m) return await showDashboard(main, m[1]);
    if (hash.startsWith("#/alerts")) return await showAlerts(main);
    return await showList(main);
  } catch (e) {
    main.replaceChildren(h("div", { class: "empty", text: e.message }));
  }
}

$("#theme").onclick = () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  localStorage.setItem("pb.theme", next);
  document.dispatchEvent(new Event("pb-theme"));
};
$("#logout").onclick = logout;
window.addEventListener("hashchange", route);
route();
