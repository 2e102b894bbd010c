/* ems dashboard: overview tiles and a per-site view, polling the JSON API.
   Every string from the data is written with textContent, never as HTML. */
"use strict";

(function () {
  const C = window.emsCharts;
  const fmt = C.fmtNum;
  const POLL_MS = 1000;
  const state = { route: null, range: "day", carrier: "electricity", version: -1, timer: null, busy: false };

  const $ = (id) => document.getElementById(id);

  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); }

  function when(ms, tz, style) {
    if (ms === null || ms === undefined) return "–";
    const o = style === "long" ? { dateStyle: "medium", timeStyle: "short" } : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    try { return new Intl.DateTimeFormat("en-GB", Object.assign({ timeZone: tz }, o)).format(new Date(ms)); }
    catch (e) { return new Date(ms).toISOString(); }
  }
  const pct = (v) => (v === null || v === undefined ? "–" : fmt(100 * v, 1) + " %");

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  function setConn(ok, text) {
    const c = $("conn");
    c.dataset.state = ok ? "ok" : "error";
    c.textContent = text;
  }

  function statusPill(node, status) {
    const s = (status && status.state) || "unknown";
    node.className = "pill st-" + s.replace(/[^a-z]/g, "");
    node.textContent = s;
    node.title = status && status.source === "mqtt" ? "from the MQTT site status" : "from the age of the newest reading";
  }

  /* ------------------------------------------------------------ overview */
  const FLOW_ROWS = [
    ["pv", "PV", "kW"], ["load", "Load", "kW"], ["grid", "Grid", "kW"], ["battery", "Battery", "kW"],
    ["chp", "CHP", "kW"], ["steam", "Steam", "kW"],
  ];

  function greenTarget(targets) {
    return (targets || []).find((t) => t.metric === "green_share" && t.kind === "level") || null;
  }

  function kpiTable(today, year, targets) {
    const t = h("table", "kpis");
    const head = h("tr");
    head.appendChild(h("th", "", ""));
    head.appendChild(h("th", "", "Today"));
    head.appendChild(h("th", "", "Year"));
    t.appendChild(head);
    const gt = greenTarget(targets);
    const rows = [
      ["Energy", "total_tce", "tce", (v) => fmt(v, 1)],
      ["Electricity", "electricity_consumed_kwh", "MWh", (v) => fmt(v === null || v === undefined ? v : v / 1000, 1)],
      ["Intensity", "tce_per_10k_rmb", "kgce/RMB 10k", (v) => fmt(v === null || v === undefined ? v : 1000 * v, 2)],
      ["Green share", "green_share", gt ? "target " + fmt(100 * gt.target_value, 0) + " % by " + gt.target_year : "", pct],
      ["Hourly-matched (CFE)", "cfe", "green share hour by hour", pct],
      ["Emissions", "scope12_market_t", "tCO₂e (S1+2 market)", (v) => fmt(v, 1)],
    ];
    for (const [label, key, unit, f] of rows) {
      const tr = h("tr", "k-" + key);
      const th = h("th", "");
      th.appendChild(h("span", "", label));
      if (unit) th.appendChild(h("small", "", unit));
      tr.appendChild(th);
      tr.appendChild(h("td", "today", f(today ? today[key] : null)));
      const y = h("td", "year", f(year ? year[key] : null));
      if (key === "green_share" && gt && year && year[key] !== null && year[key] !== undefined) {
        y.classList.add(year[key] >= gt.target_value ? "good" : "behind");
      }
      tr.appendChild(y);
      t.appendChild(tr);
    }
    return t;
  }

  function tile(s) {
    const a = h("a", "tile");
    a.href = "#/site/" + encodeURIComponent(s.site);
    a.dataset.site = s.site;
    const top = h("div", "tile-head");
    const names = h("div");
    names.appendChild(h("div", "tile-name", s.name));
    names.appendChild(h("div", "tile-sub", s.site + " · " + s.park));
    top.appendChild(names);
    const pill = h("span");
    statusPill(pill, s.status);
    top.appendChild(pill);
    a.appendChild(top);

    const f = s.flows || {};
    const flows = h("div", "flows");
    for (const [k, label, unit] of FLOW_ROWS) {
      if (f[k] === undefined || f[k] === null) continue;
      const row = h("div", "flow f-" + k);
      row.appendChild(h("span", "dot"));
      row.appendChild(h("span", "flow-label", label));
      const v = h("span", "flow-value v-" + k, fmt(f[k], 0));
      row.appendChild(v);
      row.appendChild(h("span", "flow-unit", unit));
      let note = "";
      if (k === "grid") note = f[k] >= 0 ? "import" : "export";
      if (k === "battery") note = Math.abs(f[k]) < 0.05 ? "idle" : f[k] > 0 ? "discharge" : "charge";
      row.appendChild(h("span", "flow-note", note));
      flows.appendChild(row);
    }
    if (f.soc_pct !== null && f.soc_pct !== undefined) {
      const row = h("div", "flow soc");
      row.appendChild(h("span", "flow-label", "State of charge"));
      const bar = h("span", "socbar");
      const fill = h("i");
      fill.style.width = Math.max(0, Math.min(100, f.soc_pct)).toFixed(0) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(h("span", "flow-value v-soc", fmt(f.soc_pct, 0)));
      row.appendChild(h("span", "flow-unit", "%"));
      flows.appendChild(row);
    }
    const gi = s.today ? s.today.grid_intensity_kg_per_kwh : null;
    if (gi !== null && gi !== undefined) {
      const row = h("div", "flow f-intensity");
      row.appendChild(h("span", "dot"));
      row.appendChild(h("span", "flow-label", "Grid intensity"));
      row.appendChild(h("span", "flow-value v-intensity", fmt(gi, 3)));
      row.appendChild(h("span", "flow-unit", "kgCO₂/kWh"));
      row.title = "the grid's average carbon intensity in the newest hour, " +
        (s.today.grid_intensity_method || "") + " (docs/grid-intensity.md)";
      flows.appendChild(row);
    }
    a.appendChild(flows);
    a.appendChild(kpiTable(s.today, s.year, s.targets));
    const foot = h("div", "tile-foot");
    foot.appendChild(h("span", "last-ts", "last reading " + when(f.last_ts_ms, s.tz)));
    foot.appendChild(h("span", "tz", s.tz));
    a.appendChild(foot);
    if (s.error) a.appendChild(h("div", "err", s.error));
    return a;
  }

  function renderGroup(group) {
    const g = $("group");
    clear(g);
    for (const key of Object.keys(group || {})) {
      const y = group[key];
      const card = h("div", "group-card");
      card.appendChild(h("div", "group-name", "Group " + key + " · " + (y.period || "")));
      const items = [
        ["Energy", fmt(y.total_tce, 1), "tce"], ["Electricity", fmt((y.electricity_consumed_kwh || 0) / 1000, 1), "MWh"],
        ["Intensity", fmt(y.tce_per_10k_rmb === null || y.tce_per_10k_rmb === undefined ? null : 1000 * y.tce_per_10k_rmb, 2), "kgce/RMB 10k"], ["Green share", pct(y.green_share), ""],
        ["Emissions", fmt(y.scope12_market_t, 1), "tCO₂e"],
      ];
      for (const [label, v, unit] of items) {
        const it = h("div", "gk");
        it.appendChild(h("div", "gk-label", label));
        const val = h("div", "gk-value", v);
        if (unit) val.appendChild(h("small", "", " " + unit));
        it.appendChild(val);
        card.appendChild(it);
      }
      g.appendChild(card);
    }
  }

  async function pollOverview() {
    const data = await getJSON("/api/overview");
    setConn(true, "live · " + new Date(data.server_ms).toLocaleTimeString("en-GB"));
    if (data.version === state.version) return;
    state.version = data.version;
    const tiles = $("tiles");
    clear(tiles);
    for (const s of data.sites) tiles.appendChild(tile(s));
    $("empty").hidden = data.sites.length > 0;
    renderGroup(data.group);
    document.body.dataset.version = String(data.version);
  }

  /* ------------------------------------------------------------ site view */
  const CARRIER_SERIES = {
    electricity: ["grid_import", "pv", "chp", "battery_discharge"],
    heat: ["steam", "boiler", "waste_heat", "chp_heat"],
    natural_gas: ["natural_gas"],
  };
  const CARRIER_UNIT = { electricity: "kWh", heat: "GJ", natural_gas: "m³" };

  function renderSite(d) {
    const s = d.site;
    $("site-name").textContent = s.name;
    $("site-id").textContent = s.site;
    $("site-tz").textContent = s.tz;
    $("site-last").textContent = when(d.flows ? d.flows.last_ts_ms : null, s.tz, "long");
    statusPill($("site-status"), d.status);
    const crumbs = $("crumbs");
    clear(crumbs);
    const back = h("a", "", "Overview");
    back.href = "#/";
    crumbs.appendChild(back);
    crumbs.appendChild(h("span", "", " / " + s.name));
    for (const b of $("ranges").querySelectorAll("button")) b.classList.toggle("on", b.dataset.range === d.range);
    for (const b of $("carriers").querySelectorAll("button")) b.classList.toggle("on", b.dataset.carrier === state.carrier);

    C.flowDiagram($("flow"), d.flows, d.flows ? d.flows.soc_pct : null);
    const opts = { t0: d.start_ms, t1: d.end_ms, tz: s.tz, events: d.events };
    const ps = d.power.series;
    C.lineChart($("power-chart"), d.power.t, ps, Object.assign({ unit: "kW", legend: $("power-legend") }, opts));
    $("power-hint").textContent = "mean per " + fmt(d.bucket_s / 60, 0) + " min";
    const want = CARRIER_SERIES[state.carrier];
    const es = {};
    for (const k of want) if (d.energy.series[k]) es[k] = d.energy.series[k].values;
    C.barChart($("energy-chart"), d.energy.t, es, Object.assign({ unit: CARRIER_UNIT[state.carrier], legend: $("energy-legend") }, opts));
    $("energy-hint").textContent = "per " + fmt(d.bucket_s / 60, 0) + " min, supply side";

    const kt = $("site-kpis");
    clear(kt);
    const tbl = kpiTable(d.today, d.year, d.targets);
    while (tbl.firstChild) kt.appendChild(tbl.firstChild);

    const tt = $("site-targets");
    clear(tt);
    const hr = h("tr");
    for (const c of ["Target", "By", "Goal", "Now", "Met"]) hr.appendChild(h("th", "", c));
    tt.appendChild(hr);
    for (const t of d.targets || []) {
      const tr = h("tr");
      const name = h("td", "", t.target);
      name.title = t.metric;
      tr.appendChild(name);
      tr.appendChild(h("td", "", t.target_year));
      const goal = t.kind === "change" ? fmt(100 * t.target_value, 0) + " % vs base" : t.kind === "level" ? pct(t.target_value) : "peak";
      tr.appendChild(h("td", "", goal));
      const now = t.kind === "change" ? (t.change_vs_base === null ? "–" : fmt(100 * t.change_vs_base, 1) + " %") : t.metric === "green_share" ? pct(t.value) : fmt(t.value);
      tr.appendChild(h("td", "", now));
      const met = h("td", t.met === true ? "good" : t.met === false ? "behind" : "na", t.met === true ? "yes" : t.met === false ? "no" : "n/a");
      if (t.note) met.title = t.note;
      tr.appendChild(met);
      tt.appendChild(tr);
    }

    const et = $("events");
    clear(et);
    const eh = h("tr");
    for (const c of ["When", "Kind", "Subject", "Value"]) eh.appendChild(h("th", "", c));
    et.appendChild(eh);
    const evs = (d.events || []).slice(-50).reverse();
    if (!evs.length) {
      const tr = h("tr");
      const td = h("td", "na", "No events in this range");
      td.colSpan = 4;
      tr.appendChild(td);
      et.appendChild(tr);
    }
    for (const ev of evs) {
      const tr = h("tr", "ev");
      tr.appendChild(h("td", "", when(ev.ts_ms, s.tz, "long")));
      tr.appendChild(h("td", "", ev.kind));
      tr.appendChild(h("td", "", ev.subject));
      tr.appendChild(h("td", "", ev.value === null ? "" : fmt(ev.value) + " " + ev.unit));
      et.appendChild(tr);
    }
    document.body.dataset.siteRendered = s.site + ":" + d.range + ":" + d.end_ms;
  }

  async function pollSite(site) {
    const d = await getJSON("/api/site/" + encodeURIComponent(site) + "?range=" + encodeURIComponent(state.range));
    setConn(true, "live · " + new Date().toLocaleTimeString("en-GB"));
    state.lastSite = d;
    renderSite(d);
  }

  /* ------------------------------------------------------------ routing */
  function route() {
    const m = location.hash.match(/^#\/site\/(.+)$/);
    state.route = m ? { view: "site", site: decodeURIComponent(m[1]) } : { view: "overview" };
    $("overview").hidden = state.route.view !== "overview";
    $("siteview").hidden = state.route.view !== "site";
    if (state.route.view === "overview") {
      clear($("crumbs"));
      state.version = -1;
    }
    tick();
  }

  async function tick() {
    if (state.timer) clearTimeout(state.timer);
    if (state.busy) { state.timer = setTimeout(tick, 200); return; }
    state.busy = true;
    try {
      if (state.route.view === "site") await pollSite(state.route.site);
      else await pollOverview();
    } catch (e) {
      setConn(false, "error: " + e.message);
    } finally {
      state.busy = false;
      state.timer = setTimeout(tick, state.route.view === "site" ? 2 * POLL_MS : POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("ranges").addEventListener("click", (e) => {
      const b = e.target.closest("button");
      if (!b) return;
      state.range = b.dataset.range;
      tick();
    });
    $("carriers").addEventListener("click", (e) => {
      const b = e.target.closest("button");
      if (!b) return;
      state.carrier = b.dataset.carrier;
      if (state.lastSite) renderSite(state.lastSite);
    });
    window.addEventListener("hashchange", route);
    route();
  });
})();
