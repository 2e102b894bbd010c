"""Compare scenarios side by side: KPIs, deltas vs the first, measure economics.

Each input is a scenario file (simulated, with its ``measures:`` applied) or a
readings folder written by ``ems run --out`` (loaded, accounted as is). The first
one is the base the deltas and the economics refer to.
"""

from __future__ import annotations

import html
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ems.errors import ConfigError
from ems.formatting import Table, html_page, labelled, table_of, thousands_axis
from ems.formatting import to_html as fmt_html
from ems.studies.run import evaluate, summarise, with_hourly

__all__ = ["COMPARE_ROWS", "Comparison", "compare", "comparison_table", "load_or_run", "measures_table", "to_html"]

log = logging.getLogger(__name__)

COMPARE_ROWS: tuple[tuple[str, str, float], ...] = (
    # (key, label with unit, scale applied for display)
    ("electricity_consumed_kwh", "electricity consumed [MWh]", 1e-3),
    ("grid_import_kwh", "grid import [MWh]", 1e-3),
    ("pv_generated_kwh", "PV generated [MWh]", 1e-3),
    ("pv_consumed_kwh", "PV consumed [MWh]", 1e-3),
    ("green_kwh", "green electricity claimed [MWh]", 1e-3),
    ("green_share", "green-power share [%]", 100.0),
    ("cfe", "hourly-matched green share (CFE) [%]", 100.0),
    ("steam_gj", "purchased steam [GJ]", 1.0),
    ("natural_gas_m3", "natural gas [m3]", 1.0),
    ("diesel_kg", "diesel [kg]", 1.0),
    ("total_tce", "energy [tce]", 1.0),
    ("scope1_t", "Scope 1 [tCO2e]", 1.0),
    ("scope2_location_t", "Scope 2 location-based [tCO2e]", 1.0),
    ("scope2_market_t", "Scope 2 market-based [tCO2e]", 1.0),
    ("scope2_location_hourly_t", "Scope 2 location-based, hourly [tCO2e]", 1.0),
    ("scope2_market_hourly_t", "Scope 2 market-based, hourly [tCO2e]", 1.0),
    ("scope12_market_t", "Scope 1+2 market-based [tCO2e]", 1.0),
    ("offsets_t", "offsets [tCO2e]", 1.0),
    ("net_scope12_t", "Scope 1+2 net of offsets [tCO2e]", 1.0),
    ("scope12_market_intensity_t_per_10k_rmb", "Scope 1+2 intensity [kgCO2e/RMB 10k]", 1000.0),
    ("peak_import_kw", "peak import, sum of sites [kW]", 1.0),
    ("total_cost", "energy cost [CNY]", 1.0),
    ("capex", "measures capex [CNY]", 1.0),
    ("annual_cost", "measures annualised cost [CNY/yr]", 1.0),
    ("savings_per_year", "energy-cost savings [CNY/yr]", 1.0),
    ("avoided_t_per_year", "avoided [tCO2e/yr]", 1.0),
    ("payback_years", "simple payback [yr]", 1.0),
    ("cost_per_tco2e", "cost per tCO2e avoided [CNY/tCO2e]", 1.0),
)
"""Rows of the comparison table: key, label with the display unit (:data:`ems.formatting.DECIMALS`), scale."""


@dataclass
class Comparison:
    """Result of :func:`compare`.

    Attributes
    ----------
    results : list of dict
        :func:`ems.studies.run.evaluate` output per scenario, in input order.
    table : DataFrame
        Index: KPI labels; columns: scenario names, then ``<name> Δ`` for each
        scenario after the first (display units).
    """

    results: list[dict[str, Any]]
    table: pd.DataFrame

    def measures(self) -> pd.DataFrame:
        """Every applied measure with its costs, one row each."""
        rows = [{"scenario": r["scenario"], **m} for r in self.results for m in r.get("measures", [])]
        return pd.DataFrame(rows)


def load_or_run(path: str | Path, *, base: Mapping[str, float] | None = None,
                resolution_s: int | None = None, costs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a scenario file, or account a readings folder.

    Parameters
    ----------
    path : str or Path
        Scenario YAML, or readings: a folder with ``readings.parquet`` (``ems run --out``) or a store.
    base : dict, optional
        Base summary for the economics.
    resolution_s : int, optional [s]
        Replace the scenario's resolution (e.g. 3600 for a fast comparison).
    """
    import ems

    p = Path(path)
    if p.is_dir() or "://" in str(path):
        with ems.open_readings(path) as rs:
            res = ems.kpis(rs, by="site", period="year")
            d = res.daily["date"]
            lo, hi = d.min().date(), d.max().date()
            out: dict[str, Any] = {"scenario": p.name, **summarise(with_hourly(res, rs, (lo, hi)))}
        yf = ((hi - lo).days + 1) / 365.0
        out.update(offsets_t=0.0, net_scope12_t=out["scope12_market_t"], capex=0.0, opex_per_year=0.0,
                   annual_cost=0.0, measures=[])
        if base is not None:
            out["savings_per_year"] = (base["total_cost"] - out["total_cost"]) / yf
            out["avoided_t_per_year"] = (base["scope12_market_t"] - out["net_scope12_t"]) / yf
        out.setdefault("savings_per_year", math.nan)
        out.setdefault("avoided_t_per_year", math.nan)
        out["payback_years"] = math.nan
        out["cost_per_tco2e"] = math.nan
        return out
    if not p.is_file():
        raise ConfigError(f"compare: expected a scenario file or a readings folder, found nothing at {str(p)!r}")
    sc = ems.load_scenario(str(p), measures=False)  # evaluate() applies and prices them
    if resolution_s is not None:
        sc.resolution_s = int(resolution_s)
    return evaluate(sc, base=base, costs=costs)


def compare(paths: Sequence[str | Path], *, resolution_s: int | None = None,
            costs: Mapping[str, Any] | None = None) -> Comparison:
    """Evaluate each input; the first is the base.

    Parameters
    ----------
    paths : list of str or Path
        Scenario files or readings folders; at least one.
    resolution_s : int, optional [s]
    costs : dict, optional
    """
    if not paths:
        raise ConfigError("compare: expected at least one scenario, found none")
    first = load_or_run(paths[0], resolution_s=resolution_s, costs=costs)
    base = {k: v for k, v in first.items() if isinstance(v, float)}
    # the base against itself: no savings, nothing avoided
    first.update(savings_per_year=0.0, avoided_t_per_year=0.0)
    results = [first] + [load_or_run(p, base=base, resolution_s=resolution_s, costs=costs) for p in paths[1:]]
    names: list[str] = []
    for r in results:
        n, k = str(r["scenario"]), 2
        while n in names:
            n, k = f"{r['scenario']} ({k})", k + 1
        names.append(n)
    data: dict[str, list[float]] = {}
    for n, r in zip(names, results, strict=True):
        data[n] = [float(r.get(key, math.nan)) * s for key, _, s in COMPARE_ROWS]
    table = pd.DataFrame(data, index=[label for _, label, _ in COMPARE_ROWS])
    for n in names[1:]:
        table[f"{n} Δ"] = table[n] - table[names[0]]
    return Comparison(results=results, table=table)


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def comparison_table(cmp: Comparison, title: str = "Scenario comparison (Δ vs the first)") -> Table:
    """The comparison for people: a row per KPI, decimals by the unit in its label, signed deltas."""
    cols = [str(c) for c in cmp.table.columns]
    t = Table(title=title, headers=["KPI", *cols], numeric=[False] + [True] * len(cols))
    for label, row in cmp.table.iterrows():
        t.rows.append([str(label), *(labelled(v, str(label), signed=c.endswith(" Δ"))
                                     for c, v in zip(cols, row, strict=True))])
    return t


def measures_table(cmp: Comparison) -> Table:
    """Every applied measure with its costs."""
    return table_of(cmp.measures(), "Measures", wrap=("note",),
                    labels={"lifetime_years": "lifetime", "discount_rate": "discount rate",
                            "opex_per_year": "opex", "annual_cost": "annualised cost"})


def to_html(cmp: Comparison, title: str = "Scenario comparison") -> str:
    """A self-contained HTML page (the report stylesheet): the table and bar charts as inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(c) for c in cmp.table.columns if not str(c).endswith(" Δ")]
    charts = []
    for key in ("net_scope12_t", "green_share", "total_cost", "grid_import_kwh"):
        row = next(lab for k, lab, _ in COMPARE_ROWS if k == key)
        vals = [float(cmp.table.loc[row, n]) for n in names]
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.bar(range(len(names)), vals, color=["#777"] + ["#2a7"] * (len(names) - 1))
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        thousands_axis(ax.yaxis)
        ax.set_title(row)
        charts.append(f"<figure>{_svg(fig)}</figure>")
        plt.close(fig)
    meas = cmp.measures()
    body = [
        f"<p class='lead'>Deltas (Δ) and economics are against the first scenario, "
        f"<b>{html.escape(names[0])}</b>.</p>",
        f"<div class='scroll'>{fmt_html(comparison_table(cmp, title=''))}</div>",
        f"<div class='scroll'>{fmt_html(measures_table(cmp))}</div>" if len(meas)
        else "<h2>Measures</h2><p>no measures</p>",
        f"<h2>Charts</h2><div class='charts'>{''.join(charts)}</div>",
    ]
    return html_page(title, body)
