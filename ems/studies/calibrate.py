"""Calibrate a site to its bills: fit the profile scales to known totals.

An energy manager knows a year of bills: grid import [kWh], purchased steam [GJ],
natural gas [m3], diesel and gasoline [kg], output value [RMB], as annual totals or
twelve monthly ones. :func:`calibrate` simulates the site at hourly resolution,
reads the totals back through :func:`ems.accounting.kpis`, corrects the site's
scales, and repeats until every total is within ``tol`` (a few iterations):

* grid import: every load's ``annual_kwh`` (and its kW parameters, so the profile's
  own scale stays 1) times a factor; the target consumption is the billed import
  plus what the last run covered on site (PV consumed, CHP, less export). With
  monthly import figures, HVAC and the other loads get separate factors fitted by
  least squares to the monthly consumption (HVAC carries the season).
* purchased steam: ``steam.annual_gj`` moved by the gap / purchased share (exact
  for the affine merit order of ``ems/sim/thermal.py``).
* natural gas: ``other_gas_m3_per_year`` moved by the gap.
* diesel, gasoline: the fleets' ``annual_kg`` scaled; output: ``output.annual_rmb``.

The residuals per month are reported against monthly targets (or the annual
target spread like the simulation, for a feel of the shape).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ems.errors import ConfigError
from ems.model.loader import load_document
from ems.model.scenario import ResolvedScenario
from ems.model.site import Site

__all__ = ["QUANTITIES", "Calibration", "calibrate", "load_totals", "monthly_totals"]

log = logging.getLogger(__name__)

QUANTITIES = ("grid_import_kwh", "steam_gj", "natural_gas_m3", "diesel_kg", "gasoline_kg", "output_rmb")
"""Totals that can be calibrated (KPI column names)."""


@dataclass
class Calibration:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    site : Site
        The calibrated site.
    iterations : int
    converged : bool
    residuals : DataFrame
        Columns ``quantity``, ``month`` (1-12, or 0 for the year), ``target``,
        ``simulated``, ``deviation`` (simulated / target - 1).
    history : list of dict
        Relative deviation of each annual total per iteration.
    """

    site: Site
    iterations: int
    converged: bool
    residuals: pd.DataFrame
    history: list[dict[str, float]] = field(default_factory=list)

    def to_yaml(self) -> str:
        """The calibrated site as YAML (fields that differ from the defaults)."""
        data = self.site.model_dump(mode="json", exclude_defaults=True)
        head = "# yaml-language-server: $schema=../docs/schema/site.schema.json\n# calibrated by ems calibrate\n"
        return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def load_totals(path: str | Path) -> dict[str, Any]:
    """Read a totals file.

    Layout::

        year: 2024                       # optional, else --year
        annual: {grid_import_kwh: 1.4e8, steam_gj: 60000, natural_gas_m3: 2.2e6}
        monthly: {grid_import_kwh: [12 values]}   # optional; its sum is the annual total

    Raises
    ------
    ConfigError
        Unknown quantities, a month list that is not 12 numbers, non-positive totals.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"totals: expected a YAML file, found no file at {str(p)!r}")
    data = load_document(p).data  # size, depth and file-type limits, located errors
    if not isinstance(data, dict) or not (data.get("annual") or data.get("monthly")):
        raise ConfigError(f"{p}: expected a mapping with 'annual' and/or 'monthly' totals")
    out: dict[str, Any] = {"year": data.get("year"), "annual": {}, "monthly": {}}
    for sect in ("annual", "monthly"):
        for k, v in (data.get(sect) or {}).items():
            if k not in QUANTITIES:
                raise ConfigError(f"{p}: {sect}.{k}: expected one of {', '.join(QUANTITIES)}, found {k!r}")
            if sect == "monthly":
                if not isinstance(v, list) or len(v) != 12:
                    raise ConfigError(f"{p}: monthly.{k}: expected 12 numbers (Jan..Dec), found {v!r}")
                vals = [float(x) for x in v]
                if min(vals) < 0:
                    raise ConfigError(f"{p}: monthly.{k}: expected values >= 0, found {min(vals)}")
                out["monthly"][k] = vals
            else:
                if float(v) < 0:
                    raise ConfigError(f"{p}: annual.{k}: expected a total >= 0, found {v}")
                out["annual"][k] = float(v)
    for k, vals in out["monthly"].items():
        tot = sum(vals)
        if k in out["annual"] and not math.isclose(out["annual"][k], tot, rel_tol=1e-3):
            raise ConfigError(f"{p}: annual.{k} = {out['annual'][k]} but the monthly values sum to {tot}")
        out["annual"][k] = tot
    return out


def _scenario(site: Site, year: int, seed: int, resolution_s: int) -> ResolvedScenario:
    return ResolvedScenario(name=f"calibrate-{site.id}", sites=[site], start=dt.date(year, 1, 1),
                            end=dt.date(year + 1, 1, 1), resolution_s=resolution_s, seed=seed)


def monthly_totals(site: Site, year: int, *, seed: int = 0, resolution_s: int = 3600) -> pd.DataFrame:
    """Simulate a site for a year and return monthly KPI columns (index month 1-12).

    Columns: :data:`QUANTITIES`, ``electricity_consumed_kwh``, ``hvac_kwh`` (the
    HVAC load meter) and ``loads_kwh`` (all load meters).
    """
    import ems
    from ems.accounting import kpis

    sim = ems.simulate(_scenario(site, year, seed, resolution_s))
    res = kpis(sim, by="site", period="month")
    k = res.kpis
    k = k.assign(month=k["period"].str.slice(5, 7).astype(int)).set_index("month")
    out = k[[*QUANTITIES, "electricity_consumed_kwh"]].astype(float).copy()
    s1 = res.stage1
    ends = {m.meter: str(m.attrs.get("end_use", "")) for m in sim.meters if m.kind == "load"}
    ld = s1[(s1["meter"].isin(list(ends))) & (s1["quantity"] == "energy_kwh")]
    ld = ld.assign(month=pd.DatetimeIndex(ld["date"]).month, hvac=ld["meter"].map(ends) == "hvac")
    out["loads_kwh"] = ld.groupby("month")["value"].sum().reindex(out.index, fill_value=0.0)
    out["hvac_kwh"] = ld[ld["hvac"]].groupby("month")["value"].sum().reindex(out.index, fill_value=0.0)
    return out.reindex(range(1, 13), fill_value=0.0)


def _scale_loads(site: Site, f_hvac: float, f_other: float) -> None:
    lo = site.loads
    if lo.production is not None:
        lo.production.peak_kw *= f_other
        if lo.production.annual_kwh:
            lo.production.annual_kwh *= f_other
    if lo.base is not None:
        lo.base.kw *= f_other
        if lo.base.annual_kwh:
            lo.base.annual_kwh *= f_other
    if lo.compressed_air is not None:
        lo.compressed_air.kw *= f_other
        if lo.compressed_air.annual_kwh:
            lo.compressed_air.annual_kwh *= f_other
    lo.electrified_fleet_kwh_per_year *= f_other
    if lo.hvac is not None:
        h = lo.hvac
        h.cooling_kw_per_degc *= f_hvac
        h.heating_kw_per_degc *= f_hvac
        if h.max_kw is not None:
            h.max_kw *= f_hvac
        if h.annual_kwh:
            h.annual_kwh *= f_hvac


def _fit_electricity(site: Site, m: pd.DataFrame, totals: Mapping[str, Any]) -> None:
    annual = totals["annual"]["grid_import_kwh"]
    onsite = m["electricity_consumed_kwh"] - m["grid_import_kwh"]  # PV consumed + CHP (- nothing else)
    monthly = totals["monthly"].get("grid_import_kwh")
    hv = m["hvac_kwh"].to_numpy()
    other = (m["loads_kwh"] - m["hvac_kwh"]).to_numpy()
    if monthly is not None and site.loads.hvac is not None and hv.sum() > 0 and other.sum() > 0:
        target = np.asarray(monthly) + onsite.to_numpy()
        a = np.column_stack([hv, other])
        sol, *_ = np.linalg.lstsq(a, target, rcond=None)
        f_h, f_o = (float(x) for x in sol)
        if f_h <= 0 or f_o <= 0:  # fall back to one factor
            f_h = f_o = float(target.sum() / (hv.sum() + other.sum()))
    else:
        tot = float(m["loads_kwh"].sum())
        if tot <= 0:
            raise ConfigError(f"calibrate: site {site.id} has no electrical load to scale to the grid import")
        f_h = f_o = (annual + float(onsite.sum())) / tot
    _scale_loads(site, max(f_h, 1e-6), max(f_o, 1e-6))


def _fit_other(site: Site, m: pd.DataFrame, totals: Mapping[str, Any]) -> None:
    ann = totals["annual"]
    if "steam_gj" in ann:
        st = site.steam
        if st is None or st.annual_gj is None:
            raise ConfigError(f"calibrate: steam_gj given but site {site.id} has no steam.annual_gj to fit")
        share = 1.0 - st.waste_heat_share - (st.boiler.share if st.boiler else 0.0)
        if share <= 0:
            raise ConfigError(f"calibrate: site {site.id} buys no steam (waste heat + boiler cover all demand)")
        st.annual_gj = max(st.annual_gj + (ann["steam_gj"] - float(m["steam_gj"].sum())) / share, 1e-6)
    if "natural_gas_m3" in ann:
        gap = ann["natural_gas_m3"] - float(m["natural_gas_m3"].sum())
        site.other_gas_m3_per_year = max(site.other_gas_m3_per_year + gap, 0.0)
    for fuel in ("diesel", "gasoline"):
        key = f"{fuel}_kg"
        if key in ann:
            sim = float(m[key].sum())
            fl = [f for f in site.fleets if f.fuel == fuel]
            if not fl:
                raise ConfigError(f"calibrate: {key} given but site {site.id} has no {fuel} fleet")
            if sim > 0:
                for f in fl:
                    f.annual_kg *= ann[key] / sim
    if "output_rmb" in ann and float(m["output_rmb"].sum()) > 0:
        site.output.annual_rmb *= ann["output_rmb"] / float(m["output_rmb"].sum())


def _deviations(m: pd.DataFrame, totals: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(m[k].sum()) / v - 1.0 if v else float(m[k].sum())
            for k, v in totals["annual"].items()}


def calibrate(
    site: Site,
    totals: Mapping[str, Any],
    *,
    year: int = 2024,
    seed: int = 0,
    tol: float = 0.005,
    max_iter: int = 6,
    resolution_s: int = 3600,
) -> Calibration:
    """Fit a site's scales so its simulated totals match ``totals``.

    Parameters
    ----------
    site : Site
        Left unchanged; the result holds a calibrated copy.
    totals : dict
        From :func:`load_totals`: ``{"annual": {...}, "monthly": {...}}``.
    year : int
        Calendar year simulated (local).
    seed : int
    tol : float [-]
        Largest relative deviation of an annual total to stop at.
    max_iter : int
    resolution_s : int [s]
        Simulation step; hourly by default (fast).

    Returns
    -------
    Calibration
    """
    s = site.model_copy(deep=True)
    history: list[dict[str, float]] = []
    m = monthly_totals(s, year, seed=seed, resolution_s=resolution_s)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        dev = _deviations(m, totals)
        history.append(dev)
        log.info("calibrate %s iteration %d: %s", s.id, it, dev)
        if all(abs(v) <= tol for v in dev.values()):
            converged = True
            it -= 1
            break
        if "grid_import_kwh" in totals["annual"]:
            _fit_electricity(s, m, totals)
        _fit_other(s, m, totals)
        s = Site.model_validate(s.model_dump())
        m = monthly_totals(s, year, seed=seed, resolution_s=resolution_s)
    else:
        dev = _deviations(m, totals)
        history.append(dev)
        converged = all(abs(v) <= tol for v in dev.values())
    rows = []
    for q, target in totals["annual"].items():
        sim_m = m[q].to_numpy()
        monthly = totals["monthly"].get(q)
        if monthly is None:  # spread the annual target like the simulation
            tm = sim_m / sim_m.sum() * target if sim_m.sum() > 0 else np.full(12, target / 12)
        else:
            tm = np.asarray(monthly)
        for mo in range(12):
            rows.append({"quantity": q, "month": mo + 1, "target": float(tm[mo]), "simulated": float(sim_m[mo]),
                         "given": monthly is not None})
        rows.append({"quantity": q, "month": 0, "target": float(target), "simulated": float(sim_m.sum()),
                     "given": True})
    res = pd.DataFrame(rows)
    t = res["target"].to_numpy(dtype=float)
    res["deviation"] = np.divide(res["simulated"].to_numpy() - t, t, out=np.full(len(t), np.nan), where=t != 0)
    return Calibration(site=s, iterations=it, converged=converged, residuals=res, history=history)
