"""Report writers: KPI files (CSV, Parquet, JSON) and a self-contained HTML report.

The HTML embeds matplotlib figures as inline SVG, so it opens offline, and lists
every factor value and version used. Numbers for people follow :mod:`ems.formatting`
(one rule, one stylesheet); the files for machines keep full precision, with missing
values as empty fields or nulls.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.accounting.kpis import KpiResult, rollup
from ems.errors import MissingExtraError
from ems.formatting import (
    MISSING,
    Table,
    cell,
    display_of,
    html_page,
    machine_frame,
    table_of,
    thousands_axis,
    to_html,
    with_unit,
    year,
)
from ems.readings import ReadingSet

__all__ = [
    "SUMMARY_COLUMNS", "SUMMARY_LABELS", "factors_table", "kpi_table", "targets_table", "typical_day",
    "write_html", "write_tables",
]

SUMMARY_COLUMNS = (
    "key", "period", "total_tce", "direct_tce", "indirect_tce", "tce_per_10k_rmb", "green_share",
    "scope1_t", "scope2_location_t", "scope2_market_t", "peak_import_kw", "total_cost",
)
SUMMARY_LABELS = {
    "total_tce": "energy", "direct_tce": "direct", "indirect_tce": "indirect",
    "tce_per_10k_rmb": "energy intensity", "green_share": "green-power share", "scope1_t": "Scope 1",
    "scope2_location_t": "Scope 2 location", "scope2_market_t": "Scope 2 market",
    "peak_import_kw": "peak import", "total_cost": "energy cost",
}
"""Labels of the summary columns; the unit is added from the column name."""
CONSOLE_COLUMNS = (
    "key", "period", "total_tce", "tce_per_10k_rmb", "green_share", "scope1_t", "scope2_location_t",
    "scope2_market_t", "peak_import_kw", "total_cost",
)
CONSOLE_LABELS = {
    **SUMMARY_LABELS, "tce_per_10k_rmb": "intensity", "green_share": "green share",
    "scope2_location_t": "Scope 2 loc.", "scope2_market_t": "Scope 2 mkt.", "total_cost": "cost",
}
"""The summary in a terminal: narrower (direct and indirect energy are in the files and the HTML)."""
FORMATS = ("csv", "parquet", "json", "html")


def kpi_table(res: KpiResult, *, console: bool = False) -> Table:
    """The KPI summary for people: one row per key and period (``console``: the narrow one)."""
    cols = [c for c in (CONSOLE_COLUMNS if console else SUMMARY_COLUMNS) if c in res.kpis]
    labels = CONSOLE_LABELS if console else SUMMARY_LABELS
    return table_of(res.kpis, f"KPIs by {res.by} and {res.period}", columns=cols,
                    labels={**labels, "key": res.by, "period": res.period})


def targets_table(df: pd.DataFrame, title: str, value: str = "value") -> Table:
    """Targets against results, each row in its metric's unit (a change target in %).

    ``df`` has the columns of :data:`ems.accounting.targets.PROGRESS_COLUMNS` (``value``)
    or of :data:`ems.studies.pathway.ASSESS_COLUMNS` (``value="value_in_target_year"``).
    """
    # a status ("missed (first met in 2040)") says what met and first_year_met say
    said = ("met", "first_year_met") if "status" in df else ()
    shown = [c for c in ("target", "target_year", "target_value", "base_value", value, "change_vs_base",
                         "first_year_met", "status", "met", "note") if c in df and c not in said]
    t = Table(title=title, headers=[], wrap={shown.index("note")} if "note" in shown else set())
    t.headers = [{"target_year": "year", "target_value": "target", "base_value": "base", value: "value",
                  "change_vs_base": "change vs base [%]", "first_year_met": "first met"}.get(c, c)
                 for c in shown]
    t.numeric = [c in ("target_year", "target_value", "base_value", value, "change_vs_base", "first_year_met")
                 for c in shown]
    for r in df.to_dict("records"):
        row = []
        for c in shown:
            x = r[c]
            if c == "target_value":
                row.append(_target_value(str(r["kind"]), str(r["metric"]), x))
            elif c in ("base_value", value):
                row.append(with_unit(str(r["metric"]), x))
            elif c == "change_vs_base":
                row.append(cell(x, display_of("change_vs_base"), signed=True))
            elif c in ("target_year", "first_year_met"):
                row.append(year(x))
            else:
                row.append(cell(x))
        t.rows.append(row)
    if "note" in shown and len({r[-1] for r in t.rows}) == 1:  # one note for all: say it once, below
        note = t.rows[0][-1] if t.rows else ""
        t.headers, t.numeric, t.wrap = t.headers[:-1], t.numeric[:-1], set()
        t.rows = [r[:-1] for r in t.rows]
        t.notes = [f"note: {note}"] if note and note != MISSING else []
    return t


def _target_value(kind: str, metric: str, x: Any) -> str:
    if kind == "change":
        return with_unit("change_vs_base", x, signed=True) + " vs base"
    if kind == "peak":
        return "peak"
    return with_unit(metric, x)


def factors_table(df: pd.DataFrame) -> Table:
    """Every factor used, as given in its factor set (value, unit, year, source)."""
    cols = [c for c in ("name", "region", "year_used", "value", "unit", "set", "version") if c in df]
    return table_of(df, "Factors used", columns=cols, labels={"year_used": "year", "set": "factor set"})


def _frames(res: KpiResult) -> dict[str, pd.DataFrame]:
    return {
        "kpis": res.kpis,
        "anomalies": res.anomalies,
        "certificates": res.certificates,
        "contracts": res.contracts,
        "unallocated": res.unallocated,
        "factors_used": res.factors_used,
    }


def write_tables(res: KpiResult, out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write the KPI frame and its audit tables as CSV, Parquet and/or JSON; return the paths.

    Full precision in the stored units (``docs/kpis.md``); a missing value is an empty
    CSV field or a null (:func:`ems.formatting.machine_frame`).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, df in _frames(res).items():
        df = machine_frame(df)
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
        p.write_text(json.dumps({"by": res.by, "period": res.period, "notes": res.notes}, indent=1))
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
        label = c.removesuffix("_tce").removesuffix("_tce_equiv").replace("_", " ").replace("pv", "PV")
        ax.bar(piv.index, piv[c], bottom=bottom, label=label + (" (not in total)" if c.endswith("_equiv") else ""))
        bottom += piv[c].to_numpy()
    thousands_axis(ax.yaxis)
    ax.set_ylabel("energy [tce]")
    ax.set_title(f"Energy by carrier and {step} (GB/T 2589-2020, equivalent value)")
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
    thousands_axis(ax2.yaxis)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_title("Green-power share and emissions against targets")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figs.append(("Green share and emissions", _svg(fig)))

    if rs is not None and rs.sites:
        figs.append((f"Typical day: {rs.sites[0].site}", _typical_day_svg(rs, plt)))
    return figs


def _typical_day_svg(rs: ReadingSet, plt: Any) -> str:
    site = rs.sites[0].site
    td = typical_day(rs, site)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = {"grid_import_kw": "grid import", "grid_export_kw": "grid export", "pv_kw": "PV"}
    for c in td.columns:
        ax.plot(td.index, td[c], label=names.get(c, c))
    thousands_axis(ax.yaxis)
    ax.set_xlabel(f"local hour ({rs.sites[0].tz})")
    ax.set_ylabel("mean power [kW]")
    ax.set_title(f"Typical day of site {site}")
    ax.legend(fontsize=7)
    return _svg(fig)


def write_html(
    res: KpiResult, path: Path, rs: ReadingSet | None = None, targets: pd.DataFrame | None = None
) -> Path:
    """Write a self-contained HTML report (inline SVG plots, KPI and audit tables)."""
    figs = _plots(res, rs, targets)
    body = [
        f"<p class='lead'>Grouping: <b>{html.escape(res.by)}</b>, period: <b>{html.escape(res.period)}</b>. "
        "Energy is GB/T 2589-2020 comprehensive energy consumption (equivalent value); emissions follow "
        "the GHG Protocol (Scope 2 location- and market-based).</p>",
        _scroll(to_html(kpi_table(res))),
    ]
    body += [f"<h2>{html.escape(title)}</h2><figure>{svg}</figure>" for title, svg in figs]
    if targets is not None and len(targets):
        body.append(_scroll(to_html(targets_table(targets, "Progress against targets"))))
    body += [
        "<h2>Factors used</h2><p>Every value as given in its factor set, with set and version; "
        "values flagged to_confirm are to be confirmed.</p>",
        _scroll(to_html(dataclasses.replace(factors_table(res.factors_used), title=""))),
        _section("Certificates", res.certificates),
        _section("Anomalies", res.anomalies),
        "<h2>Conventions</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in res.notes) + "</ul>",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page("Energy and carbon report", body))
    return path


def _scroll(table_html: str) -> str:
    return f"<div class='scroll'>{table_html}</div>"


def _section(title: str, df: pd.DataFrame) -> str:
    if not len(df):
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    return _scroll(to_html(table_of(df, title)))
