/* ems dashboard: small SVG charts, no library. Data goes in only via textContent
   and attributes set to numbers or fixed strings. */
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

const COLORS = {
  pv: "#e0a800", load: "#e8615a", grid: "#4c82e6", battery: "#2eb67d", chp: "#a970ff",
  steam: "#ff8c42", heat: "#b5835a", gas: "#8e9aaf", soc: "#2eb67d",
  grid_import: "#4c82e6", grid_export: "#9db8f0", battery_discharge: "#2eb67d",
  battery_charge: "#8fd9b6", boiler: "#b5835a", waste_heat: "#d9b38c", chp_heat: "#a970ff",
  natural_gas: "#8e9aaf", output: "#666",
};
const LABELS = {
  pv: "PV", load: "Load", grid: "Grid (import +)", battery: "Battery (discharge +)", chp: "CHP",
  steam: "Steam", heat: "Boiler + recovered heat", gas: "Gas [m³/h]",
  grid_import: "Grid import", grid_export: "Grid export", battery_discharge: "Battery out",
  battery_charge: "Battery in", boiler: "Boiler", waste_heat: "Recovered heat", chp_heat: "CHP heat",
  natural_gas: "Natural gas", output: "Output",
};

function el(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs || {}) e.setAttribute(k, String(attrs[k]));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function niceStep(span, n) {
  const raw = span / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

function fmtNum(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  const d = digits !== undefined ? digits : (a >= 100 ? 0 : a >= 10 ? 1 : 2);
  const r = a < 0.5 * Math.pow(10, -d) ? 0 : v; // never "-0" (the rule of ems/formatting.py)
  // with digits given: that many decimals, always (fixed per quantity); axis ticks stay short
  return r.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: digits !== undefined ? d : 0 });
}

function timeFormatter(tz, spanMs) {
  const day = 86400000;
  const opts = spanMs <= 1.5 * day ? { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }
    : spanMs <= 8 * day ? { weekday: "short", day: "numeric", hour: "2-digit", hourCycle: "h23" }
    : { month: "short", day: "numeric" };
  try { return new Intl.DateTimeFormat("en-GB", Object.assign({ timeZone: tz }, opts)); }
  catch (e) { return new Intl.DateTimeFormat("en-GB", Object.assign({ timeZone: "UTC" }, opts)); }
}

/* axes and frame; returns scales */
function frame(svg, t0, t1, lo, hi, tz, unit) {
  const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height;
  const m = { l: 64, r: 16, t: 22, b: 28 };
  if (hi <= lo) { hi = lo + 1; }
  const step = niceStep(hi - lo, 5);
  lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
  const x = (t) => m.l + (W - m.l - m.r) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => H - m.b - (H - m.t - m.b) * (v - lo) / (hi - lo);
  const g = el("g", { class: "axes" });
  for (let v = lo; v <= hi + step / 2; v += step) {
    g.appendChild(el("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: v === 0 ? "zero" : "gridline" }));
    g.appendChild(el("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v)));
  }
  const f = timeFormatter(tz, t1 - t0);
  const n = 6;
  for (let i = 0; i <= n; i++) {
    const t = t0 + (t1 - t0) * i / n;
    g.appendChild(el("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4, class: "tick" }));
    g.appendChild(el("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === n ? "end" : "middle" }, f.format(new Date(t))));
  }
  g.appendChild(el("text", { x: m.l - 6, y: 11, class: "unit", "text-anchor": "end" }, unit || ""));
  svg.appendChild(g);
  return { x, y, m, W, H, lo, hi };
}

function eventMarkers(svg, sc, events, t0, t1, tz) {
  const f = timeFormatter(tz, 0);
  const g = el("g", { class: "events" });
  for (const ev of events || []) {
    if (ev.ts_ms < t0 || ev.ts_ms > t1) continue;
    const x = sc.x(ev.ts_ms);
    const mk = el("g", { class: "event ev-" + (ev.kind || "").replace(/[^a-z_]/g, "") });
    mk.appendChild(el("line", { x1: x, x2: x, y1: sc.m.t, y2: sc.H - sc.m.b }));
    mk.appendChild(el("path", { d: `M${x - 5},${sc.m.t} L${x + 5},${sc.m.t} L${x},${sc.m.t + 8} Z` }));
    const when = new Intl.DateTimeFormat("en-GB", { timeZone: tz, dateStyle: "medium", timeStyle: "short" });
    let tip = `${ev.kind} ${ev.subject}`;
    if (ev.value !== null && ev.value !== undefined) tip += ` ${fmtNum(ev.value)} ${ev.unit || ""}`;
    try { tip += ` at ${when.format(new Date(ev.ts_ms))}`; } catch (e) { tip += ` at ${f.format(new Date(ev.ts_ms))}`; }
    mk.appendChild(el("title", {}, tip));
    g.appendChild(mk);
  }
  svg.appendChild(g);
}

function legend(node, names) {
  clear(node);
  for (const n of names) {
    const s = document.createElement("span");
    s.className = "key";
    const sw = document.createElement("i");
    sw.style.background = COLORS[n] || "#999";
    s.appendChild(sw);
    s.appendChild(document.createTextNode(LABELS[n] || n));
    node.appendChild(s);
  }
}

/* line chart: t [ms], series {name: [v|null]} */
function lineChart(svg, t, series, opts) {
  clear(svg);
  const names = Object.keys(series).filter((k) => k !== "gas");
  let lo = 0, hi = 0;
  for (const n of names) for (const v of series[n]) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const t0 = opts.t0, t1 = opts.t1;
  const sc = frame(svg, t0, t1, lo, hi, opts.tz, opts.unit);
  for (const n of names) {
    let d = "", pen = false;
    series[n].forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += (pen ? "L" : "M") + sc.x(t[i]).toFixed(1) + "," + sc.y(v).toFixed(1);
      pen = true;
    });
    svg.appendChild(el("path", { d: d || "M0,0", class: "series s-" + n, stroke: COLORS[n] || "#999", fill: "none" }));
  }
  eventMarkers(svg, sc, opts.events, t0, t1, opts.tz);
  if (opts.legend) legend(opts.legend, names);
  return names;
}

/* stacked bar chart: t [ms] bucket ends, series {name: [v]} (all >= 0) */
function barChart(svg, t, series, opts) {
  clear(svg);
  const names = Object.keys(series);
  const tot = t.map((_, i) => names.reduce((a, n) => a + (series[n][i] || 0), 0));
  const hi = Math.max(1e-9, ...tot, 0);
  const dt = t.length > 1 ? t[1] - t[0] : (opts.t1 - opts.t0);
  const t0 = opts.t0, t1 = opts.t1;
  const sc = frame(svg, t0, t1, 0, hi, opts.tz, opts.unit);
  const w = Math.max(1, sc.x(t0 + dt) - sc.x(t0) - 1);
  const base = t.map(() => 0);
  for (const n of names) {
    const g = el("g", { class: "bars s-" + n, fill: COLORS[n] || "#999" });
    series[n].forEach((v, i) => {
      if (!v) return;
      const y1 = sc.y(base[i] + v), y0 = sc.y(base[i]);
      g.appendChild(el("rect", { x: (sc.x(t[i] - dt) + 0.5).toFixed(1), y: y1.toFixed(1), width: w.toFixed(1), height: Math.max(0.5, y0 - y1).toFixed(1) }));
      base[i] += v;
    });
    svg.appendChild(g);
  }
  eventMarkers(svg, sc, opts.events, t0, t1, opts.tz);
  if (opts.legend) legend(opts.legend, names);
  return names;
}

function fmtPower(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  return Math.abs(v) >= 10000 ? fmtNum(v / 1000, 1) + " MW" : fmtNum(v, 0) + " kW";
}

/* power-flow diagram: node positions fixed, arrows by sign, width by magnitude */
function flowDiagram(svg, flows, soc) {
  clear(svg);
  const defs = el("defs");
  const mk = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 8, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 16, markerHeight: 16, orient: "auto-start-reverse" });
  mk.appendChild(el("path", { d: "M0,0 L10,5 L0,10 Z", fill: "context-stroke" }));
  defs.appendChild(mk);
  svg.appendChild(defs);
  const hub = { x: 260, y: 160 };
  const nodes = {
    pv: { x: 90, y: 55, label: "PV" }, grid: { x: 60, y: 160, label: "Grid" },
    battery: { x: 90, y: 265, label: "Battery" }, chp: { x: 430, y: 55, label: "CHP" },
    load: { x: 460, y: 160, label: "Load" }, steam: { x: 430, y: 265, label: "Steam" },
  };
  const f = flows || {};
  const mags = ["pv", "grid", "battery", "chp", "load", "steam"].map((k) => Math.abs(f[k] || 0));
  const maxv = Math.max(1, ...mags);
  const edges = [
    // [node, value, positive means into the hub]
    ["pv", f.pv, true], ["grid", f.grid, true], ["battery", f.battery, true],
    ["chp", f.chp, true], ["load", f.load, false], ["steam", f.steam, true],
  ];
  for (const [k, v, inward] of edges) {
    if (v === undefined || v === null) continue;
    const n = nodes[k];
    const into = inward ? v >= 0 : v < 0;
    const a = into ? n : hub, b = into ? hub : n;
    const w = 1.5 + 9 * Math.abs(v) / maxv;
    const idle = Math.abs(v) < 0.05;
    const dx = b.x - a.x, dy = b.y - a.y, L = Math.hypot(dx, dy);
    const pa = { x: a.x + dx * 34 / L, y: a.y + dy * 34 / L }, pb = { x: b.x - dx * 34 / L, y: b.y - dy * 34 / L };
    svg.appendChild(el("line", {
      x1: pa.x, y1: pa.y, x2: pb.x, y2: pb.y, stroke: COLORS[k], "stroke-width": w.toFixed(1),
      class: "edge e-" + k + (idle ? " idle" : ""), "marker-end": idle ? "" : "url(#arrow)",
    }));
    const lx = (a.x + b.x) / 2, ly = (a.y + b.y) / 2 - 8;
    svg.appendChild(el("text", { x: lx, y: ly, class: "edge-label", "text-anchor": "middle" }, fmtPower(Math.abs(v))));
  }
  svg.appendChild(el("circle", { cx: hub.x, cy: hub.y, r: 26, class: "hub" }));
  svg.appendChild(el("text", { x: hub.x, y: hub.y + 4, "text-anchor": "middle", class: "hub-label" }, "site"));
  for (const k in nodes) {
    const n = nodes[k];
    const present = f[k] !== undefined && f[k] !== null;
    const g = el("g", { class: "node n-" + k + (present ? "" : " absent") });
    g.appendChild(el("circle", { cx: n.x, cy: n.y, r: 30, stroke: COLORS[k] }));
    g.appendChild(el("text", { x: n.x, y: n.y - 2, "text-anchor": "middle", class: "node-label" }, n.label));
    let sub = present ? fmtPower(f[k]) : "none";
    if (k === "battery" && soc !== null && soc !== undefined) sub = fmtNum(soc, 0) + " % SOC";
    g.appendChild(el("text", { x: n.x, y: n.y + 13, "text-anchor": "middle", class: "node-sub" }, sub));
    svg.appendChild(g);
  }
}

window.emsCharts = { lineChart, barChart, flowDiagram, fmtNum, timeFormatter, COLORS, LABELS };
