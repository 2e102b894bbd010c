"""Decarbonisation pathway: year by year to a target year, checked against the group targets.

A pathway spec (YAML)::

    scenario: reference-2024.yaml        # relative to the spec file; its sites and measures
    resolution: 1h                       # fast mode (default 1h)
    years: [2023, 2024, 2025, 2026, 2027, 2030, 2040, 2050]   # or start_year/end_year/step
    production_growth_pct: 3.0           # loads, heat, fuels and output grow per year from the first year
    grid_factor:                         # national grid factors [kgCO2/kWh], linear between the years given
      average: {2023: 0.5306, 2030: 0.42, 2040: 0.25, 2050: 0.10}
      residual: {2023: 0.6096, 2030: 0.48, 2040: 0.28, 2050: 0.10}
    prices:                              # factor-set prices by year, linear between points
      certificate_per_mwh: {2024: 5, 2030: 30}
    additions:                           # measures from a year on (cumulative)
      - {year: 2025, measures: [{measure: add_pv, site: pingdu, kwp: 20000}]}
      - {year: 2030, measures: [{measure: buy_certificates, target_share: 0.3}]}
    targets: group                       # built-in name or a path (ems/data/targets/)

Each year is one simulation of the scenario's sites for that calendar year, with
the growth, the measures added so far and that year's factors; its KPIs come from
the readings. :func:`assess` then reports, for each target of the targets file, the
first year it is met and whether it holds in its target year. Offsets bought by a
``zero_carbon`` measure count towards the Scope 1+2 targets (``net_scope12_t``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.errors import ConfigError
from ems.model.scenario import ResolvedScenario
from ems.model.site import Site
from ems.yamldoc import load_document

__all__ = ["ASSESS_COLUMNS", "PathwaySpec", "assess", "interpolate", "load_pathway_spec", "run_pathway"]

log = logging.getLogger(__name__)

ASSESS_COLUMNS = ("target", "metric", "kind", "target_year", "target_value", "base_year", "base_value",
                  "value_in_target_year", "first_year_met", "met", "status", "note")


@dataclass
class PathwaySpec:
    """A parsed pathway spec (see module docs)."""

    scenario: ResolvedScenario
    years: list[int]
    growth_pct: float
    grid_factor: dict[str, dict[int, float]]
    prices: dict[str, dict[int, float]]
    additions: list[tuple[int, list[dict[str, Any]]]]
    targets: dict[str, Any]


def interpolate(points: Mapping[int, float], year: int) -> float:
    """Linear interpolation between ``{year: value}`` points, flat outside them."""
    if not points:
        raise ConfigError("interpolate: expected at least one {year: value} point, found none")
    xs = sorted(int(k) for k in points)
    ys = [float(points[k]) for k in sorted(points, key=int)]
    return float(np.interp(year, xs, ys))


def load_pathway_spec(path: str | Path) -> PathwaySpec:
    """Read a pathway spec and load its scenario and targets.

    Raises
    ------
    ConfigError
        Missing file or fields, bad years.
    """
    from ems.accounting.targets import load_targets
    from ems.model.loader import load_scenario

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pathway: expected a spec file, found no file at {str(p)!r}")
    d = load_document(p).data  # size, depth and file-type limits, located errors
    if not isinstance(d, dict) or "scenario" not in d:
        raise ConfigError(f"{p}: expected a mapping with 'scenario' (and years or start_year/end_year)")
    sc = load_scenario(p.parent / str(d["scenario"]))
    res = str(d.get("resolution", "1h"))
    sc.resolution_s = int(pd.Timedelta(pd.tseries.frequencies.to_offset(res)).total_seconds())
    if "years" in d:
        years = sorted({int(y) for y in d["years"]})
    elif "start_year" in d and "end_year" in d:
        years = list(range(int(d["start_year"]), int(d["end_year"]) + 1, int(d.get("step", 1))))
    else:
        raise ConfigError(f"{p}: expected 'years: [...]' or 'start_year' and 'end_year'")
    if not years:
        raise ConfigError(f"{p}: expected at least one year, found none")
    gf = {k: {int(y): float(v) for y, v in (vals or {}).items()} for k, vals in (d.get("grid_factor") or {}).items()}
    bad = set(gf) - {"average", "residual"}
    if bad:
        raise ConfigError(f"{p}: grid_factor: expected 'average' and/or 'residual', found {sorted(bad)}")
    prices = {k: {int(y): float(v) for y, v in vals.items()} for k, vals in (d.get("prices") or {}).items()}
    adds = []
    for i, a in enumerate(d.get("additions") or []):
        if not isinstance(a, dict) or "year" not in a or not isinstance(a.get("measures"), list):
            raise ConfigError(f"{p}: additions.{i}: expected {{year: Y, measures: [...]}}, found {a!r}")
        adds.append((int(a["year"]), [dict(m) for m in a["measures"]]))
    tg = d.get("targets", "group")
    tpath = p.parent / str(tg)
    targets = load_targets(str(tpath) if tpath.is_file() else str(tg))
    return PathwaySpec(scenario=sc, years=years, growth_pct=float(d.get("production_growth_pct", 0.0)),
                       grid_factor=gf, prices=prices, additions=adds, targets=targets)


def _grow(site: Site, f: float) -> Site:
    from ems.studies.calibrate import _scale_loads

    s = site.model_copy(deep=True)
    _scale_loads(s, f, f)
    if s.steam is not None:
        s.steam.process_kw *= f
        s.steam.heating_kw_per_degc *= f
        if s.steam.annual_gj is not None:
            s.steam.annual_gj *= f
    s.other_gas_m3_per_year *= f
    for fl in s.fleets:
        fl.annual_kg *= f
    s.output.annual_rmb *= f
    return Site.model_validate(s.model_dump())


def year_scenario(spec: PathwaySpec, year: int) -> tuple[ResolvedScenario, list[dict[str, Any]], dict[str, Any]]:
    """The scenario, measures and factor overrides of one pathway year."""
    y0 = spec.years[0]
    f = (1.0 + spec.growth_pct / 100.0) ** (year - y0)
    base = spec.scenario
    sc = replace(base, name=f"{base.name}-{year}", sites=[_grow(s, f) for s in base.sites],
                 start=dt.date(year, 1, 1), end=dt.date(year + 1, 1, 1))
    ms = list(base.extra.get("measures") or [])
    for y, adds in spec.additions:
        if y <= year:
            ms += adds
    factors: dict[str, Any] = {}
    for kind, pts in spec.grid_factor.items():
        if pts:
            factors[f"grid:{kind}:CN:{year}"] = interpolate(pts, year)
    if "average" in spec.grid_factor and "residual" not in spec.grid_factor and spec.grid_factor["average"]:
        factors[f"grid:residual:CN:{year}"] = interpolate(spec.grid_factor["average"], year)
    for name, pts in spec.prices.items():
        factors[name] = interpolate(pts, year)
    return sc, ms, factors


def run_pathway(spec: PathwaySpec, *, progress: Callable[[int], None] | None = None,
                costs: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Simulate every year of the pathway; one row of group KPIs per year.

    Returns
    -------
    DataFrame
        Index ``year``; :func:`ems.studies.run.summarise` columns plus
        ``offsets_t``, ``net_scope12_t``, ``capex`` and ``annual_cost`` of the
        measures in force.
    """
    from ems.studies.run import evaluate

    rows = []
    for y in spec.years:
        sc, ms, factors = year_scenario(spec, y)
        r = evaluate(sc, ms, costs=costs, factors=factors or None)
        r.pop("measures", None)
        rows.append({"year": y, **{k: v for k, v in r.items() if k != "scenario"}})
        if progress:
            progress(y)
    return pd.DataFrame(rows).set_index("year")


@dataclass
class PathwayResult:
    """Result of :func:`study`: the group's KPIs per year and the targets' assessment."""

    yearly: pd.DataFrame
    targets: pd.DataFrame

    def write(self, out: Path) -> list[Path]:
        """Write ``pathway.csv`` and ``targets.csv`` into ``out``."""
        from ems.formatting import machine_frame

        out.mkdir(parents=True, exist_ok=True)
        machine_frame(self.yearly).to_csv(out / "pathway.csv")
        machine_frame(self.targets).to_csv(out / "targets.csv", index=False)
        return [out / "pathway.csv", out / "targets.csv"]


def study(spec: PathwaySpec, *, progress: Callable[[int], None] | None = None,
          costs: Mapping[str, Any] | None = None) -> PathwayResult:
    """Simulate the pathway year by year (:func:`run_pathway`) and assess its targets (:func:`assess`)."""
    yearly = run_pathway(spec, progress=progress, costs=costs)
    return PathwayResult(yearly, assess(yearly, spec.targets))


def _met(kind: str, value: float, base: float, tv: Any) -> bool | None:
    if not math.isfinite(value):
        return None
    if kind == "change":
        if not (math.isfinite(base) and base):
            return None
        return value / base - 1.0 <= float(tv) + 1e-12
    if kind == "level":
        return value >= float(tv) - 1e-12
    return None


def assess(yearly: pd.DataFrame, targets: Mapping[str, Any], *, emissions: str = "net_scope12_t") -> pd.DataFrame:
    """The year each target is met, and whether it holds in its target year.

    Parameters
    ----------
    yearly : DataFrame
        Index year; columns the targets' metrics (``scope12_market_t`` is read
        from ``emissions``, by default net of offsets).
    targets : dict
        From :func:`ems.accounting.targets.load_targets`.

    Returns
    -------
    DataFrame
        Columns :data:`ASSESS_COLUMNS`. ``change``: ``value / base - 1 <= target``;
        ``level``: ``value >= target``; ``peak``: ``first_year_met`` is the year of the
        highest value, met if it is no later than the target year (and later years
        stay below). ``met`` is None when the target year was not simulated.
    """
    y = yearly.sort_index()
    base_year = int(targets["base_year"])
    baseline = {k: (v.get("value") if isinstance(v, Mapping) else v)  # the targets file's {value, unit, source}
                for k, v in (targets.get("baseline") or {}).items()}
    rows = [_assess_target(y, t, base_year, baseline, emissions) for t in targets["targets"]
            if not _tracked_elsewhere(y, t, emissions)]
    out = pd.DataFrame(rows, columns=list(ASSESS_COLUMNS))
    out["first_year_met"] = out["first_year_met"].astype("Int64")
    out["met"] = out["met"].astype(object)
    return out


def _assess_target(y: pd.DataFrame, t: Mapping[str, Any], base_year: int, baseline: Mapping[str, Any],
                   emissions: str) -> dict[str, Any]:
    """One row of :func:`assess`: target ``t`` against the yearly pathway ``y`` (sorted by year)."""
    years = [int(v) for v in y.index]
    metric = str(t["metric"])
    series = _target_series(y, t, emissions)
    kind, ty, tv = str(t["kind"]), int(t["year"]), t.get("value")
    base, base_note = _base_value(series, baseline.get(metric), base_year, years)
    at = float(series.loc[ty]) if ty in years else math.nan
    if kind == "peak":
        first, met, note = _peak_outcome(series, ty)
    else:
        first, met, note = _threshold_outcome(series, years, kind, base, tv, ty)
    return {"target": t["id"], "metric": metric, "kind": kind, "target_year": ty, "target_value": tv,
            "base_year": base_year, "base_value": base, "value_in_target_year": at,
            "first_year_met": first, "met": met, "status": _status(met, first, kind),
            "note": base_note or note or str(t.get("note", ""))}


def _tracked_elsewhere(y: pd.DataFrame, t: Mapping[str, Any], emissions: str) -> bool:
    """A ``track`` target (reported, not aimed at, e.g. the group's ``pv_kwp``) whose metric the pathway
    does not compute: left out of the assessment rather than refused."""
    col = emissions if str(t["metric"]) == "scope12_market_t" else str(t["metric"])
    return str(t["kind"]) == "track" and col not in y


def _target_series(y: pd.DataFrame, t: Mapping[str, Any], emissions: str) -> pd.Series:
    """The yearly values a target is assessed on: its metric's column (Scope 1+2 market-based from
    ``emissions``; the intensity recomputed from ``emissions`` and ``output_rmb`` where both are there).

    Raises
    ------
    ConfigError
        The metric is not a column of the pathway.
    """
    metric = str(t["metric"])
    col = emissions if metric == "scope12_market_t" else metric
    if col not in y:
        raise ConfigError(f"target {t['id']}: metric {metric!r} is not a pathway column")
    if metric == "scope12_market_intensity_t_per_10k_rmb" and emissions in y and "output_rmb" in y:
        return y[emissions].astype(float) / (y["output_rmb"].astype(float) / 1e4)
    return y[col].astype(float)


def _base_value(series: pd.Series, given: Any, base_year: int, years: list[int]) -> tuple[float, str]:
    """The base of a change target: the targets file's baseline, else the base year's value, else NaN
    with a note saying why."""
    if given is not None:
        return float(given), ""
    if base_year in years:
        return float(series.loc[base_year]), ""
    return math.nan, f"base year {base_year} not simulated and no baseline in the targets file"


def _peak_outcome(series: pd.Series, ty: int) -> tuple[int | None, bool | None, str]:
    """A peak target: the year of the highest value; met if no later year exceeds the highest up to ``ty``.

    Returns
    -------
    first : int or None
        The year of the highest value.
    met : bool or None
        None when no year up to ``ty`` or none after it was simulated.
    note : str
        Why ``met`` is None, if it is.
    """
    series = series.dropna()  # years without the metric neither peak nor confirm one
    if not len(series):
        return None, None, "no simulated year has a value of this metric"
    first = int(series.idxmax())
    after = series[series.index > ty]
    upto = series[series.index <= ty]
    if len(upto) and len(after):
        return first, bool(after.max() <= upto.max()), ""
    if len(upto):
        return first, None, f"no year after {ty} simulated: the peak cannot be confirmed"
    return first, None, ""


def _threshold_outcome(series: pd.Series, years: list[int], kind: str, base: float, tv: Any,
                       ty: int) -> tuple[int | None, bool | None, str]:
    """A change or level target: the first year it is met, whether it is met in ``ty`` (None if
    ``ty`` was not simulated) and a note saying so."""
    first = next((yr for yr in years if _met(kind, float(series.loc[yr]), base, tv)), None)
    if ty in years:
        return first, _met(kind, float(series.loc[ty]), base, tv), ""
    return first, None, f"target year {ty} not simulated"


def _status(met: bool | None, first: int | None, kind: str = "") -> str:
    """``met (first in 2028)``, ``missed``, ``not assessed``, ... for the assessment table; for a
    peak target ``first`` is the peak year: ``met (peak in 2025)``, ``missed (peak in 2031)``."""
    if met is None:
        return "not assessed"
    if first is None:
        return "met" if met else "missed"
    if kind == "peak":
        return f"{'met' if met else 'missed'} (peak in {first})"
    return f"met (first in {first})" if met else f"missed (first met in {first})"

