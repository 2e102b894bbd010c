"""Stage 2 of the rollup: KPIs for any grouping and period from the stage-1 sums.

Pipeline
--------
1. :func:`ems.accounting.energy.stage1` (readings -> per site, meter, quantity,
   local day and tariff period sums).
2. :func:`daily_frame`: per (site, local day) flows by carrier, tce by both GB/T 2589
   methods, Scope 1 by gas, Scope 2 with the grid factor chosen per site (most local
   place, then nearest year), renewable instruments from the registry capped at the
   day's grid import, and costs in the site's currency and in the reporting currency.
3. :func:`rollup`: sums of the days for any grouping (site, company, park, group:
   sites inside the reporting boundary) and period, and the ratios recomputed from
   the sums. Every additive KPI is a sum of days, so months add up to the year.

Formulas, units and sources are in ``docs/kpis.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ems.accounting import scope1
from ems.accounting.certificates import cover, instrument_table, load_framework
from ems.accounting.energy import Stage1, stage1
from ems.accounting.factors import FactorSet, FactorsUsed, builtin_sets_with, load_factor_set
from ems.accounting.money import convert, load_fx, site_currency, sum_money
from ems.errors import AccountingError
from ems.gases import load_gases
from ems.readings import ReadingSet, SiteInfo

__all__ = ["BY", "TCE_METHODS", "KpiResult", "daily_frame", "kpis", "rollup"]

log = logging.getLogger(__name__)

BY = ("site", "company", "park", "group")
TCE_METHODS = {
    "calorific": "calorific value (当量值), GB/T 2589-2020: electricity 0.1229 kgce/kWh",
    "coal_equivalent": "coal equivalent (等价值), GB/T 2589-2020: electricity at the year's power-supply coal rate",
}
ONSITE_RE = ("excluded", "included")
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
    ("line", "output_units"): "output_units",
    ("_site", "pv_exported_kwh"): "pv_exported_kwh",
}
FLOWS = (*dict.fromkeys(_FLOW.values()), "diesel_kg", "gasoline_kg")
MONEY = ("energy_cost", "demand_charge", "export_revenue", "steam_cost", "natural_gas_cost", "fuel_cost", "certificate_cost")
"""Cost columns [currency of the row]; the daily frame also holds each one converted (``<name>_rep``)."""
_ADDITIVE_EXTRA = (
    "electricity_consumed_kwh", "pv_consumed_kwh", "battery_losses_kwh",
    "electricity_tce_calorific", "electricity_tce_coal_equivalent", "pv_consumed_tce_calorific",
    "pv_consumed_tce_coal_equivalent", "steam_tce", "natural_gas_tce", "diesel_tce", "gasoline_tce",
    "scope1_natural_gas_kg", "scope1_diesel_kg", "scope1_gasoline_kg", "scope1_refrigerant_kg", "scope1_fugitive_kg",
    "scope1_process_kg", "memo_non_kyoto_kgco2e", "memo_non_kyoto_gas_kg", "refrigerant_kg", "unknown_gas_kg",
    "scope2_electricity_location_kg", "scope2_electricity_market_kg", "scope2_heat_kg", "hours",
    "contracts_kwh", "certificates_kwh", "contracts_counted_kwh", "certificates_counted_kwh", "pv_sold_kwh",
    "pv_sold_counted_kwh", "certificates_bought_mwh", "contract_hydro_kwh", "contract_green_power_kwh",
    "certificates_valid_kwh", "certificates_invalid_kwh", "green_kwh", "market_covered_kwh", "re_excluded_kwh", "re_excluded_tce_calorific",
    "re_excluded_tce_coal_equivalent",
)


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
    instruments : DataFrame
        Every certificate and contract delivery: registry and eligibility status, reason,
        and the MWh counted (:mod:`ems.accounting.certificates`).
    unallocated : DataFrame
        Counted instruments whose period has no grid import in the readings.
    factors_used : DataFrame
        Every factor value used: name, site, level, place, year, value, unit, source, set, version.
    gases : DataFrame
        Per (site, local day, gas, activity) kg and CO2e (:mod:`ems.accounting.scope1`).
    fx_used : DataFrame
        Exchange rates applied to reach the reporting currency.
    notes : list of str
        Conventions applied, to print with any report.
    by, period : str
        Grouping and period of ``kpis``.
    options : dict
        ``tce_method``, ``onsite_renewables``, ``framework``, ``currency``, ``boundary``.
    factor_sets : dict
        The FactorSet each site was accounted with (hourly matching reads the same factors).
    energy : Stage1, optional
        The stage-1 result, whose hourly rows hourly matching reads (:mod:`ems.accounting.hourly`).
    """

    kpis: pd.DataFrame
    daily: pd.DataFrame
    stage1: pd.DataFrame
    anomalies: pd.DataFrame
    instruments: pd.DataFrame
    unallocated: pd.DataFrame
    factors_used: pd.DataFrame
    gases: pd.DataFrame
    fx_used: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    by: str = "site"
    period: str = "month"
    options: dict[str, Any] = field(default_factory=dict)
    factor_sets: dict[str, FactorSet] = field(default_factory=dict, repr=False)
    energy: Stage1 | None = field(default=None, repr=False)

    @property
    def certificates(self) -> pd.DataFrame:
        """The instrument table (alias kept for callers of the first release)."""
        return self.instruments

    def rollup(self, by: str = "site", period: str | tuple[Any, Any] = "month") -> pd.DataFrame:
        """Return the KPI frame for another grouping or period (stage 1 is not recomputed)."""
        return rollup(self.daily, by=by, period=period, tce_method=self.options.get("tce_method", "calorific"),
                      onsite_renewables=self.options.get("onsite_renewables", "excluded"))

    def gas_rollup(self, by: str = "site", period: str | tuple[Any, Any] = "year") -> pd.DataFrame:
        """Per-gas kg and tCO2e for a grouping and period (see :func:`gas_rollup`)."""
        return gas_rollup(self.gases, self.daily, by=by, period=period)


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


_Used = FactorsUsed  # the name bench/ and older callers import


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


def _day_keys(s1: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Row of each stage-1 line in the daily frame, and the daily frame's ``site, date`` (sorted)."""
    sc, su = pd.factorize(s1["site"], sort=True)
    days = (s1["date"].to_numpy("datetime64[ns]") - np.datetime64(0, "ns")) // np.timedelta64(1, "D")
    key = sc.astype(np.int64) * 1_000_000 + days.astype(np.int64)
    uk, row = np.unique(key, return_inverse=True)
    base = pd.DataFrame({"site": np.asarray(su, dtype=object)[uk // 1_000_000],
                         "date": ((uk % 1_000_000) * np.timedelta64(1, "D") + np.datetime64(0, "D")).astype("datetime64[ns]")})
    return row, base


def _intervals(gi: pd.DataFrame, rs: ReadingSet) -> np.ndarray:
    """Reading interval [s] of each row's meter (0 for a meter the set does not describe)."""
    ivs = {(m.site, m.meter): float(m.interval_s) for m in rs.meters}
    codes, pairs = pd.factorize(pd.MultiIndex.from_arrays([gi["site"], gi["meter"]]))
    per_pair = np.asarray([ivs.get(p, 0.0) for p in pairs], dtype=float)
    return per_pair[codes] if len(gi) else np.zeros(0)


def _wide(s1: pd.DataFrame, rs: ReadingSet, sites: Mapping[str, SiteInfo]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (site, day) flows, peak import, hours and the electricity balance; and the grid-import rows (with ``row``)."""
    flow = _flows(s1, rs)
    keep = np.fromiter((f is not None for f in flow), dtype=bool, count=len(flow))
    s1, flow = s1[keep], flow[keep]
    if not len(s1):
        raise AccountingError("no register readings to account: expected import_kwh, energy_kwh, heat_gj, volume_m3, ... registers")
    row, daily = _day_keys(s1)
    n = len(daily)
    col = {f: i for i, f in enumerate(FLOWS)}
    fcode = np.asarray([col[f] for f in flow], dtype=np.int64)
    table = np.bincount(row * len(FLOWS) + fcode, s1["value"].to_numpy(float), minlength=n * len(FLOWS)).reshape(n, len(FLOWS))
    daily = pd.concat([daily, pd.DataFrame(table, columns=list(FLOWS))], axis=1)
    is_gi = fcode == col["grid_import_kwh"]
    gi = s1[is_gi].assign(row=row[is_gi])
    mc, mu = pd.factorize(gi["meter"])
    iv = _intervals(gi, rs)
    slot = gi["row"].to_numpy(np.int64) * max(len(mu), 1) + mc
    # peak: per grid meter the max interval rate of the day, summed over grid meters
    peak = np.zeros(n * max(len(mu), 1))
    np.maximum.at(peak, slot, gi["max_rate"].to_numpy(float))
    daily["peak_import_kw"] = peak.reshape(n, -1).sum(axis=1)
    # hours of each local day (23 h / 25 h on DST days), limited to the hours the grid
    # meter covered (n intervals x interval) so a partial day has a fair load factor
    hours = _site_day_hours(daily["site"], daily["date"], sites)
    cov = np.bincount(slot, gi["n"].to_numpy(float) * iv / 3600.0, minlength=n * max(len(mu), 1)).reshape(n, -1).max(axis=1)
    has = np.bincount(gi["row"].to_numpy(np.int64), minlength=n) > 0
    daily["hours"] = np.where(has, np.minimum(hours, cov), hours)
    daily["electricity_consumed_kwh"] = (
        daily["grid_import_kwh"] + daily["pv_generated_kwh"] + daily["chp_generated_kwh"] - daily["grid_export_kwh"]
    ).clip(lower=0.0)
    daily["pv_consumed_kwh"] = np.minimum((daily["pv_generated_kwh"] - daily["pv_exported_kwh"]).clip(lower=0.0),
                                          daily["electricity_consumed_kwh"])
    daily["battery_losses_kwh"] = daily["battery_charge_kwh"] - daily["battery_discharge_kwh"]
    return daily, gi


_SCALARS = {"k_el": "electricity_kgce_per_kwh", "k_steam": "steam_kgce_per_gj", "k_gas": "natural_gas_kgce_per_m3",
            "k_diesel": "diesel_kgce_per_kg", "k_gasoline": "gasoline_kgce_per_kg", "e_gas": "natural_gas_kgco2_per_m3",
            "e_diesel": "diesel_kgco2_per_kg", "e_gasoline": "gasoline_kgco2_per_kg", "e_heat": "heat_kgco2_per_gj"}
_PRICES = {"p_steam": "steam_per_gj", "p_gas": "natural_gas_per_m3", "p_diesel": "diesel_per_kg",
           "p_gasoline": "gasoline_per_kg", "p_cert": "certificate_per_mwh"}


def _site_year_factors(daily: pd.DataFrame, sites: Mapping[str, SiteInfo], fsets: Mapping[str, FactorSet],
                       used: _Used, fx: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every factor and price of each daily row, chosen once per (site, year)."""
    names = [*_SCALARS, *_PRICES, "k_el_ce", "g_avg", "g_res", "p_export"]
    cols = {c: np.zeros(len(daily)) for c in names}
    year = daily["date"].dt.year.to_numpy()
    for (s, y), idx in pd.DataFrame({"s": daily["site"].to_numpy(), "y": year}).groupby(["s", "y"]).indices.items():
        fs, si, y = fsets[s], sites[s], int(y)
        cur = site_currency(si, fx)
        avg = used.grid(fs, "average", si, y)
        if avg["value"] is None:
            raise AccountingError(_no_grid_average(s, si, fs, avg["note"], y))
        vals = {c: used.scalar(fs, k) for c, k in _SCALARS.items()}
        vals |= {c: used.price(fs, k, cur) for c, k in _PRICES.items()}
        vals["k_el_ce"] = used.coal_equivalent(fs, y)
        vals["g_avg"] = float(avg["value"])
        vals["g_res"] = float(used.grid(fs, "residual", si, y, fallback=avg)["value"])
        vals["p_export"] = float((si.attrs.get("tariff") or {}).get("export_price", 0.0) or 0.0)
        for k, v in vals.items():
            cols[k][idx] = v
    return cols


def _no_grid_average(s: str, si: SiteInfo, fs: FactorSet, note: str, year: int) -> str:
    """The error for a site whose places have no grid-average factor in its set, naming the sets that do."""
    others = [n for n in builtin_sets_with([p for _, p in si.places() if p]) if n != fs.name]
    hint = f"name the built-in set {' or '.join(map(repr, others))} in the site's factor_set, " if others else ""
    return f"site {s}: {note}; {hint}add a factor to the set or override 'grid:average:{si.country}:{year}'"


def _energy(d: pd.DataFrame, f: Mapping[str, np.ndarray]) -> None:
    """tce by both GB/T 2589 methods, Scope 1 combustion, Scope 2 location-based (in place)."""
    d["electricity_tce_calorific"] = d["grid_import_kwh"] * f["k_el"] / 1000.0
    d["electricity_tce_coal_equivalent"] = d["grid_import_kwh"] * f["k_el_ce"] / 1000.0
    d["pv_consumed_tce_calorific"] = d["pv_consumed_kwh"] * f["k_el"] / 1000.0
    d["pv_consumed_tce_coal_equivalent"] = d["pv_consumed_kwh"] * f["k_el_ce"] / 1000.0
    d["steam_tce"] = d["steam_gj"] * f["k_steam"] / 1000.0
    d["natural_gas_tce"] = d["natural_gas_m3"] * f["k_gas"] / 1000.0
    d["diesel_tce"] = d["diesel_kg"] * f["k_diesel"] / 1000.0
    d["gasoline_tce"] = d["gasoline_kg"] * f["k_gasoline"] / 1000.0
    d["scope1_natural_gas_kg"] = d["natural_gas_m3"] * f["e_gas"]
    d["scope1_diesel_kg"] = d["diesel_kg"] * f["e_diesel"]
    d["scope1_gasoline_kg"] = d["gasoline_kg"] * f["e_gasoline"]
    d["scope2_electricity_location_kg"] = d["grid_import_kwh"] * f["g_avg"]
    d["scope2_heat_kg"] = d["steam_gj"] * f["e_heat"]
    d["grid_factor_location"] = f["g_avg"]
    d["grid_factor_residual"] = f["g_res"]


def _tariff_costs(d: pd.DataFrame, gi: pd.DataFrame, sites: Mapping[str, SiteInfo]) -> pd.DataFrame:
    """Energy charges by tariff period and the monthly demand charge spread over the month's days."""
    n = len(d)
    rows = gi["row"].to_numpy(np.int64)
    prices = {(s.site, p): float(v) for s in sites.values() for p, v in ((s.attrs.get("tariff") or {}).get("prices") or {}).items()}
    pc, pu = pd.factorize(gi["period"])
    sc, su = pd.factorize(gi["site"])
    grid = np.asarray([[prices.get((str(s), str(p)), 0.0) for p in pu] for s in su]).reshape(len(su), len(pu))
    value = gi["value"].to_numpy(float)
    new = {"energy_cost": np.bincount(rows, grid[sc, pc] * value if len(gi) else value, minlength=n)}
    for i, p in sorted(enumerate(pu), key=lambda x: str(x[1])):
        if p != "":
            m = pc == i
            new[f"import_{p}_kwh"] = np.bincount(rows[m], value[m], minlength=n)
    rate = {s: float((si.attrs.get("tariff") or {}).get("demand_charge_per_kw_month", 0.0) or 0.0) for s, si in sites.items()}
    dc = d["site"].map(rate).to_numpy(float)
    month = d["date"].to_numpy("datetime64[M]").astype(np.int64)
    g = pd.DataFrame({"s": pd.factorize(d["site"])[0], "m": month, "p": d["peak_import_kw"].to_numpy()}).groupby(["s", "m"])["p"]
    new["demand_charge"] = g.transform("max").to_numpy() * dc / g.transform("count").to_numpy()
    return d.assign(**new)


def _costs(d: pd.DataFrame, f: Mapping[str, np.ndarray], sites: Mapping[str, SiteInfo], fx: Mapping[str, Any],
           currency: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Costs in each site's currency, and converted to the reporting currency (``<name>_rep``)."""
    d["steam_cost"] = d["steam_gj"] * f["p_steam"]
    d["natural_gas_cost"] = d["natural_gas_m3"] * f["p_gas"]
    d["fuel_cost"] = d["diesel_kg"] * f["p_diesel"] + d["gasoline_kg"] * f["p_gasoline"]
    d["export_revenue"] = d["grid_export_kwh"] * f["p_export"]
    d["certificate_cost"] = d["certificates_bought_mwh"] * f["p_cert"]
    d["currency"] = d["site"].map({s: site_currency(si, fx) for s, si in sites.items()}).astype(object)
    rate = np.ones(len(d))
    used: list[dict[str, Any]] = []
    for cur, idx in d.groupby("currency").indices.items():
        r, u = convert(d["date"].to_numpy()[idx], str(cur), currency, fx)
        rate[idx] = r
        used += u
    d["fx_rate"] = rate
    for c in MONEY:
        d[f"{c}_rep"] = d[c] * rate
    return d, used


def _gases(d: pd.DataFrame, s1: pd.DataFrame, rs: ReadingSet, evd: np.ndarray,
           fsets: Mapping[str, FactorSet], used: _Used) -> tuple[pd.DataFrame, pd.DataFrame]:
    editions = {s: fs.gwp_edition for s, fs in fsets.items()}
    g = scope1.gas_daily(s1, rs, evd, editions, load_gases())
    used.gwp(g, editions)
    sums = scope1.gas_sums(g)
    rows = _rows_of(d, sums["site"].to_numpy(), sums["date"].to_numpy())
    ok = rows >= 0
    new = {}
    for c in scope1.SUM_COLUMNS:
        col = np.zeros(len(d))
        np.add.at(col, rows[ok], sums[c].to_numpy(float)[ok])
        new[c] = col
    return d.assign(**new), g


def _instruments(d: pd.DataFrame, rs: ReadingSet, sites: Mapping[str, SiteInfo], fsets: Mapping[str, FactorSet],
                 framework: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Registry, eligibility, allocation and coverage of certificates and contracts, as day columns of ``d``."""
    own = {f"{m.site}/{m.meter}" for m in rs.meters if m.kind == "pv"}
    inst = instrument_table(rs.events, sites, framework, own).reset_index(drop=True)
    d = d.reset_index(drop=True)
    n = len(d)
    cols = dict.fromkeys(("contracts_kwh", "certificates_kwh", "pv_sold_kwh", "contracts_counted_kwh",
                          "certificates_counted_kwh", "pv_sold_counted_kwh", "re_excluded_kwh", "certificates_bought_mwh",
                          "contract_hydro_kwh", "contract_green_power_kwh", "certificates_invalid_kwh"), None)
    out: dict[str, Any] = {c: np.zeros(n) for c in cols}
    lost = pd.DataFrame(columns=["item", "site", "kwh", "reason"])
    if inst.empty:
        d = d.assign(**out, certificates_valid_kwh=np.zeros(n))
        return d, inst.assign(counted_mwh=np.zeros(0)), lost
    live = inst[inst["status"].isin(["counted", "sold"])]
    sold = (live["status"] == "sold").to_numpy()
    items = live.assign(
        item=live.index, cls=np.where(sold, "pv_sold", np.where(live["instrument"] == "PPA", "contract", "certificate")),
        start=np.where(sold, live["vintage_start"], live["period_start"]), end=np.where(sold, live["vintage_end"], live["period_end"]))
    days, offered, counted, lost = cover(items, d[["site", "date", "grid_import_kwh", "pv_consumed_kwh"]])
    for c in days.columns:
        out[c] = days[c].to_numpy()
    inst["counted_mwh"] = np.bincount(counted["item"].to_numpy(np.int64), counted["counted_kwh"].to_numpy(float),
                                      minlength=len(inst)) / 1000.0
    dual: set[str] = set()
    for fs in fsets.values():
        dual |= set(fs.dual_control_sources)
    is_dual = (inst["instrument"].isin(dual) | inst["contract"].isin(dual)).to_numpy()
    k = counted[is_dual[counted["item"].to_numpy(np.int64)] & (counted["cls"] != "pv_sold").to_numpy()]
    out["re_excluded_kwh"] = np.bincount(k["row"].to_numpy(np.int64), k["counted_kwh"].to_numpy(float), minlength=n)
    for kind, col in (("hydro", "contract_hydro_kwh"), ("green_power", "contract_green_power_kwh")):
        o = offered[(inst["contract"].to_numpy()[offered["item"].to_numpy(np.int64)] == kind)]
        out[col] = np.bincount(o["row"].to_numpy(np.int64), o["kwh"].to_numpy(float), minlength=n)
    _on_retirement_day(d, inst, out)
    lost["item"] = [inst.at[i, "id"] or inst.at[i, "instrument"] for i in lost["item"]] if len(lost) else lost["item"]
    return d.assign(**out, certificates_valid_kwh=out["certificates_kwh"]), inst, lost


def _rows_of(d: pd.DataFrame, site: Any, date: Any) -> np.ndarray:
    """Row positions in ``d`` of (site, local day) pairs; -1 where ``d`` has no such row."""
    codes = {s: i for i, s in enumerate(pd.unique(d["site"]))}
    day = np.timedelta64(1, "D")
    key = d["site"].map(codes).to_numpy(np.int64) * 1_000_000 + (d["date"].to_numpy("datetime64[ns]") - np.datetime64(0, "ns")) // day
    order = np.argsort(key, kind="stable")
    want = (pd.Series(site).map(codes).fillna(-1).to_numpy(np.int64) * 1_000_000
            + (pd.to_datetime(pd.Series(date)).to_numpy("datetime64[ns]") - np.datetime64(0, "ns")) // day)
    i = np.clip(np.searchsorted(key[order], want), 0, max(len(key) - 1, 0))
    found = len(key) > 0
    return np.where(found & (key[order][i] == want), order[i], -1) if found else np.full(len(want), -1)


def _on_retirement_day(d: pd.DataFrame, inst: pd.DataFrame, out: dict[str, np.ndarray]) -> None:
    """Certificates bought [MWh] and refused [kWh] on the local day of their retirement (in place)."""
    c = inst[inst["instrument"] != "PPA"]
    rows = _rows_of(d, c["site"].to_numpy(), c["retired_on"].to_numpy())
    ok = rows >= 0
    mwh = c["mwh"].to_numpy(float)
    bought = ok & (c["action"] == "retire").to_numpy()
    bad = ok & (c["status"] == "refused").to_numpy()
    np.add.at(out["certificates_bought_mwh"], rows[bought], mwh[bought])
    np.add.at(out["certificates_invalid_kwh"], rows[bad], mwh[bad] * 1000.0)


def _market(d: pd.DataFrame, f: Mapping[str, np.ndarray]) -> None:
    """Green kWh, market-based Scope 2 and the dual-control exclusion of each day (in place)."""
    covered = d["contracts_counted_kwh"] + d["certificates_counted_kwh"]
    d["market_covered_kwh"] = covered
    d["green_kwh"] = d["pv_consumed_kwh"] - d["pv_sold_counted_kwh"] + covered
    d["scope2_electricity_market_kg"] = (d["grid_import_kwh"] - covered + d["pv_sold_counted_kwh"]) * f["g_res"]
    d["re_excluded_tce_calorific"] = d["re_excluded_kwh"] * f["k_el"] / 1000.0
    d["re_excluded_tce_coal_equivalent"] = d["re_excluded_kwh"] * f["k_el_ce"] / 1000.0


def _hierarchy(d: pd.DataFrame, rs: ReadingSet) -> pd.DataFrame:
    """Company, park, group, reporting boundary and installed capacities of each (site, day)."""
    rows = []
    for s in rs.sites:
        b = s.attrs.get("boundary") or {}
        rows.append((s.site, s.company, s.park, s.group, bool(b.get("included", True))))
    hier = pd.DataFrame(rows, columns=["site", "company", "park", "group", "in_boundary"])
    d = d.merge(hier, on="site", how="left")
    d["in_boundary"] = d["in_boundary"].fillna(True).astype(bool)
    cap: dict[str, float] = {}
    for m in rs.meters:
        if m.kind == "battery":
            cap[m.site] = cap.get(m.site, 0.0) + float(m.attrs.get("energy_kwh", 0.0) or 0.0)
    d["battery_capacity_kwh"] = [cap.get(s, 0.0) for s in d["site"]]
    kwp = np.zeros(len(d))
    for m in rs.meters:
        if m.kind == "pv" and m.attrs.get("kwp"):
            since = m.attrs.get("commissioned")
            on = (d["site"] == m.site).to_numpy()
            if since:
                on = on & (d["date"] >= pd.Timestamp(since)).to_numpy()
            kwp += on * float(m.attrs["kwp"])
    d["pv_kwp"] = kwp
    return d


def daily_frame(
    s1: pd.DataFrame,
    rs: ReadingSet,
    fsets: Mapping[str, FactorSet],
    used: _Used | None = None,
    *,
    framework: Mapping[str, Any] | None = None,
    currency: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Build the per (site, local day) frame of flows, tce, emissions, instruments and cost.

    Parameters
    ----------
    s1 : DataFrame
        ``Stage1.energy`` (columns ``site, meter, quantity, date, period, value, max_rate, n``).
    rs : ReadingSet
        Metadata and events of the readings.
    fsets : mapping
        FactorSet by site.
    used : _Used, optional
        Collector of the factors used.
    framework : mapping, optional
        Eligibility rules (:func:`ems.accounting.certificates.load_framework`); default RE100.
    currency : str, optional
        Reporting currency of the converted costs; default ``fx.yaml``'s.

    Returns
    -------
    daily, instruments, unallocated, gases : DataFrame
    fx_used : list of dict
    """
    used = used or _Used()
    fx = load_fx()
    cur = currency or str(fx.get("reporting_currency", "CNY"))
    sites = {s.site: s for s in rs.sites}
    d, gi = _wide(s1, rs, sites)
    f = _site_year_factors(d, sites, fsets, used, fx)
    _energy(d, f)
    d = _tariff_costs(d, gi, sites)
    ev = rs.events
    evd = _event_days(ev, sites) if len(ev) else np.empty(0, dtype="datetime64[ns]")
    d, gases = _gases(d, s1, rs, evd, fsets, used)
    d, inst, lost = _instruments(d, rs, sites, fsets, framework or load_framework())
    _market(d, f)
    d, fx_used = _costs(d, f, sites, fx, cur)
    d["reporting_currency"] = cur
    return _hierarchy(d, rs), inst, lost, gases, fx_used


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


def _select(daily: pd.DataFrame, by: str, period: str | tuple[Any, Any]) -> pd.DataFrame:
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    d = daily
    if by != "site" and "in_boundary" in d:
        d = d[d["in_boundary"].astype(bool)]
    if isinstance(period, tuple):
        lo, hi = (np.datetime64(pd.Timestamp(x).date(), "ns") for x in period)
        d = d[(d["date"] >= lo) & (d["date"] <= hi)]
    return d.assign(period=_labels(d["date"], period))


def _site_periods(d: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per (site, period) sums; money in the site's currency (site rows) or converted (other groupings)."""
    add = [c for c in (*FLOWS, *_ADDITIVE_EXTRA) if c in d] + [c for c in d if c.startswith("import_") and c.endswith("_kwh")]
    add = list(dict.fromkeys(add))
    g = d.groupby(["site", "period"], sort=True)
    sp = g[add].sum()
    money = d if by == "site" else d.drop(columns=list(MONEY)).rename(columns={f"{c}_rep": c for c in MONEY}).assign(
        currency=d["reporting_currency"])
    sp = sp.join(sum_money(money, ["site", "period"], MONEY))
    sp["peak_import_kw"] = g["peak_import_kw"].max()
    sp["days"] = g["date"].nunique()
    sp = sp.join(g[["company", "park", "group", "battery_capacity_kwh", "pv_kwp"]].last())
    sp["in_boundary"] = g["in_boundary"].all() if "in_boundary" in d else True
    return sp.reset_index()


def rollup(
    daily: pd.DataFrame,
    by: str = "site",
    period: str | tuple[Any, Any] = "month",
    *,
    tce_method: str = "calorific",
    onsite_renewables: str = "excluded",
) -> pd.DataFrame:
    """Roll the per-day frame up to a grouping and period and compute every KPI.

    Parameters
    ----------
    daily : DataFrame
        From :func:`daily_frame`.
    by : str
        ``site``, ``company``, ``park`` or ``group`` (the last three sum only the sites
        inside the reporting boundary).
    period : str or (date, date)
        ``day``, ``month``, ``year`` (local calendar) or an inclusive range of local dates.
    tce_method : str
        ``calorific`` (当量值, default) or ``coal_equivalent`` (等价值), GB/T 2589-2020.
    onsite_renewables : str
        ``excluded`` (default: on-site PV consumed is reported beside the total) or ``included``.

    Returns
    -------
    DataFrame
        One row per (``by`` value, ``period``); see ``docs/kpis.md``.
    """
    if tce_method not in TCE_METHODS:
        raise AccountingError(f"tce_method: expected one of {list(TCE_METHODS)}; found {tce_method!r}")
    if onsite_renewables not in ONSITE_RE:
        raise AccountingError(f"onsite_renewables: expected one of {list(ONSITE_RE)}; found {onsite_renewables!r}")
    sp = _site_periods(_select(daily, by, period), by)
    if by == "site":
        o = sp.rename(columns={"site": "key"})
    else:
        skip = ("site", "period", "company", "park", "group", "hours", "days", "currency", "in_boundary")
        gg = sp.groupby([by, "period"], sort=True)
        o = gg[[c for c in sp.columns if c not in skip]].sum()
        o["hours"] = gg["hours"].max()
        o["days"] = gg["days"].max()
        o["sites"] = gg["site"].nunique()
        o["currency"] = gg["currency"].first()
        o = o.reset_index().rename(columns={by: "key"})
    o.insert(0, "by", by)
    cols = _Cols(o)
    _derive(cols, tce_method, onsite_renewables)
    _ratios(cols, period)
    return cols.frame()


class _Cols:
    """Derived columns collected apart and joined once (no fragmented frame)."""

    def __init__(self, base: pd.DataFrame) -> None:
        self.base = base
        self.new: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.new[key] if key in self.new else self.base[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.new[key] = value

    def frame(self) -> pd.DataFrame:
        n = len(self.base)
        new = pd.DataFrame({k: (v if np.ndim(v) else np.full(n, v)) for k, v in self.new.items()}, index=self.base.index)
        return pd.concat([self.base.drop(columns=[c for c in new if c in self.base]), new], axis=1)


def _derive(o: _Cols, method: str, onsite: str) -> None:
    """Totals of energy, emissions and cost from the sums (in place)."""
    o["electricity_tce"] = o[f"electricity_tce_{method}"]
    o["pv_consumed_tce_equiv"] = o[f"pv_consumed_tce_{method}"]
    o["re_excluded_tce"] = o[f"re_excluded_tce_{method}"]
    o["direct_tce"] = o["natural_gas_tce"] + o["diesel_tce"] + o["gasoline_tce"]
    o["indirect_tce"] = o["electricity_tce"] + o["steam_tce"]
    pv = o["pv_consumed_tce_equiv"] if onsite == "included" else 0.0
    o["total_tce"] = o["direct_tce"] + o["indirect_tce"] + pv
    o["total_excl_re_tce"] = o["total_tce"] - o["re_excluded_tce"] - pv
    o["tce_method"] = method
    o["onsite_renewables"] = onsite
    o["scope1_combustion_t"] = (o["scope1_natural_gas_kg"] + o["scope1_diesel_kg"] + o["scope1_gasoline_kg"]) / 1000.0
    o["scope1_t"] = o["scope1_combustion_t"] + (o["scope1_refrigerant_kg"] + o["scope1_fugitive_kg"] + o["scope1_process_kg"]) / 1000.0
    o["memo_non_kyoto_t"] = o["memo_non_kyoto_kgco2e"] / 1000.0
    o["scope2_location_t"] = (o["scope2_electricity_location_kg"] + o["scope2_heat_kg"]) / 1000.0
    o["scope2_market_t"] = (o["scope2_electricity_market_kg"] + o["scope2_heat_kg"]) / 1000.0
    o["scope12_location_t"] = o["scope1_t"] + o["scope2_location_t"]
    o["scope12_market_t"] = o["scope1_t"] + o["scope2_market_t"]
    o["contracts_beyond_consumption_kwh"] = o["contracts_kwh"] - o["contracts_counted_kwh"]
    o["certificates_beyond_consumption_kwh"] = o["certificates_kwh"] - o["certificates_counted_kwh"]
    o["total_cost"] = (o["energy_cost"] + o["demand_charge"] - o["export_revenue"] + o["steam_cost"]
                       + o["natural_gas_cost"] + o["fuel_cost"] + o["certificate_cost"])


def _ratios(o: _Cols, period: str | tuple[Any, Any]) -> None:
    """Shares, intensities and the energy-saving rate (in place); NaN where a denominator is zero, with a note."""
    o["green_share"] = _div(o["green_kwh"], o["electricity_consumed_kwh"])
    o["self_consumption"] = _div(o["pv_consumed_kwh"], o["pv_generated_kwh"])
    o["self_sufficiency"] = 1.0 - _div(o["grid_import_kwh"], o["electricity_consumed_kwh"])
    o["load_factor"] = _div(o["grid_import_kwh"], o["peak_import_kw"] * o["hours"])
    o["battery_efc"] = _div(o["battery_discharge_kwh"], o["battery_capacity_kwh"])
    o["residual_factor"] = _div(o["scope2_electricity_market_kg"], o["grid_import_kwh"] - o["market_covered_kwh"] + o["pv_sold_counted_kwh"])
    out10k = o["output_rmb"] / 1e4
    for num, name in (
        ("total_tce", "tce_per_10k_rmb"), ("total_excl_re_tce", "tce_excl_re_per_10k_rmb"),
        ("grid_import_kwh", "grid_import_kwh_per_10k_rmb"), ("electricity_consumed_kwh", "electricity_kwh_per_10k_rmb"),
        ("steam_gj", "steam_gj_per_10k_rmb"), ("natural_gas_m3", "natural_gas_m3_per_10k_rmb"),
        ("diesel_kg", "diesel_kg_per_10k_rmb"), ("gasoline_kg", "gasoline_kg_per_10k_rmb"),
        ("scope12_location_t", "scope12_location_intensity_t_per_10k_rmb"),
        ("scope12_market_t", "scope12_market_intensity_t_per_10k_rmb"),
    ):
        o[name] = _div(o[num], out10k)
    o["intensity_note"] = np.where(o["output_rmb"] > 0, "", "output value is zero or not metered: intensities are not defined")
    o["green_share_note"] = np.where(o["electricity_consumed_kwh"] > 0, "", "no electricity consumed: share not defined")
    o["self_consumption_note"] = np.where(o["pv_generated_kwh"] > 0, "", "no PV generation")
    prev = _prev_label(o["period"], period)
    look = pd.Series(o["tce_per_10k_rmb"].to_numpy(), index=pd.MultiIndex.from_arrays([o["key"], o["period"]]))
    last = look.reindex(pd.MultiIndex.from_arrays([o["key"], prev])).to_numpy()
    o["tce_per_10k_rmb_last_year"] = last
    o["energy_saving_rate"] = 1.0 - _div(o["tce_per_10k_rmb"], pd.Series(last, index=o.base.index))


def gas_rollup(gases: pd.DataFrame, daily: pd.DataFrame, by: str = "site", period: str | tuple[Any, Any] = "year") -> pd.DataFrame:
    """Per (grouping key, period, gas, kind) kg of gas and tCO2e; Scope 1 rows and memo rows apart.

    Returns
    -------
    DataFrame
        ``key, period, gas, basket, in_scope1, kind, activity, kg, tco2e, note``.
    """
    cols = ["key", "period", "gas", "basket", "in_scope1", "kind", "activity", "kg", "tco2e", "note"]
    if gases.empty:
        return pd.DataFrame(columns=cols)
    hier = daily.drop_duplicates("site").set_index("site")[["company", "park", "group", "in_boundary"]]
    g = gases.join(hier, on="site")
    if by != "site":
        g = g[g["in_boundary"].astype(bool)]
    g = _select(g.assign(in_boundary=True), "site", period)
    k = g[by] if by != "site" else g["site"]
    out = g.assign(key=k).groupby(["key", "period", "gas", "basket", "in_scope1", "kind", "activity", "note"],
                                  sort=True, dropna=False)[["kg", "kgco2e"]].sum().reset_index()
    out["tco2e"] = out.pop("kgco2e") / 1000.0
    return out[cols]


def kpis(
    readingset: ReadingSet,
    by: str = "site",
    period: str | tuple[Any, Any] = "month",
    factors: FactorSet | Mapping[str, Any] | None = None,
    *,
    tce_method: str = "calorific",
    onsite_renewables: str = "excluded",
    framework: str | None = None,
    currency: str | None = None,
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
    tce_method : str
        ``calorific`` (当量值, default) or ``coal_equivalent`` (等价值), GB/T 2589-2020.
    onsite_renewables : str
        On-site renewable electricity ``excluded`` from (default) or ``included`` in total tce.
    framework : str, optional
        Eligibility rules for certificates and contracts: ``RE100`` (default), ``GHG-Scope2``, ``CN-GEC``.
    currency : str, optional
        Reporting currency of company, park and group costs (default CNY, from ``fx.yaml``).

    Returns
    -------
    KpiResult
    """
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    fsets = _factor_sets(readingset, factors)
    fw = load_framework(framework)
    s1 = stage1(readingset)
    used = _Used()
    daily, inst, lost, gases, fx_used = daily_frame(s1.energy, readingset, fsets, used, framework=fw, currency=currency)
    opts = {"tce_method": tce_method, "onsite_renewables": onsite_renewables, "framework": fw["name"],
            "currency": str(daily["reporting_currency"].iloc[0]), "boundary": _boundary(readingset)}
    table = rollup(daily, by=by, period=period, tce_method=tce_method, onsite_renewables=onsite_renewables)
    notes = _notes(opts, fw, s1.anomalies, gases)
    return KpiResult(
        kpis=table, daily=daily, stage1=s1.energy, anomalies=s1.anomalies, instruments=inst, unallocated=lost,
        factors_used=used.frame(), gases=gases, fx_used=pd.DataFrame(fx_used), notes=notes, by=by,
        period=period if isinstance(period, str) else f"{period[0]}..{period[1]}", options=opts,
        factor_sets=fsets, energy=s1,
    )


def _boundary(rs: ReadingSet) -> dict[str, Any]:
    """The reporting boundary the sites carry: approach, sites inside and outside, with reasons."""
    inside: list[str] = []
    outside: list[str] = []
    approach: set[str] = set()
    notes: set[str] = set()
    for s in rs.sites:
        b = s.attrs.get("boundary") or {}
        approach.add(str(b.get("approach", "operational_control")))
        (inside if b.get("included", True) else outside).append(s.site)
        if b.get("reason"):
            notes.add(f"{s.site}: {b['reason']}")
    return {"approach": ", ".join(sorted(approach)) or "operational_control", "inside": inside, "outside": outside,
            "notes": sorted(notes)}


def _notes(opts: Mapping[str, Any], fw: Mapping[str, Any], anomalies: pd.DataFrame, gases: pd.DataFrame) -> list[str]:
    b = opts["boundary"]
    notes = [
        f"tce method: {TCE_METHODS[opts['tce_method']]} (default: calorific value); on-site renewable electricity "
        f"{opts['onsite_renewables']} {'in' if opts['onsite_renewables'] == 'included' else 'from'} the total",
        f"reporting boundary: {b['approach'].replace('_', ' ')} (GHG Protocol); {len(b['inside'])} site(s) inside"
        + (f", outside: {', '.join(b['outside'])}" if b["outside"] else ""),
        "grid factors: most local place first (province, region, country), then nearest year; per-site choice in factors_used",
        "market-based Scope 2: counted instruments at 0, the rest at the residual mix, else the location-based factor",
        f"certificates and contracts: {fw['name']} eligibility; they cover grid electricity only, capped day by day at grid "
        "import, identically in the green share and market-based Scope 2",
        f"costs: site rows in the site's currency, other groupings converted to {opts['currency']} (see fx_used)",
        "energy from differences of cumulative registers; interval energy attributed to the local day of the interval start",
        "PV exported = min(grid export, PV generation) per interval; PV consumed = generated - exported",
        "Scope 1 = combustion + Kyoto-basket gases (fugitive, process); HCFCs and non-Kyoto gases are memo items",
        "peak demand above site level = sum of site peaks (non-coincident)",
    ]
    if len(anomalies):
        notes.append(f"{len(anomalies)} register anomalies (resets, rollovers, gaps): see anomalies")
    unknown = sorted(set(gases.loc[gases["basket"] == "unknown", "gas"])) if len(gases) else []
    if unknown:
        notes.append(f"unknown gases not counted (not in the GWP table): {', '.join(unknown)}")
    return notes
