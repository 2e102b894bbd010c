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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ems.accounting.kpis import TCE_METHODS, KpiResult
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

if TYPE_CHECKING:
    from ems.accounting.hourly import HourlyResult

__all__ = [
    "HOURLY_LABELS", "SUMMARY_COLUMNS", "SUMMARY_LABELS", "factors_table", "fx_table", "gases_table",
    "grid_factors_table", "hourly_instruments_table", "hourly_table", "instruments_table", "intensity_table",
    "kpi_table", "targets_table", "tce_method_name", "typical_day", "write_html", "write_tables",
]

SUMMARY_COLUMNS = (
    "key", "period", "total_tce", "direct_tce", "indirect_tce", "tce_per_10k_rmb", "green_share",
    "scope1_t", "memo_non_kyoto_t", "scope2_location_t", "scope2_market_t", "peak_import_kw", "total_cost", "currency",
)
SUMMARY_LABELS = {
    "total_tce": "energy", "direct_tce": "direct", "indirect_tce": "indirect",
    "tce_per_10k_rmb": "energy intensity", "green_share": "green-power share", "scope1_t": "Scope 1",
    "memo_non_kyoto_t": "non-Kyoto memo", "scope2_location_t": "Scope 2 location",
    "scope2_market_t": "Scope 2 market", "peak_import_kw": "peak import", "total_cost": "energy cost",
}
"""Labels of the summary columns; the unit is added from the column name."""
CONSOLE_COLUMNS = (
    "key", "period", "total_tce", "tce_per_10k_rmb", "green_share", "scope1_t", "scope2_location_t",
    "scope2_market_t", "peak_import_kw", "total_cost", "currency",
)
CONSOLE_LABELS = {
    **SUMMARY_LABELS, "tce_per_10k_rmb": "intensity", "green_share": "green share",
    "scope2_location_t": "Scope 2 loc.", "scope2_market_t": "Scope 2 mkt.", "total_cost": "cost",
}
"""The summary in a terminal: narrower (direct and indirect energy and memo gases are in the files and the HTML)."""
FORMATS = ("csv", "parquet", "json", "html")


def kpi_table(res: KpiResult, *, console: bool = False) -> Table:
    """The KPI summary for people: one row per key and period (``console``: the narrow one).

    Costs are in the currency of the row (``currency``): one currency goes into the cost
    header; with several (site rows of sites in other countries) the column stays beside it.
    """
    cols = [c for c in (CONSOLE_COLUMNS if console else SUMMARY_COLUMNS) if c in res.kpis]
    labels = {**(CONSOLE_LABELS if console else SUMMARY_LABELS), "key": res.by, "period": res.period}
    currencies = sorted(set(res.kpis["currency"].dropna().astype(str))) if "currency" in cols else []
    if len(currencies) <= 1 and "currency" in cols:
        cols.remove("currency")
        if currencies:
            labels["total_cost"] = f"{labels['total_cost']} [{currencies[0]}]"
    t = table_of(res.kpis, f"KPIs by {res.by} and {res.period}", columns=cols, labels=labels)
    if len(currencies) > 1 and "total_cost" in cols:  # in the currency of its row
        t.headers[cols.index("total_cost")] = labels["total_cost"]
    return t


_TARGET_HEADERS = {"target_year": "year", "target_value": "target", "base_value": "base",
                   "change_vs_base": "change vs base [%]", "first_year_met": "first met"}
_TARGET_NUMERIC = ("target_year", "target_value", "base_value", "change_vs_base", "first_year_met")


def targets_table(df: pd.DataFrame, title: str, value: str = "value") -> Table:
    """Targets against results, each value in its metric's unit, a change signed in %.

    ``df`` has the columns of :data:`ems.accounting.targets.PROGRESS_COLUMNS` (value, base,
    change, what the target requires, status and reason) or of
    :data:`ems.studies.pathway.ASSESS_COLUMNS` (``value="value_in_target_year"``).
    """
    wrap: tuple[str, ...]
    if "requirement" in df:  # progress in the reporting year
        shown = ["target", value, "base_value", "change_vs_base", "requirement", "status", "reason"]
        wrap = ("requirement", "reason")
    else:  # a pathway's target years; a status ("missed (first met in 2040)") says what met says
        said = ("met", "first_year_met") if "status" in df else ()
        shown = [c for c in ("target", "target_year", "target_value", "base_value", value, "change_vs_base",
                             "first_year_met", "status", "met", "note") if c in df and c not in said]
        wrap = ("note",)
    t = Table(
        title=title,
        headers=[{**_TARGET_HEADERS, value: "value"}.get(c, c) for c in shown],
        rows=[[_target_cell(c, r, value) for c in shown] for r in df.to_dict("records")],
        numeric=[c in _TARGET_NUMERIC or c == value for c in shown],
        wrap={i for i, c in enumerate(shown) if c in wrap},
    )
    if "note" in shown and len({r[-1] for r in t.rows}) == 1:  # one note for all: say it once, below
        note = t.rows[0][-1] if t.rows else ""
        t.headers, t.numeric, t.wrap = t.headers[:-1], t.numeric[:-1], set()
        t.rows = [r[:-1] for r in t.rows]
        t.notes = [f"note: {note}"] if note and note != MISSING else []
    return t


def _target_cell(c: str, r: dict[str, Any], value: str) -> str:
    x = r[c]
    if c == "target_value":
        return _target_value(str(r["kind"]), str(r["metric"]), x)
    if c in ("base_value", value):
        return with_unit(str(r["metric"]), x)
    if c == "change_vs_base":
        return cell(x, display_of("change_vs_base"), signed=True)
    if c in ("target_year", "first_year_met"):
        return year(x)
    return cell(x)


def _target_value(kind: str, metric: str, x: Any) -> str:
    if kind == "change":
        return with_unit("change_vs_base", x, signed=True) + " vs base"
    if kind == "peak":
        return "peak"
    return with_unit(metric, x)


def _sources_below(t: Table, column: int) -> Table:
    """Long texts repeated over rows (sources) as ``[n]`` in ``column`` and once each under the table."""
    refs: dict[str, int] = {}
    for row in t.rows:
        if row[column] not in ("", MISSING):
            row[column] = f"[{refs.setdefault(row[column], len(refs) + 1)}]"
    t.notes += [f"[{n}] {text}" for text, n in refs.items()]
    return t


def factors_table(df: pd.DataFrame, *, sources: bool = False) -> Table:
    """Every factor used that is not a site's grid factor, as given in its factor set.

    ``sources``: with each value's source (the HTML report); the console leaves it to the files.
    """
    rows = df[df["site"] == "*"] if "site" in df else df
    cols = [c for c in ("name", "year_used", "value", "unit", "set", "version", "to_confirm") if c in rows]
    cols += ["source"] if sources and "source" in rows else []
    return table_of(rows, "Factors used", columns=cols, wrap=("source",),
                    labels={"year_used": "year", "set": "factor set", "to_confirm": "to confirm"})


def grid_factors_table(df: pd.DataFrame, *, notes: bool = False) -> Table:
    """Per site, the grid factors chosen: level and place, year, value, and the source (numbered, below).

    ``notes``: with the reason of each choice (nearest year, fallback) in a column of its own.
    """
    g = df[df["site"] != "*"].assign(
        factor=lambda d: d["name"].str.removeprefix("grid_").str.removesuffix("_kgco2_per_kwh"))
    units = sorted(set(g["unit"]))
    cols = ["site", "factor", "level", "place", "year_used", "value", *(["unit"] if len(units) > 1 else []),
            *(["to_confirm"] if "to_confirm" in g else []), "source", *(["note"] if notes else [])]
    value = f"value [{units[0]}]" if len(units) == 1 else "value"
    t = table_of(g, "Grid factor per site (most local place first, then nearest year)", columns=cols,
                 labels={"year_used": "year", "value": value, "to_confirm": "to confirm"}, wrap=("note",))
    return _sources_below(t, cols.index("source"))


def instruments_table(df: pd.DataFrame, framework: str = "") -> Table:
    """Each certificate and contract counted or refused, with the reason (deliveries summed)."""
    title = "Certificates and contracts: counted or refused, with the reason"
    title = f"{title} ({framework})" if framework else title
    if df.empty:
        return Table(title=title, headers=[])
    keys = ["instrument", "id", "site", "technology", "status", "reason"]
    agg = df.groupby(keys, sort=False, dropna=False)[["mwh", "counted_mwh"]].sum().reset_index()
    agg["instrument"] = [f"{i} {n}".strip() for i, n in zip(agg["instrument"], agg["id"].fillna(""), strict=True)]
    return table_of(agg.rename(columns={"mwh": "delivered_mwh"}), title,
                    columns=["instrument", "site", "technology", "delivered_mwh", "counted_mwh", "status", "reason"],
                    labels={"delivered_mwh": "delivered", "counted_mwh": "counted"}, wrap=("reason",))


HOURLY_LABELS = {
    "green_share": "green share annual", "cfe": "hourly (CFE)",
    "scope2_electricity_location_t": "Scope 2 loc. annual", "scope2_location_hourly_t": "hourly",
    "scope2_location_diff_t": "hourly - annual", "scope2_electricity_market_t": "Scope 2 mkt. annual",
    "scope2_market_hourly_t": "hourly", "scope2_market_diff_t": "hourly - annual",
}
"""Labels of the side-by-side table (Scope 2 of electricity; purchased heat is the same in both)."""


def hourly_table(df: pd.DataFrame, by: str, period: str) -> Table:
    """Annual and hourly green share and Scope 2 of electricity side by side (:func:`ems.accounting.hourly.side_by_side`)."""
    from ems.accounting.hourly import SIDE_BY_SIDE

    t = table_of(df, "Annual and hourly matching: green share and Scope 2 of electricity", columns=list(SIDE_BY_SIDE),
                 labels={**HOURLY_LABELS, "key": by, "period": period},
                 signed=("scope2_location_diff_t", "scope2_market_diff_t"))
    t.notes = ["annual: the period's instruments and PV pooled (docs/kpis.md); hourly: matched hour by hour "
               "(docs/hourly-matching.md); Scope 2 hourly: import x the hour's factor, unmatched import x residual mix"]
    return t


def intensity_table(df: pd.DataFrame, *, sources: bool = False) -> Table:
    """Per site, where its hourly grid factors come from (measured, derived, modelled or the annual
    factor). ``sources``: the sources of every input and the notes, instead of the short origin."""
    col = "sources" if sources else "source"
    t = table_of(df.rename(columns={"hours_filled": "filled"}), "Hourly grid factors per site",
                 columns=["site", "method", "place", "filled", col],
                 labels={"filled": "hours filled with the annual factor"}, wrap=(col,))
    return _sources_below(t, 4) if sources else t


def hourly_instruments_table(df: pd.DataFrame) -> Table:
    """How each counted instrument was placed on hours (delivery profile, generation hour, annual)."""
    agg = df.groupby(["site", "instrument", "id", "placement"], sort=False, dropna=False)["kwh"].sum().reset_index()
    agg["instrument"] = [f"{i} {n}".strip() for i, n in zip(agg["instrument"], agg["id"].fillna(""), strict=True)]
    return table_of(agg.assign(mwh=agg["kwh"] / 1000.0), "Instruments on hours", columns=["site", "instrument", "mwh", "placement"],
                    labels={"mwh": "placed"}, wrap=("placement",))


def gases_table(res: KpiResult) -> Table:
    """Fugitive and process gases over the report's span (one row per year, or the custom period).

    kg of each named gas and tCO2e by ``res.by``; memo items (outside Scope 1) marked.
    """
    g = res.gas_rollup(by=res.by, period=_span(res, whole=True)).rename(columns={"kg": "amount_kg", "tco2e": "co2e_t"}).assign(
        amount_kg=lambda d: pd.to_numeric(d["amount_kg"], errors="coerce"))
    t = table_of(g, "Scope 1 by gas (fugitive and process; combustion is in the KPIs)",
                 columns=["key", "period", "gas", "basket", "in_scope1", "kind", "activity", "amount_kg", "co2e_t",
                          "note"],
                 labels={"key": res.by, "period": "period" if ".." in res.period else "year", "in_scope1": "in Scope 1", "amount_kg": "amount", "co2e_t": "CO2e"})
    t.notes = ["Kyoto-basket gases are in Scope 1; HCFCs (Montreal Protocol) and gases outside the Kyoto "
               "basket are memo items (non-Kyoto memo in the KPIs)."]
    return _sources_below(t, len(t.headers) - 1)


def fx_table(df: pd.DataFrame, currency: str) -> Table:
    """Exchange rates used to reach the reporting currency: pair (base/quote), rate, date, days, source."""
    if df.empty:
        return Table(title=f"Exchange rates used (to {currency})", headers=[])
    return table_of(df, f"Exchange rates used (to {currency})",
                    columns=["pair", "rate", "date", "first_day", "last_day", "source"],
                    labels={"rate": "rate [quote per base]", "date": "rate of", "first_day": "used from",
                            "last_day": "used to"}, wrap=("source",))


def _frames(res: KpiResult, targets: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    frames = {
        "kpis": res.kpis,
        "anomalies": res.anomalies,
        "instruments": res.instruments,
        "unallocated": res.unallocated,
        "factors_used": res.factors_used,
        "gases": res.gas_rollup(by=res.by, period=_span(res, whole=False)),
        "fx_used": res.fx_used,
    }
    if targets is not None and len(targets):
        frames["targets"] = targets.drop(columns=["met"])  # status says it, with not assessable
    return frames


def _span(res: KpiResult, *, whole: bool) -> str | tuple[str, str]:
    """The period of ``res`` for the gas table: its own (``whole``: one row per year), or its custom span."""
    if ".." in res.period:
        lo, hi = res.period.split("..", 1)
        return lo, hi
    return "year" if whole or res.period not in ("day", "month", "year") else res.period


def write_tables(
    res: KpiResult, out: Path, formats: tuple[str, ...], targets: pd.DataFrame | None = None,
    extra: dict[str, pd.DataFrame] | None = None,
) -> list[Path]:
    """Write the KPI frame, its audit tables, the targets and ``extra`` frames (the hourly figures)
    as CSV, Parquet and/or JSON; return the paths.

    Full precision in the stored units (``docs/kpis.md``); a missing value is an empty
    CSV field or a null (:func:`ems.formatting.machine_frame`). ``notes.json`` holds the
    conventions and the options (tce method, framework, currency, boundary).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, df in {**_frames(res, targets), **(extra or {})}.items():
        df = machine_frame(df)
        if "csv" in formats:
            p = out / f"{name}.csv"
            df.to_csv(p, index=False)
            paths.append(p)
        if "parquet" in formats and name in ("kpis", "factors_used", "anomalies", "hourly"):
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


STREAM_FORMATS = ("json", "csv")
"""Formats :func:`dump_tables` can write to one stream (``ems report --format F`` without ``--out``)."""


def dump_tables(
    res: KpiResult, fmt: str, targets: pd.DataFrame | None = None, extra: dict[str, pd.DataFrame] | None = None,
) -> str:
    """The report as one document for a pipe: what :func:`write_tables` writes, in one text.

    ``json``: one object with ``by``, ``period``, ``notes``, ``options`` and every table as a list of
    records under its file name (``kpis``, ``factors_used``, ...); ``csv``: the KPI table alone (a CSV
    file holds one table). Same precision and missing values as the files.
    """
    if fmt == "csv":
        return str(machine_frame(res.kpis).to_csv(index=False))
    if fmt != "json":
        raise ValueError(f"expected one of {STREAM_FORMATS}; found {fmt!r}")
    doc: dict[str, Any] = {"by": res.by, "period": res.period, "notes": res.notes, "options": res.options}
    for name, df in {**_frames(res, targets), **(extra or {})}.items():
        doc[name] = json.loads(machine_frame(df).to_json(orient="records", date_format="iso"))
    return json.dumps(doc, indent=1, default=str) + "\n"


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
    monthly = res.rollup(by="group", period="month")  # with the chosen tce method and on-site RE switch
    step = "month"
    if monthly["period"].nunique() < 3:  # a short run: plot by day instead
        monthly = res.rollup(by="group", period="day")
        step = "day"
    figs = [(f"Energy by carrier and {step}", _energy_svg(res, monthly, step, plt)),
            ("Green share and emissions", _green_svg(monthly, plt))]
    if rs is not None and rs.sites:
        figs.append((f"Typical day: {rs.sites[0].site}", _typical_day_svg(rs, plt)))
    return figs


def tce_method_name(options: dict[str, Any]) -> str:
    """The tce method of a report as GB/T 2589-2020 names it in English: ``calorific value``."""
    method = str(options.get("tce_method", "calorific"))
    return TCE_METHODS.get(method, method).split(" (", 1)[0]


def _energy_svg(res: KpiResult, monthly: pd.DataFrame, step: str, plt: Any) -> str:
    carriers = ["electricity_tce", "steam_tce", "natural_gas_tce", "diesel_tce", "gasoline_tce", "pv_consumed_tce_equiv"]
    piv = monthly.groupby("period")[carriers].sum()
    in_total = res.options.get("onsite_renewables", "excluded") == "included"
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = np.zeros(len(piv))
    for c in carriers:
        label = c.removesuffix("_tce").removesuffix("_tce_equiv").replace("_", " ").replace("pv", "PV")
        if c.endswith("_equiv"):
            label += " (in total)" if in_total else " (not in total)"
        ax.bar(piv.index, piv[c], bottom=bottom, label=label)
        bottom += piv[c].to_numpy()
    thousands_axis(ax.yaxis)
    ax.set_ylabel("energy [tce]")
    ax.set_title(f"Energy by carrier and {step} (GB/T 2589-2020, {tce_method_name(res.options)})")
    ax.legend(fontsize=7, ncol=3)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    return _svg(fig)


def _green_svg(monthly: pd.DataFrame, plt: Any) -> str:
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
    return _svg(fig)


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
    res: KpiResult, path: Path, rs: ReadingSet | None = None, targets: pd.DataFrame | None = None,
    *, hourly: HourlyResult | None = None, side: pd.DataFrame | None = None,
) -> Path:
    """Write a self-contained HTML report (inline SVG plots, KPI and audit tables; with ``hourly``,
    the annual and hourly figures side by side and a month x hour heatmap per site)."""
    figs = _plots(res, rs, targets)
    body = [
        f"<p class='lead'>Grouping: <b>{html.escape(res.by)}</b>, period: <b>{html.escape(res.period)}</b>. "
        f"Energy is GB/T 2589-2020 comprehensive energy consumption ({html.escape(tce_method_name(res.options))}); "
        "emissions follow the GHG Protocol (Scope 2 location- and market-based).</p>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in res.notes[:2]) + "</ul>",
        _scroll(to_html(kpi_table(res))),
    ]
    body += [f"<h2>{html.escape(title)}</h2><figure>{svg}</figure>" for title, svg in figs]
    if targets is not None and len(targets):
        body.append(_scroll(to_html(targets_table(targets, "Progress against targets (group, latest year)"))))
    if hourly is not None:
        body += _hourly_parts(res, hourly, side)
    body += _audit_parts(res)
    body.append("<h2>Conventions</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in res.notes) + "</ul>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page("Energy and carbon report", body))
    return path


def _hourly_parts(res: KpiResult, hourly: HourlyResult, side: pd.DataFrame | None) -> list[str]:
    """The annual and hourly figures side by side, a heatmap per site, and their provenance."""
    import matplotlib.pyplot as plt

    parts = [_scroll(to_html(hourly_table(side, res.by, res.period)))] if side is not None and len(side) else []
    parts.append("<h2>Matched and unmatched energy by month and hour</h2><p>Per site, the energy of each local "
                 "hour of the day in each month that green supply of the same hour covered (on-site PV, the "
                 "battery's green output, contracts by their delivery profile, granular certificates) and what it "
                 "did not; annual certificates are not in it (docs/hourly-matching.md).</p>")
    for site in sorted(hourly.hours):
        parts.append(f"<h3>{html.escape(site)}</h3><figure>{_heatmap_svg(hourly, site, plt)}</figure>")
    parts.append(_part(intensity_table(hourly.intensity, sources=True)))
    if len(hourly.instruments):
        parts.append(_part(hourly_instruments_table(hourly.instruments)))
    return parts


def _heatmap_svg(hourly: HourlyResult, site: str, plt: Any) -> str:
    """Two month x hour panels, matched and unmatched [MWh], on one colour scale."""
    tables = [hourly.month_hour(site, c) / 1000.0 for c in ("matched_kwh", "unmatched_kwh")]
    top = max(float(t.to_numpy().max()) for t in tables) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, t, name in zip(axes, tables, ("matched", "unmatched"), strict=True):
        im = ax.imshow(t.to_numpy(), aspect="auto", cmap="Greens" if name == "matched" else "Greys", vmin=0, vmax=top)
        ax.set_title(f"{name} [MWh]")
        ax.set_xlabel(f"local hour ({hourly.sites[site].tz})")
        ax.set_xticks(range(0, 24, 3))
        ax.set_yticks(range(12), [str(m) for m in range(1, 13)], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.04)
    axes[0].set_ylabel("month")
    return _svg(fig)


def _audit_parts(res: KpiResult) -> list[str]:
    """What the figures rest on: factors, grid factors per site, gases, instruments, exchange rates, anomalies."""
    fx = str(res.options.get("currency", "CNY"))
    parts = [
        "<h2>Factors used</h2><p>Every value as given in its factor set, with set, version and source; "
        "values flagged to confirm are to be confirmed.</p>",
        _scroll(to_html(dataclasses.replace(factors_table(res.factors_used, sources=True), title=""))),
        _part(grid_factors_table(res.factors_used, notes=True)),
        _part(gases_table(res)),
        _part(instruments_table(res.instruments, str(res.options.get("framework", "")))),
        _part(fx_table(res.fx_used, fx), f"none (every cost already in {fx})"),
    ]
    if len(res.unallocated):
        parts.append(_part(table_of(res.unallocated, "Counted instruments with no grid import to cover")))
    parts.append(_part(table_of(res.anomalies, "Anomalies")))
    return parts


def _scroll(table_html: str) -> str:
    return f"<div class='scroll'>{table_html}</div>"


def _part(t: Table, empty: str = "none") -> str:
    """A titled table, or its title and ``empty`` when it has no rows."""
    if not t.rows:
        return f"<h2>{html.escape(t.title)}</h2><p>{html.escape(empty)}</p>"
    return _scroll(to_html(t))
