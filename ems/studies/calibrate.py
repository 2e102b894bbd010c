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

A calibration has **converged** only when every annual total is within ``tol``
(default 0.5 %) and every *billed* month within ``month_tol`` (default 10 %). For
comparison the monthly statistics of ASHRAE Guideline 14-2014 (section 5.3.2.4: NMBE
within 5 %, CV(RMSE) within 15 % for a model calibrated to monthly bills) are reported
too (:func:`monthly_fit`).

``Calibration.to_yaml(source)`` writes the calibrated site by editing the source file in
place of its values (ruamel.yaml round trip: comments, order and layout kept), each
changed value rounded to the significant digits the tolerance needs (:func:`digits_for`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ems.errors import ConfigError
from ems.model.scenario import ResolvedScenario
from ems.model.site import Site
from ems.yamldoc import load_document

__all__ = ["QUANTITIES", "Calibration", "calibrate", "load_totals", "monthly_totals"]

log = logging.getLogger(__name__)

QUANTITIES = ("grid_import_kwh", "steam_gj", "natural_gas_m3", "diesel_kg", "gasoline_kg", "output_rmb")
"""Totals that can be calibrated (KPI column names)."""


def digits_for(tol: float) -> int:
    """Significant digits that keep rounding below a tenth of the relative tolerance ``tol`` [-].

    Rounding to ``n`` significant digits moves a value by at most ``0.5 x 10^(1-n)`` of
    it; ``n`` is the smallest with that <= ``tol / 10`` (4 digits for 0.5 %).
    """
    return max(2, math.ceil(1 - math.log10(max(tol, 1e-12) / 5)))


def round_sig(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant digits."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def monthly_fit(residuals: pd.DataFrame, quantity: str) -> dict[str, float]:
    """NMBE and CV(RMSE) [-] of the billed months of ``quantity`` (ASHRAE Guideline 14-2014).

    ``NMBE = sum(sim - bill) / sum(bill)``; ``CV(RMSE) = sqrt(mean((sim - bill)^2)) / mean(bill)``
    (with n, not n - p, in the denominators: p = 0 parameters are fitted per month).
    """
    r = residuals[(residuals["quantity"] == quantity) & (residuals["month"] > 0) & residuals["given"]]
    if r.empty or float(r["target"].sum()) == 0:
        return {"nmbe": math.nan, "cv_rmse": math.nan}
    err = r["simulated"].to_numpy() - r["target"].to_numpy()
    return {"nmbe": float(err.sum() / r["target"].sum()),
            "cv_rmse": float(np.sqrt(np.mean(err**2)) / r["target"].mean())}


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
    tol, month_tol : float [-]
        The tolerances ``converged`` was judged by (annual totals; billed months).
    base : Site, optional
        The site before calibration (what :meth:`to_yaml` diffs against).
    """

    site: Site
    iterations: int
    converged: bool
    residuals: pd.DataFrame
    history: list[dict[str, float]] = field(default_factory=list)
    tol: float = 0.005
    month_tol: float = 0.10
    base: Site | None = None

    def misses(self) -> pd.DataFrame:
        """Rows of :attr:`residuals` outside their tolerance (annual: ``tol``; billed months: ``month_tol``)."""
        r = self.residuals
        annual = (r["month"] == 0) & (r["deviation"].abs() > self.tol)
        monthly = (r["month"] > 0) & r["given"] & (r["deviation"].abs() > self.month_tol)
        return r[annual | monthly]

    def changes(self) -> dict[tuple[str | int, ...], float]:
        """Every number calibration changed: field path -> new value, rounded (:func:`digits_for`)."""
        if self.base is None:
            return {}
        n = digits_for(self.tol)
        out: dict[tuple[str | int, ...], float] = {}
        for path, new in _leaves(self.site.model_dump(mode="json")):
            old = _get(self.base.model_dump(mode="json"), path)
            if isinstance(new, float) and (not isinstance(old, int | float) or round_sig(float(old), n) != round_sig(new, n)):
                out[path] = round_sig(new, n)
        return out

    def to_yaml(self, source: str | Path | None = None) -> str:
        """The calibrated site as YAML.

        With ``source`` (the site file calibrated), that file with only the changed
        values replaced, its comments, key order and layout kept (ruamel.yaml round
        trip); without, the fields that differ from the defaults.
        """
        if source is None:
            data = self.site.model_dump(mode="json", exclude_defaults=True)
            head = "# yaml-language-server: $schema=../docs/schema/site.schema.json\n# calibrated by ems calibrate\n"
            return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return _edit_yaml(Path(source).read_text(encoding="utf-8"), self.changes())


def _leaves(data: Any, path: tuple[str | int, ...] = ()) -> Any:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaves(v, (*path, i))
    else:
        yield path, data


def _get(data: Any, path: tuple[str | int, ...]) -> Any:
    for k in path:
        try:
            data = data[k]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _edit_yaml(text: str, changes: Mapping[tuple[str | int, ...], float]) -> str:
    """``text`` with the values at ``changes``' paths replaced (added where the file left a default).

    A value the file holds is replaced where it stands, so every other byte stays (flow
    mappings over several lines included); only a value the file left to its default needs
    the ruamel.yaml round trip, which keeps comments and order but joins flow mappings.
    """
    from ruamel.yaml import YAML

    doc = YAML().load(text)
    lines = text.splitlines(keepends=True)
    rest: dict[tuple[str | int, ...], float] = {}
    for path, value in sorted(changes.items(), key=lambda kv: _place(doc, kv[0]) or (-1, -1), reverse=True):
        place = _place(doc, path)  # last place first: an edit never moves one still to do
        m = _PLAIN.match(lines[place[0]], place[1]) if place else None
        if place is None or m is None:
            rest[path] = value
            continue
        line = lines[place[0]]
        lines[place[0]] = line[:m.start()] + _scalar(m.group(0), value) + line[m.end():]
    edited = "".join(lines)
    return _round_trip(edited, rest) if rest else edited


_PLAIN = re.compile(r"-?[0-9][0-9_.eE+-]*(?=\s*(?:[,}\]#]|$))")
"""A plain number where a YAML value starts (the values calibration fits)."""


def _place(doc: Any, path: tuple[str | int, ...]) -> tuple[int, int] | None:
    """Line and column (0-based) of the value at ``path`` in the loaded file, None if it is not there."""
    node = _get(doc, path[:-1])
    key, lc = path[-1], getattr(node, "lc", None)  # ruamel.yaml's line/column record
    try:
        if isinstance(node, dict) and key in node:
            line, col = lc.value(key)  # type: ignore[union-attr]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            line, col = lc.item(key)  # type: ignore[union-attr]
        else:
            return None
    except (AttributeError, KeyError, TypeError):
        return None
    return int(line), int(col)


def _scalar(old: str, value: float) -> str:
    """``value`` written as the file wrote the number it replaces (an integer stays one)."""
    is_int = re.fullmatch(r"-?[0-9_]+", old) is not None
    return str(int(value)) if is_int and float(value).is_integer() else repr(float(value))


def _round_trip(text: str, changes: Mapping[tuple[str | int, ...], float]) -> str:
    """``text`` with ``changes`` set through a ruamel.yaml round trip (for values the file does not hold)."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.util import load_yaml_guess_indent

    _, ind, bsi = load_yaml_guess_indent(text)
    rt = YAML()  # round trip: comments, order, flow style and quotes kept
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long line the file did not fold
    rt.indent(mapping=bsi, sequence=ind, offset=bsi)  # the file's own indentation
    doc = rt.load(text)
    for path, value in changes.items():
        node = doc
        for k in path[:-1]:
            if isinstance(node, dict) and node.get(k) is None:
                node[k] = CommentedMap()
            node = node[k]
        old = node.get(path[-1]) if isinstance(node, dict) else node[path[-1]]
        node[path[-1]] = int(value) if isinstance(old, int) and float(value).is_integer() else value
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


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


def _residuals(m: pd.DataFrame, totals: Mapping[str, Any]) -> pd.DataFrame:
    """Simulated vs target per quantity and month (0: the year); see :class:`Calibration`."""
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
    return res


def calibrate(
    site: Site,
    totals: Mapping[str, Any],
    *,
    year: int = 2024,
    seed: int = 0,
    tol: float = 0.005,
    month_tol: float = 0.10,
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
    month_tol : float [-]
        Largest relative deviation of a billed month for the result to count as converged.
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
    cal = Calibration(site=s, iterations=it, converged=converged, residuals=_residuals(m, totals),
                      history=history, tol=tol, month_tol=month_tol, base=site)
    cal.converged = converged and cal.misses().empty
    return cal
