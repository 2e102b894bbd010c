"""Report writers: KPI files (CSV, Parquet, JSON) and a self-contained HTML report.

The HTML embeds matplotlib figures as inline SVG, so it opens offline, and lists
every factor value and version used.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.accounting.kpis import KpiResult, rollup
from ems.errors import MissingExtraError
from ems.readings import ReadingSet

__all__ = ["SUMMARY_COLUMNS", "typical_day", "write_html", "write_tables"]

SUMMARY_COLUMNS = (
    "key", "period", "total_tce", "direct_tce", "indirect_tce", "tce_per_10k_rmb", "green_share",
    "scope1_t", "memo_non_kyoto_t", "scope2_location_t", "scope2_market_t", "peak_import_kw", "total_cost", "currency",
)
FORMATS = ("csv", "parquet", "json", "html")


def _frames(res: KpiResult) -> dict[str, pd.DataFrame]:
    return {
        "kpis": res.kpis,
        "anomalies": res.anomalies,
        "instruments": res.instruments,
        "unallocated": res.unallocated,
        "factors_used": res.factors_used,
        "gases": res.gas_rollup(by=res.by, period=res.period if res.period in ("day", "month", "year") else "year"),
        "fx_used": res.fx_used,
    }


def write_tables(res: KpiResult, out: Path, formats: tuple[str, ...], targets: pd.DataFrame | None = None) -> list[Path]:
    """Write the KPI frame, its audit tables and the targets as CSV, Parquet and/or JSON; return the paths.

    Missing numbers are written as empty cells (CSV) or null (JSON), never as text.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    frames = _frames(res)
    if targets is not None and len(targets):
        frames["targets"] = targets.drop(columns=["met"])
    for name, df in frames.items():
        df = df.copy()
        for c in df.columns:
            if df[c].dtype == object:
                df[c] = df[c].map(lambda x: x if x is None or isinstance(x, (str, bool, int, float)) else str(x))
        if "csv" in formats:
            p = out / f"{name}.csv"
            df.to_csv(p, index=False)
            paths.append(p)
        if "parquet" in formats and name in ("kpis", "factors_used", "anomalies"):
            p = out / f"{name}.parquet"
            df.to_parquet(p, index=False)
            paths.append(p)
        if "json" in formats:
            p = out / f"{name}.json"
            p.write_text(df.to_json(orient="records", date_format="iso", indent=1))
            paths.append(p)
    if "json" in formats:
        p = out / "notes.json"
        p.write_text(json.dumps({"by": res.by, "period": res.period, "notes": res.notes, "options": res.options},
                                indent=1, default=str))
        paths.append(p)
    return paths


def typical_day(rs: ReadingSet, site: str) -> pd.DataFrame:
    """Mean grid import, PV and consumption [kW] by local hour for one site (from registers)."""
    tz = rs.site(site).tz
    r = rs.readings
    sub = r[(r["site"] == site) & r["quantity"].isin(["import_kwh", "export_kwh", "energy_kwh"])]
    meters = {m.meter: m for m in rs.meters if m.site == site}
    out: dict[str, pd.Series] = {}
    for (meter, q), g in sub.groupby([sub["meter"].astype(str), sub["quantity"].astype(str)], observed=True):
        m = meters.get(meter)
        if m is None or (m.kind, q) not in {("grid", "import_kwh"), ("grid", "export_kwh"), ("pv", "energy_kwh")}:
            continue
        s = g["value"].sort_index()
        dt_h = s.index.to_series().diff().dt.total_seconds() / 3600.0
        kw = (s.diff().clip(lower=0) / dt_h).iloc[1:]
        start = (kw.index - pd.Timedelta(seconds=m.interval_s)).tz_convert(tz)
        name = {"import_kwh": "grid_import_kw", "export_kwh": "grid_export_kw"}.get(q, "pv_kw")
        prof = kw.groupby(start.hour).mean()
        out[name] = prof.add(out.get(name, 0.0), fill_value=0.0) if name in out else prof
    df = pd.DataFrame(out).reindex(range(24)).fillna(0.0)
    df.index.name = "hour"
    return df


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def _plots(res: KpiResult, rs: ReadingSet | None, targets: pd.DataFrame | None) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError("matplotlib", "report") from exc
    figs: list[tuple[str, str]] = []
    monthly = rollup(res.daily, by="group", period="month")
    step = "month"
    if monthly["period"].nunique() < 3:  # a short run: plot by day instead
        monthly = rollup(res.daily, by="group", period="day")
        step = "day"
    carriers = ["electricity_tce", "steam_tce", "natural_gas_tce", "diesel_tce", "gasoline_tce", "pv_consumed_tce_equiv"]
    piv = monthly.groupby("period")[carriers].sum()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = np.zeros(len(piv))
    for c in carriers:
        ax.bar(piv.index, piv[c], bottom=bottom, label=c.replace("_tce", "").replace("_equiv", " (not in total)"))
        bottom += piv[c].to_numpy()
    ax.set_ylabel("tce")
    ax.set_title(f"Energy by carrier and {step} (GB/T 2589-2020, {res.options.get('tce_method', 'calorific').replace('_', ' ')})")
    ax.legend(fontsize=7, ncol=3)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figs.append((f"Energy by carrier and {step}", _svg(fig)))

    g = monthly.groupby("period")[["green_kwh", "electricity_consumed_kwh", "scope12_location_t", "scope12_market_t"]].sum()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    share = g["green_kwh"] / g["electricity_consumed_kwh"].replace(0, np.nan)
    ax.plot(g.index, 100 * share, marker="o", label="green-power share")
    for lvl, yr in ((30, 2030), (60, 2040), (100, 2050)):
        ax.axhline(lvl, ls="--", lw=0.8, color="grey")
        ax.text(0, lvl, f" target {yr}: {lvl} %", fontsize=7, va="bottom")
    ax.set_ylabel("green-power share [%]")
    ax.set_ylim(0, 105)
    ax2 = ax.twinx()
    ax2.bar(g.index, g["scope12_market_t"], alpha=0.3, color="tab:red", label="Scope 1+2 market-based")
    ax2.set_ylabel("Scope 1+2 market-based [tCO2e]")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_title("Green-power share and emissions against targets")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figs.append(("Green share and emissions", _svg(fig)))

    if rs is not None and rs.sites:
        site = rs.sites[0].site
        td = typical_day(rs, site)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for c in td.columns:
            ax.plot(td.index, td[c], label=c)
        ax.set_xlabel(f"local hour ({rs.sites[0].tz})")
        ax.set_ylabel("kW")
        ax.set_title(f"Typical day of site {site}")
        ax.legend(fontsize=7)
        figs.append((f"Typical day: {site}", _svg(fig)))
    return figs


def _table(df: pd.DataFrame, fmt: str = "{:,.4g}") -> str:
    def cell(x: Any) -> str:
        if x is None or x is pd.NA or x is pd.NaT:
            return ""
        if isinstance(x, float):
            return "" if np.isnan(x) else fmt.format(x)
        return html.escape(str(x))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(
    res: KpiResult, path: Path, rs: ReadingSet | None = None, targets: pd.DataFrame | None = None
) -> Path:
    """Write a self-contained HTML report (inline SVG plots, KPI and audit tables)."""
    figs = _plots(res, rs, targets)
    summary = res.kpis[[c for c in SUMMARY_COLUMNS if c in res.kpis]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ems energy and carbon report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}</style></head><body>",
        f"<h1>Energy and carbon report</h1><p>Grouping: <b>{html.escape(res.by)}</b>, period: <b>{html.escape(res.period)}</b>.</p>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in res.notes[:6]) + "</ul>",
        "<h2>KPIs</h2>", _table(summary),
    ]
    for title, svg in figs:
        parts += [f"<h2>{html.escape(title)}</h2>", svg]
    if targets is not None and len(targets):
        parts += ["<h2>Progress against targets</h2>", _table(targets)]
    parts += [
        "<h2>Factors used</h2><p>Every value with its set, version and source; values flagged to_confirm are to be confirmed.</p>",
        _table(res.factors_used),
        "<h2>Scope 1 by gas</h2><p>Kyoto-basket gases are in Scope 1; HCFCs and non-Kyoto gases are memo items.</p>",
        _table(res.gas_rollup(by=res.by, period="year")) if len(res.gases) else "<p>none</p>",
        "<h2>Certificates and contracts: counted or refused, with the reason</h2>",
        _table(res.instruments) if len(res.instruments) else "<p>none</p>",
        "<h2>Exchange rates used</h2>", _table(res.fx_used) if len(res.fx_used) else "<p>none (one currency)</p>",
        "<h2>Anomalies</h2>", _table(res.anomalies) if len(res.anomalies) else "<p>none</p>",
        "<h2>Conventions</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in res.notes) + "</ul>",
        "</body></html>",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
