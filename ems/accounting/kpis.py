"""Stage 2 of the rollup: KPIs for any grouping and period from the stage-1 sums.

Pipeline
--------
1. :func:`ems.accounting.energy.stage1` (readings -> per site, meter, quantity,
   local day and tariff period sums).
2. :func:`daily_frame`: per (site, local day) flows by carrier, tce, emissions and
   cost, with the factor of the site's region and the day's year.
3. :func:`rollup`: per (site, period) sums; renewable claims (PV consumed, then
   contracts, then certificates) capped per site and period so they never exceed
   consumption; then sums to the grouping (site, company, park, group) and the
   ratios recomputed from the sums.

Formulas, units and sources are in ``docs/kpis.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ems.accounting.certificates import allocate, certificate_table, contract_table
from ems.accounting.energy import stage1
from ems.accounting.factors import FactorSet, load_factor_set
from ems.errors import AccountingError
from ems.readings import ReadingSet, SiteInfo

__all__ = ["BY", "KpiResult", "daily_frame", "kpis", "rollup"]

log = logging.getLogger(__name__)

BY = ("site", "company", "park", "group")
_FLOW = {
    ("grid", "import_kwh"): "grid_import_kwh",
    ("grid", "export_kwh"): "grid_export_kwh",
    ("pv", "energy_kwh"): "pv_generated_kwh",
    ("pv", "curtailed_kwh"): "pv_curtailed_kwh",
    ("battery", "charge_kwh"): "battery_charge_kwh",
    ("battery", "discharge_kwh"): "battery_discharge_kwh",
    ("load", "energy_kwh"): "load_metered_kwh",
    ("chp", "energy_kwh"): "chp_generated_kwh",
    ("chp", "heat_gj"): "chp_heat_gj",
    ("steam", "heat_gj"): "steam_gj",
    ("boiler", "heat_gj"): "boiler_heat_gj",
    ("waste_heat", "heat_gj"): "waste_heat_gj",
    ("gas", "volume_m3"): "natural_gas_m3",
    ("production", "output_rmb"): "output_rmb",
    ("_site", "pv_exported_kwh"): "pv_exported_kwh",
}
FLOWS = (*dict.fromkeys(_FLOW.values()), "diesel_kg", "gasoline_kg")
_ADDITIVE_EXTRA = (
    "electricity_consumed_kwh", "pv_consumed_kwh", "battery_losses_kwh",
    "electricity_tce", "steam_tce", "natural_gas_tce", "diesel_tce", "gasoline_tce", "pv_consumed_tce_equiv",
    "scope1_natural_gas_kg", "scope1_diesel_kg", "scope1_gasoline_kg", "scope1_refrigerant_kg",
    "scope1_process_kg", "refrigerant_kg", "scope2_electricity_location_kg", "scope2_heat_kg",
    "residual_weighted_kg", "energy_cost", "demand_charge", "export_revenue", "steam_cost",
    "natural_gas_cost", "fuel_cost", "certificate_cost", "hours",
    "contract_hydro_kwh", "contract_green_power_kwh", "certificates_valid_kwh", "certificates_invalid_kwh",
    "dual_control_cert_kwh", "dual_control_contract_kwh",
)
_INSTRUMENTS = ("contract_hydro_kwh", "contract_green_power_kwh", "certificates_valid_kwh", "certificates_invalid_kwh")


@dataclass
class KpiResult:
    """What :func:`kpis` returns.

    Attributes
    ----------
    kpis : DataFrame
        One row per (grouping key, period); columns described in ``docs/kpis.md``.
    daily : DataFrame
        Per (site, local day) frame the KPIs were rolled up from.
    stage1 : DataFrame
        Stage-1 sums (see :mod:`ems.accounting.energy`).
    anomalies : DataFrame
        Register resets, rollovers and gaps found in stage 1.
    certificates : DataFrame
        Every certificate with its validity and reason.
    contracts : DataFrame
        Every contract delivery.
    unallocated : DataFrame
        Certificates or contracts whose period is outside the readings.
    factors_used : DataFrame
        Every factor value used: name, region, year, value, unit, source, set, version.
    notes : list of str
        Conventions applied, to print with any report.
    by, period : str
        Grouping and period of ``kpis``.
    """

    kpis: pd.DataFrame
    daily: pd.DataFrame
    stage1: pd.DataFrame
    anomalies: pd.DataFrame
    certificates: pd.DataFrame
    contracts: pd.DataFrame
    unallocated: pd.DataFrame
    factors_used: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    by: str = "site"
    period: str = "month"

    def rollup(self, by: str = "site", period: str | tuple[Any, Any] = "month") -> pd.DataFrame:
        """Return the KPI frame for another grouping or period (stage 1 is not recomputed)."""
        return rollup(self.daily, by=by, period=period)


def _factor_sets(rs: ReadingSet, factors: FactorSet | Mapping[str, Any] | None) -> dict[str, FactorSet]:
    out: dict[str, FactorSet] = {}
    cache: dict[str, FactorSet] = {}
    for s in rs.sites:
        if isinstance(factors, FactorSet):
            out[s.site] = factors
            continue
        name = s.factor_set or "cn-2023"
        if name not in cache:
            cache[name] = load_factor_set(name, overrides=dict(factors) if factors else None)
        out[s.site] = cache[name]
    return out


class _Used:
    """Collects the factors used, for the audit table."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._grid: dict[tuple[Any, ...], dict[str, Any]] = {}

    def scalar(self, fs: FactorSet, key: str) -> float:
        e = fs.entry(key)
        self.rows[(fs.name, key, "*", "*")] = {
            "name": key, "region": "*", "year_requested": None, "year_used": None,
            "value": float(e["value"]), "unit": e.get("unit", ""), "source": str(e.get("source", "")).strip(),
            "note": "assumption" if e.get("assumption") else "", "to_confirm": bool(e.get("to_confirm", False)),
            "set": fs.name, "version": fs.version,
        }
        return float(e["value"])

    def grid(self, fs: FactorSet, kind: str, si: SiteInfo, year: int) -> float | None:
        ck = (id(fs), kind, si.grid_region, si.country, year)
        if ck not in self._grid:
            self._grid[ck] = fs.grid_factor(kind, si.grid_region, si.country, year)
        g = self._grid[ck]
        self.rows[(fs.name, f"grid_{kind}", si.grid_region, year)] = {
            "name": f"grid_{kind}_kgco2_per_kwh", "region": g["region"], "year_requested": year,
            "year_used": g["year"] if g["value"] is not None else None, "value": g["value"],
            "unit": g["unit"], "source": g["source"], "note": f"site region {si.grid_region}: {g['note']}",
            "to_confirm": bool(g.get("to_confirm", False)), "set": fs.name, "version": fs.version,
        }
        return None if g["value"] is None else float(g["value"])

    def gwp(self, fs: FactorSet, gas: str) -> float:
        v = fs.gwp(gas)
        self.rows[(fs.name, "gwp", gas, fs.gwp_edition)] = {
            "name": f"gwp_{gas}", "region": "*", "year_requested": None, "year_used": None, "value": v,
            "unit": "kgCO2e/kg", "source": str(fs.data.get("gwp", {}).get("source", "")),
            "note": f"edition {fs.gwp_edition}", "to_confirm": False, "set": fs.name, "version": fs.version,
        }
        return v

    def frame(self) -> pd.DataFrame:
        cols = ["name", "region", "year_requested", "year_used", "value", "unit", "source", "note", "to_confirm", "set", "version"]
        df = pd.DataFrame(list(self.rows.values()), columns=cols)
        for c in ("year_requested", "year_used"):
            df[c] = df[c].astype("Int64")
        return df


def _day_hours(dates: np.ndarray, tz: str) -> np.ndarray:
    d = pd.DatetimeIndex(dates)
    a = d.tz_localize(tz, nonexistent="shift_forward", ambiguous=True)
    b = (d + pd.Timedelta(days=1)).tz_localize(tz, nonexistent="shift_forward", ambiguous=True)
    return np.asarray((b - a).total_seconds(), dtype=np.float64) / 3600.0


def _site_day_hours(site: pd.Series, date: pd.Series, sites: Mapping[str, SiteInfo]) -> np.ndarray:
    """Hours of each (site, local day) row, computed once per time zone and distinct day."""
    out = np.zeros(len(site))
    dates = date.to_numpy()
    zone = np.asarray([sites[s].tz for s in site], dtype=object) if len(site) else np.zeros(0, object)
    for tz in pd.unique(zone):
        rows = np.flatnonzero(zone == tz)
        uniq, inv = np.unique(dates[rows], return_inverse=True)
        out[rows] = _day_hours(uniq, str(tz))[inv]
    return out


def _flows(s1: pd.DataFrame, rs: ReadingSet) -> np.ndarray:
    """Flow name (see ``_FLOW``, fuels by carrier) of each stage-1 row, or None."""
    kind = {(m.site, m.meter): m.kind for m in rs.meters}
    carrier = {(m.site, m.meter): m.carrier for m in rs.meters}
    cs, us = pd.factorize(s1["site"])
    cm, um = pd.factorize(s1["meter"])
    cq, uq = pd.factorize(s1["quantity"])
    combo = (cs.astype(np.int64) * len(um) + cm) * len(uq) + cq
    uniq, codes = np.unique(combo, return_inverse=True)
    names: list[str | None] = []
    for c in uniq.tolist():
        site, meter, q = us[c // (len(um) * len(uq))], um[(c // len(uq)) % len(um)], uq[c % len(uq)]
        k = "_site" if meter == "_site" else kind.get((site, meter))
        f = _FLOW.get((k, q)) if k is not None else None
        if f is None and k == "fuel" and q == "mass_kg":
            f = f"{carrier[(site, meter)]}_kg"
        names.append(f)
    table = np.asarray([*names, None], dtype=object)
    out: np.ndarray = table[codes]
    return out


def _event_days(ev: pd.DataFrame, sites: Mapping[str, SiteInfo]) -> np.ndarray:
    out = np.empty(len(ev), dtype="datetime64[ns]")
    for s, idx in ev.groupby("site", sort=False).indices.items():
        tz = sites[s].tz if s in sites else "UTC"
        loc = pd.DatetimeIndex(ev.index[idx]).tz_convert(tz).tz_localize(None).normalize()
        out[idx] = loc.as_unit("ns").to_numpy()
    return out


def daily_frame(
    s1: pd.DataFrame,
    rs: ReadingSet,
    fsets: Mapping[str, FactorSet],
    used: _Used | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Build the per (site, local day) frame of flows, tce, emissions and cost.

    Returns
    -------
    daily, certificates, contracts, unallocated : DataFrame
    """
    used = used or _Used()
    sites = {s.site: s for s in rs.sites}
    s1 = s1.assign(flow=_flows(s1, rs))
    s1 = s1[s1["flow"].notna()]
    keys = ["site", "date"]
    wide = s1.groupby([*keys, "flow"], sort=True)["value"].sum().unstack("flow", fill_value=0.0)
    daily = wide.reindex(columns=list(FLOWS), fill_value=0.0).reset_index()
    if daily.empty:
        raise AccountingError("no register readings to account: expected import_kwh, energy_kwh, heat_gj, volume_m3, ... registers")
    gi = s1[s1["flow"] == "grid_import_kwh"]
    # peak: per grid meter the max interval rate of the day, summed over grid meters
    peak = gi.groupby([*keys, "meter"])["max_rate"].max().groupby(level=[0, 1]).sum().rename("peak_import_kw")
    daily = daily.merge(peak.reset_index(), on=keys, how="left")
    daily["peak_import_kw"] = daily["peak_import_kw"].fillna(0.0)

    # hours of each local day (23 h / 25 h on DST days), limited to the hours the grid
    # meter covered (n intervals x interval) so a partial day has a fair load factor
    daily["hours"] = _site_day_hours(daily["site"], daily["date"], sites)
    iv = {(m.site, m.meter): m.interval_s for m in rs.meters}
    ivf = pd.DataFrame([(k[0], k[1], float(v)) for k, v in iv.items()], columns=["site", "meter", "iv"])
    cov = gi.merge(ivf, on=["site", "meter"], how="left")
    cov = cov.assign(h=cov["n"] * cov["iv"].fillna(0.0) / 3600.0)
    cov = cov.groupby([*keys, "meter"])["h"].sum().groupby(level=[0, 1]).max().rename("covered")
    if len(cov):
        daily = daily.merge(cov.reset_index(), on=keys, how="left")
        daily["hours"] = np.where(daily["covered"].notna(), np.minimum(daily["hours"], daily["covered"].fillna(0.0)), daily["hours"])
        daily = daily.drop(columns="covered")

    # balance
    daily["electricity_consumed_kwh"] = (
        daily["grid_import_kwh"] + daily["pv_generated_kwh"] + daily["chp_generated_kwh"] - daily["grid_export_kwh"]
    ).clip(lower=0.0)
    daily["pv_consumed_kwh"] = (daily["pv_generated_kwh"] - daily["pv_exported_kwh"]).clip(lower=0.0)
    daily["battery_losses_kwh"] = daily["battery_charge_kwh"] - daily["battery_discharge_kwh"]

    # per (site, year) factors
    year = daily["date"].dt.year.to_numpy()
    site_arr = daily["site"].to_numpy()
    cols = {c: np.zeros(len(daily)) for c in (
        "k_el", "k_steam", "k_gas", "k_diesel", "k_gasoline", "e_gas", "e_diesel", "e_gasoline", "e_heat",
        "g_avg", "g_res", "p_steam", "p_gas", "p_diesel", "p_gasoline", "p_export")}
    for (s, y), idx in pd.DataFrame({"s": site_arr, "y": year}).groupby(["s", "y"]).indices.items():
        fs, si = fsets[s], sites[s]
        vals = {
            "k_el": used.scalar(fs, "electricity_kgce_per_kwh"),
            "k_steam": used.scalar(fs, "steam_kgce_per_gj"),
            "k_gas": used.scalar(fs, "natural_gas_kgce_per_m3"),
            "k_diesel": used.scalar(fs, "diesel_kgce_per_kg"),
            "k_gasoline": used.scalar(fs, "gasoline_kgce_per_kg"),
            "e_gas": used.scalar(fs, "natural_gas_kgco2_per_m3"),
            "e_diesel": used.scalar(fs, "diesel_kgco2_per_kg"),
            "e_gasoline": used.scalar(fs, "gasoline_kgco2_per_kg"),
            "e_heat": used.scalar(fs, "heat_kgco2_per_gj"),
            "p_steam": used.scalar(fs, "steam_per_gj"),
            "p_gas": used.scalar(fs, "natural_gas_per_m3"),
            "p_diesel": used.scalar(fs, "diesel_per_kg"),
            "p_gasoline": used.scalar(fs, "gasoline_per_kg"),
        }
        avg = used.grid(fs, "average", si, int(y))
        if avg is None:
            raise AccountingError(
                f"site {s}: no grid-average factor for region {si.grid_region!r} or country {si.country!r} "
                f"in factor set {fs.name!r}; add one to the set or override 'grid:average:{si.grid_region}:{y}'"
            )
        res = used.grid(fs, "residual", si, int(y))
        vals["g_avg"] = avg
        vals["g_res"] = avg if res is None else res
        tariff = si.attrs.get("tariff") or {}
        vals["p_export"] = float(tariff.get("export_price", 0.0) or 0.0)
        for k, v in vals.items():
            cols[k][idx] = v

    d = daily
    d["electricity_tce"] = d["grid_import_kwh"] * cols["k_el"] / 1000.0
    d["steam_tce"] = d["steam_gj"] * cols["k_steam"] / 1000.0
    d["natural_gas_tce"] = d["natural_gas_m3"] * cols["k_gas"] / 1000.0
    d["diesel_tce"] = d["diesel_kg"] * cols["k_diesel"] / 1000.0
    d["gasoline_tce"] = d["gasoline_kg"] * cols["k_gasoline"] / 1000.0
    d["pv_consumed_tce_equiv"] = d["pv_consumed_kwh"] * cols["k_el"] / 1000.0
    d["k_el"] = cols["k_el"]
    d["scope1_natural_gas_kg"] = d["natural_gas_m3"] * cols["e_gas"]
    d["scope1_diesel_kg"] = d["diesel_kg"] * cols["e_diesel"]
    d["scope1_gasoline_kg"] = d["gasoline_kg"] * cols["e_gasoline"]
    d["scope2_electricity_location_kg"] = d["grid_import_kwh"] * cols["g_avg"]
    d["residual_weighted_kg"] = d["grid_import_kwh"] * cols["g_res"]
    d["scope2_heat_kg"] = d["steam_gj"] * cols["e_heat"]
    d["steam_cost"] = d["steam_gj"] * cols["p_steam"]
    d["natural_gas_cost"] = d["natural_gas_m3"] * cols["p_gas"]
    d["fuel_cost"] = d["diesel_kg"] * cols["p_diesel"] + d["gasoline_kg"] * cols["p_gasoline"]
    d["export_revenue"] = d["grid_export_kwh"] * cols["p_export"]

    # energy charges by tariff period
    ptab = pd.DataFrame(
        [(s.site, p, float(v)) for s in rs.sites for p, v in ((s.attrs.get("tariff") or {}).get("prices") or {}).items()],
        columns=["site", "period", "price"],
    )
    gi = gi.merge(ptab, on=["site", "period"], how="left")
    gi = gi.assign(cost=gi["price"].fillna(0.0).to_numpy() * gi["value"].to_numpy())
    d = d.merge(gi.groupby(keys)["cost"].sum().rename("energy_cost").reset_index(), on=keys, how="left")
    per = gi[gi["period"] != ""].groupby([*keys, "period"])["value"].sum().unstack("period", fill_value=0.0)
    per.columns = [f"import_{c}_kwh" for c in per.columns]
    d = d.merge(per.reset_index(), on=keys, how="left") if len(per.columns) else d
    d = d.fillna({c: 0.0 for c in d.columns if c.startswith("import_") or c == "energy_cost"})
    # demand charge on the monthly peak, spread over the month's days in the data
    dc = np.array([float((sites[s].attrs.get("tariff") or {}).get("demand_charge_per_kw_month", 0.0) or 0.0) for s in d["site"]])
    month = d["date"].dt.to_period("M")
    mpeak = d.groupby([d["site"], month])["peak_import_kw"].transform("max")
    mdays = d.groupby([d["site"], month])["date"].transform("count")
    d["demand_charge"] = mpeak * dc / mdays

    # events: refrigerant, process, certificate purchases
    ev = rs.events
    evd = _event_days(ev, sites) if len(ev) else np.empty(0, dtype="datetime64[ns]")
    evf = pd.DataFrame({"site": ev["site"].to_numpy(), "date": evd, "kind": ev["kind"].to_numpy(),
                        "subject": ev["subject"].to_numpy(), "value": ev["value"].to_numpy(dtype=float)})
    ref = evf[evf["kind"] == "refrigerant_topup"].copy()
    if len(ref):
        ref["gwp"] = [used.gwp(fsets[s], g) for s, g in zip(ref["site"], ref["subject"], strict=True)]
        ref["co2"] = ref["value"] * ref["gwp"]
    ev_sums = {
        "refrigerant_kg": ref.groupby(keys)["value"].sum() if len(ref) else None,
        "scope1_refrigerant_kg": ref.groupby(keys)["co2"].sum() if len(ref) else None,
        "scope1_process_kg": evf[evf["kind"] == "process_emission"].groupby(keys)["value"].sum(),
    }
    certs = certificate_table(ev, sites, fsets)
    if len(certs):
        cprice = np.array([used.scalar(fsets[s], "certificate_per_mwh") for s in certs["site"]])
        cc = pd.DataFrame({"site": certs["site"], "date": evd[(ev["kind"] == "certificate").to_numpy()],
                           "c": certs["mwh"].to_numpy() * cprice})
        ev_sums["certificate_cost"] = cc.groupby(keys)["c"].sum()
    for name, ser in ev_sums.items():
        if ser is not None and len(ser):
            d = d.merge(ser.rename(name).reset_index(), on=keys, how="left")
        if name not in d:
            d[name] = 0.0
        d[name] = d[name].fillna(0.0)
    for c in ("certificate_cost",):
        if c not in d:
            d[c] = 0.0

    # renewable instruments, allocated to days pro rata to consumption
    contracts = contract_table(ev, sites)
    base = d[["site", "date", "electricity_consumed_kwh"]]
    dual = set()
    for s in rs.sites:
        dual |= set(fsets[s.site].dual_control_sources)
    kinds = {"hydro": "contract_hydro_kwh", "green_power": "contract_green_power_kwh"}
    con = contracts.assign(
        target=contracts["kind"].map(kinds).fillna("contract_other_kwh"),
        dual=contracts["kind"].isin(dual),
        cert=False,
    )
    cer = certs.assign(
        target=np.where(certs["valid"].astype(bool), "certificates_valid_kwh", "certificates_invalid_kwh"),
        dual=certs["scheme"].isin(dual) & certs["valid"].astype(bool),
        cert=True,
    )
    cols_i = ["site", "mwh", "period_start", "period_end", "target", "dual", "cert"]
    alloc, unallocated = allocate(pd.concat([con[cols_i], cer[cols_i]], ignore_index=True), base, "target")
    for col in (*_INSTRUMENTS, "dual_control_cert_kwh", "dual_control_contract_kwh"):
        d[col] = 0.0
    if len(alloc):
        piv = alloc.groupby([*keys, "target"])["kwh"].sum().unstack("target", fill_value=0.0)
        piv = piv[[c for c in piv.columns if c in _INSTRUMENTS]]
        dual_c = alloc[alloc["dual"] & alloc["cert"]].groupby(keys)["kwh"].sum().rename("dual_control_cert_kwh")
        dual_k = alloc[alloc["dual"] & ~alloc["cert"]].groupby(keys)["kwh"].sum().rename("dual_control_contract_kwh")
        d = d.drop(columns=[*piv.columns, "dual_control_cert_kwh", "dual_control_contract_kwh"])
        d = d.merge(piv.reset_index(), on=keys, how="left")
        d = d.merge(dual_c.reset_index(), on=keys, how="left").merge(dual_k.reset_index(), on=keys, how="left")
        for c in (*_INSTRUMENTS, "dual_control_cert_kwh", "dual_control_contract_kwh"):
            d[c] = d[c].fillna(0.0) if c in d else 0.0
    # hierarchy
    hier = pd.DataFrame([(s.site, s.company, s.park, s.group) for s in rs.sites], columns=["site", "company", "park", "group"])
    d = d.merge(hier, on="site", how="left")
    cap: dict[str, float] = {}
    for m in rs.meters:
        if m.kind == "battery":
            cap[m.site] = cap.get(m.site, 0.0) + float(m.attrs.get("energy_kwh", 0.0) or 0.0)
    d["battery_capacity_kwh"] = [cap.get(s, 0.0) for s in d["site"]]
    return d, certs, contracts, unallocated


def _labels(dates: pd.Series, period: str | tuple[Any, Any]) -> pd.Series:
    if period == "day":
        return dates.dt.strftime("%Y-%m-%d")
    if period == "month":
        return dates.dt.strftime("%Y-%m")
    if period == "year":
        return dates.dt.strftime("%Y")
    if isinstance(period, tuple) and len(period) == 2:
        return pd.Series(f"{period[0]}..{period[1]}", index=dates.index)
    raise AccountingError(f"period: expected 'day', 'month', 'year' or (start, end) local dates; found {period!r}")


def _prev_label(label: pd.Series, period: str | tuple[Any, Any]) -> pd.Series:
    if period in ("day", "month", "year"):
        y = label.str.slice(0, 4).astype(int) - 1
        return y.astype(str).str.zfill(4) + label.str.slice(4)
    return pd.Series("", index=label.index)


def _div(a: pd.Series, b: pd.Series) -> pd.Series:
    an, bn = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    out = np.full(len(an), np.nan)
    np.divide(an, bn, out=out, where=bn != 0)
    return pd.Series(out, index=a.index)


def rollup(daily: pd.DataFrame, by: str = "site", period: str | tuple[Any, Any] = "month") -> pd.DataFrame:
    """Roll the per-day frame up to a grouping and period and compute every KPI.

    Parameters
    ----------
    daily : DataFrame
        From :func:`daily_frame`.
    by : str
        ``site``, ``company``, ``park`` or ``group``.
    period : str or (date, date)
        ``day``, ``month``, ``year`` (local calendar) or an inclusive range of local dates.

    Returns
    -------
    DataFrame
        One row per (``by`` value, ``period``); see ``docs/kpis.md``.
    """
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    d = daily
    if isinstance(period, tuple):
        lo, hi = (np.datetime64(pd.Timestamp(x).date(), "ns") for x in period)
        d = d[(d["date"] >= lo) & (d["date"] <= hi)]
    d = d.assign(period=_labels(d["date"], period))
    add = [c for c in (*FLOWS, *_ADDITIVE_EXTRA) if c in d] + [c for c in d if c.startswith("import_") and c.endswith("_kwh")]
    add = list(dict.fromkeys(add))
    g = d.groupby(["site", "period"], sort=True)
    sp = g[add].sum()
    sp["peak_import_kw"] = g["peak_import_kw"].max()
    sp = sp.join(g[["company", "park", "group", "battery_capacity_kwh"]].first())
    # residual factor weighted by import
    sp["residual_factor"] = _div(sp["residual_weighted_kg"], sp["grid_import_kwh"])
    # renewable claims per site and period: PV consumed, then contracts, then certificates
    cons = sp["electricity_consumed_kwh"]
    pv_c = np.minimum(sp["pv_consumed_kwh"], cons)
    contracts = sp["contract_hydro_kwh"] + sp["contract_green_power_kwh"]
    room = (cons - pv_c).clip(lower=0)
    contracts_counted = np.minimum(contracts, room)
    room2 = (room - contracts_counted).clip(lower=0)
    certs_counted = np.minimum(sp["certificates_valid_kwh"], room2)
    sp["contracts_counted_kwh"] = contracts_counted
    sp["certificates_counted_kwh"] = certs_counted
    sp["contracts_beyond_consumption_kwh"] = contracts - contracts_counted
    sp["certificates_beyond_consumption_kwh"] = sp["certificates_valid_kwh"] - certs_counted
    sp["green_kwh"] = pv_c + contracts_counted + certs_counted
    covered = np.minimum(contracts_counted + certs_counted, sp["grid_import_kwh"])
    sp["market_covered_kwh"] = covered
    sp["scope2_electricity_market_kg"] = (sp["grid_import_kwh"] - covered) * sp["residual_factor"].fillna(0.0)
    # dual control: renewable electricity excluded from the total, certificates as the basis
    dual = (certs_counted * _div(sp["dual_control_cert_kwh"], sp["certificates_valid_kwh"]).fillna(0.0)
            + contracts_counted * _div(sp["dual_control_contract_kwh"], contracts).fillna(0.0))
    sp["re_excluded_kwh"] = np.minimum(dual, sp["grid_import_kwh"])
    sp["re_excluded_tce"] = _div(sp["electricity_tce"], sp["grid_import_kwh"]).fillna(0.0) * sp["re_excluded_kwh"]
    sp = sp.reset_index()

    if by == "site":
        out = sp.rename(columns={"site": "key"})
        hours = out["hours"]
    else:
        add2 = [c for c in sp.columns if c not in ("site", "period", "company", "park", "group", "residual_factor", "hours")]
        gg = sp.groupby([by, "period"], sort=True)
        out = gg[add2].sum()
        out["hours"] = gg["hours"].max()
        out["sites"] = gg["site"].nunique()
        out = out.reset_index().rename(columns={by: "key"})
        hours = out["hours"]
    o = out
    o.insert(0, "by", by)
    # energy
    o["direct_tce"] = o["natural_gas_tce"] + o["diesel_tce"] + o["gasoline_tce"]
    o["indirect_tce"] = o["electricity_tce"] + o["steam_tce"]
    o["total_tce"] = o["direct_tce"] + o["indirect_tce"]
    o["total_excl_re_tce"] = o["total_tce"] - o["re_excluded_tce"]
    # emissions [t]
    o["scope1_t"] = (o["scope1_natural_gas_kg"] + o["scope1_diesel_kg"] + o["scope1_gasoline_kg"]
                     + o["scope1_refrigerant_kg"] + o["scope1_process_kg"]) / 1000.0
    o["scope2_location_t"] = (o["scope2_electricity_location_kg"] + o["scope2_heat_kg"]) / 1000.0
    o["scope2_market_t"] = (o["scope2_electricity_market_kg"] + o["scope2_heat_kg"]) / 1000.0
    o["scope12_location_t"] = o["scope1_t"] + o["scope2_location_t"]
    o["scope12_market_t"] = o["scope1_t"] + o["scope2_market_t"]
    # shares and ratios
    o["green_share"] = _div(o["green_kwh"], o["electricity_consumed_kwh"])
    o["self_consumption"] = _div(o["pv_consumed_kwh"], o["pv_generated_kwh"])
    o["self_sufficiency"] = 1.0 - _div(o["grid_import_kwh"], o["electricity_consumed_kwh"])
    o["load_factor"] = _div(o["grid_import_kwh"], o["peak_import_kw"] * hours)
    o["battery_efc"] = _div(o["battery_discharge_kwh"], o["battery_capacity_kwh"])
    o["total_cost"] = (o["energy_cost"] + o["demand_charge"] - o["export_revenue"] + o["steam_cost"]
                       + o["natural_gas_cost"] + o["fuel_cost"] + o["certificate_cost"])
    # intensities per RMB 10k of output value
    out10k = o["output_rmb"] / 1e4
    for num, name in (
        ("total_tce", "tce_per_10k_rmb"),
        ("total_excl_re_tce", "tce_excl_re_per_10k_rmb"),
        ("grid_import_kwh", "grid_import_kwh_per_10k_rmb"),
        ("electricity_consumed_kwh", "electricity_kwh_per_10k_rmb"),
        ("steam_gj", "steam_gj_per_10k_rmb"),
        ("natural_gas_m3", "natural_gas_m3_per_10k_rmb"),
        ("diesel_kg", "diesel_kg_per_10k_rmb"),
        ("gasoline_kg", "gasoline_kg_per_10k_rmb"),
        ("scope12_location_t", "scope12_location_intensity_t_per_10k_rmb"),
        ("scope12_market_t", "scope12_market_intensity_t_per_10k_rmb"),
    ):
        o[name] = _div(o[num], out10k)
    o["intensity_note"] = np.where(o["output_rmb"] > 0, "", "output value is zero or not metered: intensities are NaN")
    o["green_share_note"] = np.where(o["electricity_consumed_kwh"] > 0, "", "no electricity consumed: share is NaN")
    o["self_consumption_note"] = np.where(o["pv_generated_kwh"] > 0, "", "no PV generation")
    # energy-saving rate vs the same period a year before
    prev = _prev_label(o["period"], period)
    look = o.set_index(["key", "period"])["tce_per_10k_rmb"]
    mi = pd.MultiIndex.from_arrays([o["key"], prev])
    last = look.reindex(mi).to_numpy()
    o["tce_per_10k_rmb_last_year"] = last
    o["energy_saving_rate"] = 1.0 - _div(o["tce_per_10k_rmb"], pd.Series(last, index=o.index))
    return o.drop(columns=[c for c in ("residual_weighted_kg",) if c in o])


def kpis(
    readingset: ReadingSet,
    by: str = "site",
    period: str | tuple[Any, Any] = "month",
    factors: FactorSet | Mapping[str, Any] | None = None,
) -> KpiResult:
    """Compute the energy and carbon KPIs of a ReadingSet.

    Parameters
    ----------
    readingset : ReadingSet
        Readings, events, meters and sites (simulated or real).
    by : str
        ``site``, ``company``, ``park`` or ``group``.
    period : str or (date, date)
        ``day``, ``month``, ``year`` or an inclusive range of local dates.
    factors : FactorSet or dict, optional
        A factor set for every site, or overrides applied to each site's own set
        (``SiteInfo.factor_set``); see :mod:`ems.accounting.factors`.

    Returns
    -------
    KpiResult
    """
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    fsets = _factor_sets(readingset, factors)
    s1 = stage1(readingset)
    used = _Used()
    daily, certs, contracts, unalloc = daily_frame(s1.energy, readingset, fsets, used)
    table = rollup(daily, by=by, period=period)
    notes = [
        "energy from differences of cumulative registers; interval energy attributed to the local day of the interval start",
        "PV exported = min(grid export, PV generation) per interval; PV consumed = generated - exported",
        "electricity consumed = grid import + PV + CHP generation - grid export (battery losses included)",
        "tce: electricity at equivalent value, GB/T 2589-2020; PV consumed reported separately, not in the total",
        "renewable claims capped per site and period: PV consumed, then contracts, then valid certificates",
        "peak demand above site level = sum of site peaks (non-coincident)",
        "tariff periods and demand charge from SiteInfo.attrs['tariff']; prices from the factor set are assumptions",
    ]
    if len(s1.anomalies):
        notes.append(f"{len(s1.anomalies)} register anomalies (resets, rollovers, gaps): see anomalies")
    return KpiResult(
        kpis=table, daily=daily, stage1=s1.energy, anomalies=s1.anomalies, certificates=certs,
        contracts=contracts, unallocated=unalloc, factors_used=used.frame(), notes=notes,
        by=by, period=period if isinstance(period, str) else f"{period[0]}..{period[1]}",
    )
