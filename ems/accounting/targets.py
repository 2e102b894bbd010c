"""Progress against climate targets with a base year (targets and base-year values are data).

Targets live in ``ems/data/targets/`` (or any YAML path). Each row of :func:`progress`
says the value, the base-year value and where it came from, the change, what the target
requires in the reporting year and a status: ``on track``, ``off track`` or ``not
assessable`` with the reason. Required values follow the straight line from the base-year
value to the target in the target year (a common reading of "on track" for corporate
targets; SBTi uses linear annual reduction for absolute targets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.datafiles import data_path
from ems.errors import AccountingError, ConfigError
from ems.formatting import with_unit
from ems.yamldoc import load_document

__all__ = ["PROGRESS_COLUMNS", "load_targets", "progress"]

PROGRESS_COLUMNS = (
    "key", "target", "metric", "kind", "target_year", "target_value", "base_year", "base_value", "base_source",
    "year", "value", "change_vs_base", "required_value", "requirement", "status", "reason", "met", "note",
)
"""Columns of :func:`progress`; ``met`` is True / False / None (not assessable), kept for callers."""


def load_targets(name: str = "group") -> dict[str, Any]:
    """Load a targets file by built-in name or path.

    Returns
    -------
    dict
        ``base_year``, ``baseline`` (metric -> {value, unit, source, reason}), ``targets`` (list of
        ``{id, year, metric, kind (change|level|peak|track), value, note}``), ``source``.
    """
    p = Path(name)
    if not (p.suffix in (".yaml", ".yml") and p.exists()):
        p = data_path("targets", f"{name}.yaml")
    if not p.exists():
        raise ConfigError(f"unknown targets {name!r}: expected a built-in name (group) or a YAML path")
    data = load_document(p).data
    if "targets" not in data or "base_year" not in data:
        raise ConfigError(f"{p}: expected a mapping with 'base_year' and 'targets'")
    for t in data["targets"]:
        if t.get("kind") not in ("change", "level", "peak", "track"):
            raise ConfigError(f"{p}: target {t.get('id')}: expected kind change, level, peak or track; found {t.get('kind')!r}")
    return data


def _base(g: pd.DataFrame, metric: str, base_year: int, baseline: dict[str, Any]) -> tuple[float, str, str]:
    """Base-year value, its source, and the reason when there is none."""
    b = baseline.get(metric)
    if isinstance(b, dict) and b.get("value") is not None:
        return float(b["value"]), str(b.get("source", "targets data")), ""
    if isinstance(b, (int, float)):
        return float(b), "targets data", ""
    if base_year in g.index and np.isfinite(float(g.loc[base_year, metric])):
        return float(g.loc[base_year, metric]), f"readings of {base_year}", ""
    why = b.get("reason") if isinstance(b, dict) and b.get("reason") else (
        f"no {base_year} value: not in the targets data and the readings do not cover {base_year}")
    return np.nan, "", str(why)


def _line(base: float, goal: float, base_year: int, target_year: int, year: int) -> float:
    if target_year <= base_year:
        return goal
    f = min(max((year - base_year) / (target_year - base_year), 0.0), 1.0)
    return base + (goal - base) * f


def _assess(tg: dict[str, Any], value: float, base: float, year: int, base_year: int,
            prev: float | None) -> tuple[float, str, str, str]:
    """Required value, requirement text, status and reason of one target in one year."""
    kind, ty, tv = tg["kind"], int(tg["year"]), tg.get("value")
    if kind == "track":
        return np.nan, "no target: reported against the base year", "not assessable", "no target is set for this metric"
    if kind == "peak":
        req = f"must not grow after {ty}"
        if year <= ty:
            return np.nan, req, "not assessable", f"emissions may still grow until the peak year {ty}; assessed from {ty + 1}"
        if prev is None or not np.isfinite(prev):
            return np.nan, req, "not assessable", f"needs {year - 1} as well as {year}"
        change = with_unit("change_vs_base", value / prev - 1.0, signed=True)
        return prev, req, "on track" if value <= prev else "off track", f"change vs {year - 1}: {change}"
    tvf = float(tv) if tv is not None else np.nan
    what = (f"{with_unit('change_vs_base', tvf, signed=True)} vs {base_year} by {ty}" if kind == "change"
            else f"at least {with_unit(tg['metric'], tvf)} by {ty}")
    if not np.isfinite(base):
        return np.nan, what, "not assessable", ""
    goal = base * (1.0 + tvf) if kind == "change" else tvf
    need = _line(base, goal, base_year, ty, year)
    better = value <= need if kind == "change" else value >= need
    req = f"{what}; straight line from {base_year}: {'at most' if kind == 'change' else 'at least'} {with_unit(tg['metric'], need)} in {year}"
    return need, req, "on track" if better else "off track", ""


def progress(yearly: pd.DataFrame, targets: dict[str, Any] | None = None) -> pd.DataFrame:
    """Compare yearly KPIs with the targets.

    Parameters
    ----------
    yearly : DataFrame
        A KPI frame with ``period`` = local year (``kpis(..., period="year")``); one
        assessment per ``key`` for its latest year. A ``days`` column, when present,
        marks incomplete years (not assessable).
    targets : dict, optional
        From :func:`load_targets`; default the built-in ``group`` targets.

    Returns
    -------
    DataFrame
        Columns :data:`PROGRESS_COLUMNS`; text columns are never missing (empty string).
    """
    t = targets or load_targets()
    if yearly.empty:
        return pd.DataFrame(columns=list(PROGRESS_COLUMNS))
    if not yearly["period"].astype(str).str.fullmatch(r"\d{4}").all():
        raise AccountingError("progress: expected yearly KPIs (period='year'); found other periods")
    base_year = int(t["base_year"])
    rows = []
    for key, g in yearly.groupby("key", sort=True):
        g = g.assign(y=g["period"].astype(int)).set_index("y").sort_index()
        year = int(g.index.max())
        short = _short_year(g, year)
        for tg in t["targets"]:
            rows.append(_row(str(key), tg, g, year, base_year, t.get("baseline") or {}, short))
    return pd.DataFrame(rows, columns=list(PROGRESS_COLUMNS))


def _short_year(g: pd.DataFrame, year: int) -> str:
    if "days" not in g:
        return ""
    days = int(g.loc[year, "days"])
    full = 366 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 365
    return "" if days >= full else f"less than a year of data ({days} of {full} days in {year})"


def _row(key: str, tg: dict[str, Any], g: pd.DataFrame, year: int, base_year: int, baseline: dict[str, Any],
         short: str) -> dict[str, Any]:
    metric = tg["metric"]
    if metric not in g:
        raise AccountingError(f"target {tg['id']}: unknown metric {metric!r}; expected a KPI column")
    value = float(g.loc[year, metric])
    base, source, why = _base(g, metric, base_year, baseline)
    prev = float(g.loc[year - 1, metric]) if year - 1 in g.index else None
    need, req, status, reason = _assess(tg, value, base, year, base_year, prev)
    if short and tg["kind"] != "track":
        status, reason = "not assessable", short
    elif not np.isfinite(value):
        status, reason = "not assessable", f"{metric} is not defined for {year} (see the KPI notes)"
    elif status == "not assessable" and not reason:
        reason = why
    change = value / base - 1.0 if np.isfinite(base) and base and np.isfinite(value) else np.nan
    met = None if status == "not assessable" else status == "on track"
    tv = tg.get("value")
    return {
        "key": key, "target": tg["id"], "metric": metric, "kind": tg["kind"], "target_year": int(tg["year"]),
        "target_value": np.nan if tv is None else float(tv), "base_year": base_year, "base_value": base,
        "base_source": source or why, "year": year, "value": value, "change_vs_base": change, "required_value": need,
        "requirement": req, "status": status, "reason": reason, "met": met, "note": str(tg.get("note", "")),
    }
