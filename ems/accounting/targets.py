"""Progress against climate targets with a base year (targets are data in ``ems/data/targets/``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ems.errors import AccountingError, ConfigError

__all__ = ["load_targets", "progress"]

PROGRESS_COLUMNS = (
    "key", "target", "metric", "kind", "target_year", "target_value", "base_year", "base_value",
    "year", "value", "change_vs_base", "met", "note",
)


def load_targets(name: str = "group") -> dict[str, Any]:
    """Load a targets file by built-in name or path.

    Returns
    -------
    dict
        ``base_year``, ``baseline`` (metric -> value or None), ``targets`` (list of
        ``{id, year, metric, kind (change|level|peak), value, note}``), ``source``.
    """
    p = Path(name)
    if not (p.suffix in (".yaml", ".yml") and p.exists()):
        p = Path(str(resources.files("ems").joinpath("data", "targets", f"{name}.yaml")))
    if not p.exists():
        raise ConfigError(f"unknown targets {name!r}: expected a built-in name (group) or a YAML path")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or "targets" not in data or "base_year" not in data:
        raise ConfigError(f"{p}: expected a mapping with 'base_year' and 'targets'")
    return data


def progress(yearly: pd.DataFrame, targets: dict[str, Any] | None = None) -> pd.DataFrame:
    """Compare yearly KPIs with the targets.

    Parameters
    ----------
    yearly : DataFrame
        A KPI frame with ``period`` = local year (``kpis(..., period="year")``); one
        assessment per ``key`` for its latest year.
    targets : dict, optional
        From :func:`load_targets`; default the built-in ``group`` targets.

    Returns
    -------
    DataFrame
        Columns :data:`PROGRESS_COLUMNS`. ``change`` targets: ``value / base - 1`` must
        reach ``target_value`` (e.g. -0.40) by ``target_year``; ``level`` targets: the
        value must reach ``target_value``; ``peak``: the metric must not grow after
        ``target_year`` (assessed as the change vs the previous year).
    """
    t = targets or load_targets()
    if yearly.empty:
        return pd.DataFrame(columns=list(PROGRESS_COLUMNS))
    if not yearly["period"].astype(str).str.fullmatch(r"\d{4}").all():
        raise AccountingError("progress: expected yearly KPIs (period='year'); found other periods")
    base_year = int(t["base_year"])
    baseline = t.get("baseline") or {}
    rows = []
    for key, g in yearly.groupby("key", sort=True):
        g = g.assign(y=g["period"].astype(int)).set_index("y").sort_index()
        year = int(g.index.max())
        for tg in t["targets"]:
            metric = tg["metric"]
            if metric not in g:
                raise AccountingError(f"target {tg['id']}: unknown metric {metric!r}; expected a KPI column")
            value = float(g.loc[year, metric])
            base = baseline.get(metric)
            note = ""
            if base is None:
                if base_year in g.index:
                    base = float(g.loc[base_year, metric])
                else:
                    note = f"base year {base_year} not in the readings and no baseline value in the targets file"
            base_f = float(base) if base is not None else np.nan
            change = value / base_f - 1.0 if base_f and np.isfinite(base_f) else np.nan
            kind = tg["kind"]
            tv = tg.get("value")
            met: Any = None
            if kind == "change" and np.isfinite(change):
                met = bool(change <= float(tv))
            elif kind == "level":
                met = bool(value >= float(tv))
            elif kind == "peak":
                if year - 1 in g.index:
                    prev = float(g.loc[year - 1, metric])
                    met = bool(value <= prev)
                    note = note or f"change vs {year - 1}: {value / prev - 1.0:+.1%}" if prev else note
                else:
                    note = note or "needs two consecutive years"
            rows.append({
                "key": key, "target": tg["id"], "metric": metric, "kind": kind, "target_year": int(tg["year"]),
                "target_value": tv, "base_year": base_year, "base_value": base_f, "year": year, "value": value,
                "change_vs_base": change, "met": met, "note": note or str(tg.get("note", "")),
            })
    return pd.DataFrame(rows, columns=list(PROGRESS_COLUMNS))
