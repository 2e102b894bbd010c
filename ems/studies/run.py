"""Run a scenario for a study: simulate, account, summarise, and price its measures.

Everything is read from the readings through :func:`ems.accounting.kpis`; nothing
here looks into simulator state. :func:`evaluate` returns a small flat dict (KPIs
of the whole scenario plus the economics of its measures vs a base), which is
what ``ems compare`` tabulates and what each ``ems sweep`` worker sends back.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ems.errors import AccountingError
from ems.model.scenario import ResolvedScenario
from ems.readings import ReadingSet
from ems.studies.economics import cost_per_tco2e, simple_payback
from ems.studies.measures import AppliedMeasure, apply_measures, load_costs

if TYPE_CHECKING:
    from ems.accounting.kpis import KpiResult

__all__ = [
    "ADDITIVE",
    "RATIOS",
    "evaluate",
    "period_range",
    "run_kpis",
    "site_totals",
    "summarise",
    "with_hourly",
    "year_fraction",
]

log = logging.getLogger(__name__)

ADDITIVE = (
    "grid_import_kwh", "grid_export_kwh", "pv_generated_kwh", "pv_consumed_kwh", "electricity_consumed_kwh",
    "green_kwh", "contract_hydro_kwh", "contract_green_power_kwh", "certificates_valid_kwh",
    "certificates_counted_kwh", "steam_gj", "natural_gas_m3", "diesel_kg", "gasoline_kg", "output_rmb",
    "total_tce", "scope1_t", "scope2_location_t", "scope2_market_t", "scope12_location_t", "scope12_market_t",
    "total_cost", "peak_import_kw", "use_kwh", "matched_kwh", "scope2_location_hourly_t", "scope2_market_hourly_t",
)
"""KPI columns summed over sites (peak: sum of site peaks, non-coincident). ``use_kwh``,
``matched_kwh`` and the hourly Scope 2 come from hourly matching (:mod:`ems.accounting.hourly`)."""

RATIOS = ("green_share", "cfe", "tce_per_10k_rmb", "scope12_market_intensity_t_per_10k_rmb")
"""Ratios recomputed from the sums (``cfe``: the hourly-matched green share)."""


def period_range(scenario: ResolvedScenario) -> tuple[dt.date, dt.date]:
    """The scenario's period as inclusive local dates, for ``kpis(period=...)``."""
    return scenario.start, scenario.end - dt.timedelta(days=1)


def year_fraction(scenario: ResolvedScenario) -> float:
    """Length of the period in years of 365 days [-]."""
    return (scenario.end - scenario.start).days / 365.0


def run_kpis(scenario: ResolvedScenario, *, factors: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Simulate and return per-site KPIs over the whole period (one row per site).

    Parameters
    ----------
    scenario : ResolvedScenario
    factors : dict, optional
        Factor overrides passed to :func:`ems.accounting.kpis`.
    """
    import ems
    from ems.accounting import kpis

    sim = ems.simulate(scenario)
    res = kpis(sim, by="site", period=period_range(scenario), factors=factors)
    return with_hourly(res, sim, period_range(scenario))


def with_hourly(res: KpiResult, rs: ReadingSet, period: tuple[Any, Any]) -> pd.DataFrame:
    """Per-site KPIs of ``res`` over ``period`` with the hourly figures beside them: ``use_kwh``,
    ``matched_kwh``, ``cfe`` and Scope 2 with electricity matched hour by hour
    (``scope2_location_hourly_t``, ``scope2_market_hourly_t``: purchased heat as in the annual figure)."""
    from ems.accounting.hourly import hourly_of

    k = res.rollup(by="site", period=period)
    h = hourly_of(res, rs).rollup("site", period).set_index("key")
    out = k.set_index("key")
    out["use_kwh"] = h["use_kwh"].reindex(out.index).fillna(0.0)
    out["matched_kwh"] = h["matched_kwh"].reindex(out.index).fillna(0.0)
    out["cfe"] = h["cfe"].reindex(out.index)
    for kind in ("location", "market"):
        hourly_kg = h[f"scope2_{kind}_hourly_kg"].reindex(out.index)
        annual_kg = out[f"scope2_electricity_{kind}_kg"]
        out[f"scope2_{kind}_hourly_t"] = out[f"scope2_{kind}_t"] + (hourly_kg.fillna(annual_kg) - annual_kg) / 1000.0
    return out.reset_index()


def summarise(site_kpis: pd.DataFrame) -> dict[str, float]:
    """Sum per-site KPIs and recompute the ratios from the sums.

    Parameters
    ----------
    site_kpis : DataFrame
        ``kpis(..., by="site")`` rows (one period).

    Returns
    -------
    dict
        :data:`ADDITIVE` sums and :data:`RATIOS`.
    """
    if site_kpis.empty:
        raise AccountingError("summarise: expected KPI rows, found none")
    out = {c: float(site_kpis[c].sum()) if c in site_kpis else 0.0 for c in ADDITIVE}
    cons, out10k = out["electricity_consumed_kwh"], out["output_rmb"] / 1e4
    out["green_share"] = out["green_kwh"] / cons if cons > 0 else math.nan
    out["cfe"] = out["matched_kwh"] / out["use_kwh"] if out["use_kwh"] > 0 else math.nan
    out["tce_per_10k_rmb"] = out["total_tce"] / out10k if out10k > 0 else math.nan
    out["scope12_market_intensity_t_per_10k_rmb"] = out["scope12_market_t"] / out10k if out10k > 0 else math.nan
    return out


def site_totals(scenario: ResolvedScenario) -> dict[str, dict[str, float]]:
    """Per-site ``electricity_consumed_kwh`` and ``green_kwh`` over the period (simulated)."""
    k = run_kpis(scenario)
    return {
        str(r["key"]): {"electricity_consumed_kwh": float(r["electricity_consumed_kwh"]), "green_kwh": float(r["green_kwh"])}
        for _, r in k.iterrows()
    }


def _offsets(site_kpis: pd.DataFrame, applied: Iterable[AppliedMeasure]) -> float:
    sites = {a.site for a in applied if a.offsets}
    if not sites:
        return 0.0
    sel = site_kpis[site_kpis["key"].isin(sites)]
    return float(np.clip(sel["scope12_market_t"].to_numpy(dtype=float), 0.0, None).sum())


def evaluate(
    scenario: ResolvedScenario,
    measures: Iterable[Mapping[str, Any]] | None = None,
    *,
    base: Mapping[str, float] | None = None,
    costs: Mapping[str, Any] | None = None,
    factors: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply measures, simulate, account and price: one flat dict.

    Parameters
    ----------
    scenario : ResolvedScenario
    measures : list of dict, optional
        Default the scenario's own ``measures:``.
    base : dict, optional
        :func:`summarise` output of the base scenario; without it the economics
        vs base are NaN.
    costs : dict, optional
        Cost data (:func:`ems.studies.measures.load_costs`).
    factors : dict, optional
        Factor overrides for the accounting.

    Returns
    -------
    dict
        The :func:`summarise` KPIs; ``offsets_t`` (Scope 1+2 offset by zero-carbon
        measures over the period) and ``net_scope12_t``; ``capex``,
        ``opex_per_year``, ``annual_cost`` (measures' annualised cost incl. offsets)
        [currency, currency/yr]; ``savings_per_year`` (energy-cost savings vs base,
        annualised) [currency/yr]; ``avoided_t_per_year`` [tCO2e/yr];
        ``payback_years`` [yr]; ``cost_per_tco2e`` [currency/t]; ``measures`` (list
        of :meth:`AppliedMeasure.to_dict`).
    """
    costs = costs if costs is not None else load_costs()
    sc, applied = apply_measures(scenario, measures, costs=costs)
    site_k = run_kpis(sc, factors=factors)
    out: dict[str, Any] = {"scenario": scenario.name, **summarise(site_k)}
    yf = year_fraction(scenario)
    off_t = _offsets(site_k, applied)
    out["offsets_t"] = off_t
    out["net_scope12_t"] = out["scope12_market_t"] - off_t
    rows = _measure_rows(applied, off_t / yf, costs)
    capex = sum(r["capex"] for r in rows)
    opex = sum(r["opex_per_year"] for r in rows)
    annual = sum(r["annual_cost"] for r in rows)
    out.update(capex=capex, opex_per_year=opex, annual_cost=annual, measures=rows)
    out.update(_versus_base(out, base, yf))
    return out


def _measure_rows(applied: list[AppliedMeasure], offsets_per_year: float, costs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cost rows of the measures applied, and one of the offsets bought for what remains.

    Parameters
    ----------
    applied : list of AppliedMeasure
        As :func:`apply_measures` gives them.
    offsets_per_year : float [tCO2e/yr]
        Scope 1+2 (market-based) offset by zero-carbon measures; no offsets row when 0.
    costs : dict
        Cost data: the offsets' ``opex_per_unit`` [currency/tCO2e].

    Returns
    -------
    list of dict
        :meth:`AppliedMeasure.to_dict` rows (``capex`` [currency], ``opex_per_year`` and
        ``annual_cost`` [currency/yr], ...).
    """
    rows = [a.to_dict() for a in applied]
    if offsets_per_year > 0:
        price = float((costs["measures"].get("offsets") or {}).get("opex_per_unit", 0.0))
        cost = offsets_per_year * price
        rows.append({"measure": "offsets", "site": ",".join(sorted({a.site for a in applied if a.offsets})),
                     "quantity": offsets_per_year, "unit": "tCO2e/yr", "capex": 0.0, "opex_per_year": cost,
                     "lifetime_years": 1.0, "discount_rate": 0.0, "annual_cost": cost,
                     "note": "offsets for the remaining Scope 1+2 (market-based)"})
    return rows


def _versus_base(out: Mapping[str, Any], base: Mapping[str, float] | None, yf: float) -> dict[str, float]:
    """Savings, avoided emissions, payback and cost per tonne of ``out`` against the base scenario's KPIs.

    Parameters
    ----------
    out : dict
        This scenario's KPIs with ``total_cost`` [currency], ``net_scope12_t`` [tCO2e], ``capex``
        [currency], ``opex_per_year`` and ``annual_cost`` [currency/yr].
    base : dict or None
        The base scenario's :func:`summarise` KPIs; None gives NaN for each.
    yf : float [yr]
        The simulated period as a fraction of a year.

    Returns
    -------
    dict
        ``savings_per_year`` [currency/yr], ``avoided_t_per_year`` [tCO2e/yr], ``payback_years`` [yr],
        ``cost_per_tco2e`` [currency/t].
    """
    if base is None:
        return dict.fromkeys(("savings_per_year", "avoided_t_per_year", "payback_years", "cost_per_tco2e"), math.nan)
    savings = (base["total_cost"] - out["total_cost"]) / yf
    avoided = (base["scope12_market_t"] - out["net_scope12_t"]) / yf
    return {"savings_per_year": savings, "avoided_t_per_year": avoided,
            "payback_years": simple_payback(out["capex"], savings, out["opex_per_year"]),
            "cost_per_tco2e": cost_per_tco2e(out["annual_cost"], savings, avoided)}
