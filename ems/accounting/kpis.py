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
from ems.accounting.money import convert, load_fx, site_currency
from ems.accounting.rollup import (
    ADDITIVE_EXTRA,
    BY,
    FLOW_OF,
    FLOWS,
    MONEY,
    TCE_METHODS,
    period_codes,
    rollup,
)
from ems.errors import AccountingError
from ems.gases import load_gases
from ems.readings import ReadingSet, SiteInfo

__all__ = ["BY", "TCE_METHODS", "KpiResult", "daily_frame", "kpis", "rollup"]

log = logging.getLogger(__name__)

_FLOW = FLOW_OF
_ADDITIVE_EXTRA = ADDITIVE_EXTRA  # the names bench/ and older callers import


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


def _site_day_hours(site_code: np.ndarray, site_names: np.ndarray, date: np.ndarray,
                    sites: Mapping[str, SiteInfo]) -> np.ndarray:
    """Hours of each (site, local day) row, computed once per time zone and distinct day."""
    out = np.zeros(len(site_code))
    zones = np.asarray([sites[str(s)].tz for s in site_names], dtype=object)
    zone = zones[site_code] if len(site_code) else np.zeros(0, object)
    for tz in pd.unique(zones):
        rows = np.flatnonzero(zone == tz)
        uniq, inv = np.unique(date[rows], return_inverse=True)
        out[rows] = _day_hours(uniq, str(tz))[inv]
    return out


class _Series:
    """Site (sorted), meter and quantity codes of each stage-1 row, and their names."""

    def __init__(self, s1: pd.DataFrame) -> None:
        self.site, sites = pd.factorize(s1["site"], sort=True)
        self.meter, meters = pd.factorize(s1["meter"])
        self.quantity, quantities = pd.factorize(s1["quantity"])
        self.sites = np.asarray(sites, dtype=object)
        self.meters = np.asarray(meters, dtype=object)
        self.quantities = np.asarray(quantities, dtype=object)

    def per_series(self, name: Any) -> np.ndarray:
        """``name(site, meter, quantity)`` of each row, called once per distinct series (an int64 array)."""
        nm, nq = max(len(self.meters), 1), max(len(self.quantities), 1)
        combo = (self.site.astype(np.int64) * nm + self.meter) * nq + self.quantity
        table = np.full(max(len(self.sites) * nm * nq, 1), -1, dtype=np.int64)
        for c in np.flatnonzero(np.bincount(combo, minlength=len(table))).tolist():
            table[c] = name(str(self.sites[c // (nm * nq)]), str(self.meters[c // nq % nm]), str(self.quantities[c % nq]))
        out: np.ndarray = table[combo]
        return out


def _flows(ser: _Series, rs: ReadingSet) -> np.ndarray:
    """Index in ``FLOWS`` of each stage-1 row's flow (see ``FLOW_OF``; fuels by carrier), -1 for none."""
    meters = {(m.site, m.meter): m for m in rs.meters}
    col = {f: i for i, f in enumerate(FLOWS)}

    def flow(site: str, meter: str, q: str) -> int:
        m = meters.get((site, meter))
        k = "_site" if meter == "_site" else (m.kind if m is not None else None)
        f = FLOW_OF.get((k, q)) if k is not None else None
        if f is None and m is not None and k == "fuel" and q == "mass_kg":
            f = f"{m.carrier}_kg"
            if f not in col:
                raise AccountingError(f"site {site}, meter {meter}: fuel carrier {m.carrier!r}: expected one of "
                                      f"{[c[:-3] for c in FLOWS if c.endswith('_kg')]}")
        return col[f] if f is not None else -1

    return ser.per_series(flow)


def _event_days(ev: pd.DataFrame, sites: Mapping[str, SiteInfo]) -> np.ndarray:
    out = np.empty(len(ev), dtype="datetime64[ns]")
    for s, idx in ev.groupby("site", sort=False).indices.items():
        tz = sites[s].tz if s in sites else "UTC"
        loc = pd.DatetimeIndex(ev.index[idx]).tz_convert(tz).tz_localize(None).normalize()
        out[idx] = loc.as_unit("ns").to_numpy()
    return out


class _Days(dict[str, Any]):
    """The daily frame as it is built: one array per column (``site``, ``date``, then the rest in
    order), turned into a DataFrame once at the end. ``code``: each row's index in ``names``, the
    sites in sorted order; rows are sorted by site, then date."""

    def __init__(self, names: np.ndarray, code: np.ndarray, date: np.ndarray) -> None:
        super().__init__(site=names[code], date=date)
        self.names = names
        self.code = code

    def __len__(self) -> int:
        return len(self.code)

    def frame(self) -> pd.DataFrame:
        out = pd.DataFrame(dict(self), index=pd.RangeIndex(len(self.code)))
        if "currency" in out:  # each row's own currency: kept as Python objects (reporting_currency is text)
            out["currency"] = out["currency"].astype(object)
        return out

    def rows_of(self, site: Any, date: Any) -> np.ndarray:
        """Row positions of (site, local day) pairs; -1 where there is no such row."""
        want_site = np.asarray(site, dtype=object)
        sc = np.searchsorted(self.names, want_site) if len(self.names) else np.zeros(len(want_site), np.int64)
        sc = np.minimum(sc, max(len(self.names) - 1, 0))
        known = (self.names[sc] == want_site) if len(self.names) else np.zeros(len(want_site), bool)
        day = np.timedelta64(1, "D")
        key = self.code.astype(np.int64) * 1_000_000 + (self["date"] - np.datetime64(0, "ns")) // day
        want = (np.where(known, sc, -1).astype(np.int64) * 1_000_000
                + (pd.to_datetime(pd.Series(date)).to_numpy("datetime64[ns]") - np.datetime64(0, "ns")) // day)
        if not len(key):
            return np.full(len(want), -1)
        i = np.clip(np.searchsorted(key, want), 0, len(key) - 1)  # key is sorted (site, then date)
        out: np.ndarray = np.where(key[i] == want, i, -1)
        return out


def _day_keys(site: np.ndarray, site_names: np.ndarray, date: np.ndarray) -> tuple[np.ndarray, _Days]:
    """Row of each stage-1 line in the daily frame, and the daily frame's ``site, date`` (sorted)."""
    day = date.astype("datetime64[D]").astype(np.int64)
    d0 = int(day.min())
    span = int(day.max()) - d0 + 1
    key = site.astype(np.int64) * span + (day - d0)
    present = np.flatnonzero(np.bincount(key, minlength=len(site_names) * span))
    row = np.zeros(len(site_names) * span, dtype=np.int64)
    row[present] = np.arange(len(present))
    dates = ((present % span + d0) * np.timedelta64(1, "D") + np.datetime64(0, "D")).astype("datetime64[ns]")
    return row[key], _Days(site_names, present // span, dates)


def _wide(s1: pd.DataFrame, rs: ReadingSet, sites: Mapping[str, SiteInfo]) -> tuple[_Days, dict[str, np.ndarray]]:
    """Per (site, day) flows, peak import, hours and the electricity balance; and the grid-import
    rows (``row`` in the days, ``site``, ``period``, ``value``)."""
    ser = _Series(s1)
    fcode = _flows(ser, rs)
    keep = np.flatnonzero(fcode >= 0)
    if not len(keep):
        raise AccountingError("no register readings to account: expected import_kwh, energy_kwh, heat_gj, volume_m3, ... registers")
    fcode = fcode[keep]
    row, d = _day_keys(ser.site[keep], ser.sites, s1["date"].to_numpy("datetime64[ns]")[keep])
    n = len(d)
    table = np.bincount(row * len(FLOWS) + fcode, s1["value"].to_numpy(float)[keep], minlength=n * len(FLOWS))
    d.update(zip(FLOWS, table.reshape(n, len(FLOWS)).T.copy(), strict=True))
    is_gi = fcode == FLOWS.index("grid_import_kwh")
    at = keep[is_gi]
    gi = {"row": row[is_gi], "site": ser.site[at].astype(np.int64), "period": s1["period"].to_numpy(dtype=object)[at],
          "value": s1["value"].to_numpy(float)[at]}
    _peak_and_hours(d, gi["row"], ser, at, s1, rs, sites)
    d["electricity_consumed_kwh"] = np.clip(
        d["grid_import_kwh"] + d["pv_generated_kwh"] + d["chp_generated_kwh"] - d["grid_export_kwh"], 0.0, None)
    d["pv_consumed_kwh"] = np.minimum(np.clip(d["pv_generated_kwh"] - d["pv_exported_kwh"], 0.0, None),
                                      d["electricity_consumed_kwh"])
    d["battery_losses_kwh"] = d["battery_charge_kwh"] - d["battery_discharge_kwh"]
    return d, gi


def _peak_and_hours(d: _Days, rows: np.ndarray, ser: _Series, at: np.ndarray, s1: pd.DataFrame,
                    rs: ReadingSet, sites: Mapping[str, SiteInfo]) -> None:
    """Peak import and hours of each day from the grid-import rows ``at`` of stage 1 (in place)."""
    n = len(d)
    mc, mu = pd.factorize(ser.meter[at])
    nm = max(len(ser.meters), 1)
    ivs = {(m.site, m.meter): float(m.interval_s) for m in rs.meters}
    per_pair = np.asarray([ivs.get((str(ser.sites[p // nm]), str(ser.meters[p % nm])), 0.0)
                           for p in range(len(ser.sites) * nm)], dtype=float)
    iv = per_pair[ser.site[at].astype(np.int64) * nm + ser.meter[at]]
    slot = rows.astype(np.int64) * max(len(mu), 1) + mc
    # peak: per grid meter the max interval rate of the day, summed over grid meters
    peak = np.zeros(n * max(len(mu), 1))
    np.maximum.at(peak, slot, s1["max_rate"].to_numpy(float)[at])
    d["peak_import_kw"] = peak.reshape(n, -1).sum(axis=1)
    # hours of each local day (23 h / 25 h on DST days), limited to the hours the grid
    # meter covered (n intervals x interval) so a partial day has a fair load factor
    hours = _site_day_hours(d.code, d.names, d["date"], sites)
    cov = np.bincount(slot, s1["n"].to_numpy(float)[at] * iv / 3600.0, minlength=n * max(len(mu), 1)).reshape(n, -1).max(axis=1)
    has = np.bincount(rows, minlength=n) > 0
    d["hours"] = np.where(has, np.minimum(hours, cov), hours)


_SCALARS = {"k_el": "electricity_kgce_per_kwh", "k_steam": "steam_kgce_per_gj", "k_gas": "natural_gas_kgce_per_m3",
            "k_diesel": "diesel_kgce_per_kg", "k_gasoline": "gasoline_kgce_per_kg", "e_gas": "natural_gas_kgco2_per_m3",
            "e_diesel": "diesel_kgco2_per_kg", "e_gasoline": "gasoline_kgco2_per_kg", "e_heat": "heat_kgco2_per_gj"}
_PRICES = {"p_steam": "steam_per_gj", "p_gas": "natural_gas_per_m3", "p_diesel": "diesel_per_kg",
           "p_gasoline": "gasoline_per_kg", "p_cert": "certificate_per_mwh"}


def _site_year_factors(d: _Days, sites: Mapping[str, SiteInfo], fsets: Mapping[str, FactorSet],
                       used: _Used, fx: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every factor and price of each daily row, chosen once per (site, year)."""
    names = [*_SCALARS, *_PRICES, "k_el_ce", "g_avg", "g_res", "p_export"]
    cols = {c: np.zeros(len(d)) for c in names}
    year = d["date"].astype("datetime64[Y]").astype(np.int64) + 1970
    y0 = int(year.min()) if len(year) else 0
    key = d.code.astype(np.int64) * 10_000 + (year - y0)
    for k in np.unique(key).tolist():  # sorted by site, then year
        idx = np.flatnonzero(key == k)
        s, y = str(d.names[k // 10_000]), k % 10_000 + y0
        fs, si = fsets[s], sites[s]
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
        for c, v in vals.items():
            cols[c][idx] = v
    return cols


def _no_grid_average(s: str, si: SiteInfo, fs: FactorSet, note: str, year: int) -> str:
    """The error for a site whose places have no grid-average factor in its set, naming the sets that do."""
    others = [n for n in builtin_sets_with([p for _, p in si.places() if p]) if n != fs.name]
    hint = f"name the built-in set {' or '.join(map(repr, others))} in the site's factor_set, " if others else ""
    return f"site {s}: {note}; {hint}add a factor to the set or override 'grid:average:{si.country}:{year}'"


def _energy(d: _Days, f: Mapping[str, np.ndarray]) -> None:
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


def _per_site(d: _Days, value: Mapping[str, Any], default: Any, dtype: Any = float) -> np.ndarray:
    """A per-site value for each row of ``d``."""
    table = np.asarray([value.get(str(s), default) for s in d.names], dtype=dtype)
    out: np.ndarray = table[d.code] if len(table) else np.zeros(0, dtype=dtype)
    return out


def _tariff_costs(d: _Days, gi: Mapping[str, np.ndarray], sites: Mapping[str, SiteInfo]) -> None:
    """Energy charges by tariff period and the monthly demand charge spread over the month's days (in place)."""
    n = len(d)
    rows, value = gi["row"], gi["value"]
    prices = {(s.site, p): float(v) for s in sites.values() for p, v in ((s.attrs.get("tariff") or {}).get("prices") or {}).items()}
    pc, pu = pd.factorize(gi["period"])
    grid = np.asarray([[prices.get((str(s), str(p)), 0.0) for p in pu] for s in d.names]).reshape(len(d.names), len(pu))
    d["energy_cost"] = np.bincount(rows, grid[gi["site"], pc] * value if len(rows) else value, minlength=n)
    for i, p in sorted(enumerate(pu), key=lambda x: str(x[1])):
        if p != "":
            m = pc == i
            d[f"import_{p}_kwh"] = np.bincount(rows[m], value[m], minlength=n)
    rate = {s: float((si.attrs.get("tariff") or {}).get("demand_charge_per_kw_month", 0.0) or 0.0) for s, si in sites.items()}
    dc = _per_site(d, rate, np.nan)
    month = d["date"].astype("datetime64[M]").astype(np.int64)
    _, g = np.unique(d.code.astype(np.int64) * 100_000 + (month - (month.min() if n else 0)), return_inverse=True)
    top = np.full(int(g.max()) + 1 if n else 0, -np.inf)
    np.maximum.at(top, g, d["peak_import_kw"])
    d["demand_charge"] = top[g] * dc / np.bincount(g)[g].astype(float)


def _costs(d: _Days, f: Mapping[str, np.ndarray], sites: Mapping[str, SiteInfo], fx: Mapping[str, Any],
           currency: str) -> list[dict[str, Any]]:
    """Costs in each site's currency, and converted to the reporting currency (``<name>_rep``) (in place)."""
    d["steam_cost"] = d["steam_gj"] * f["p_steam"]
    d["natural_gas_cost"] = d["natural_gas_m3"] * f["p_gas"]
    d["fuel_cost"] = d["diesel_kg"] * f["p_diesel"] + d["gasoline_kg"] * f["p_gasoline"]
    d["export_revenue"] = d["grid_export_kwh"] * f["p_export"]
    d["certificate_cost"] = d["certificates_bought_mwh"] * f["p_cert"]
    d["currency"] = _per_site(d, {s: site_currency(si, fx) for s, si in sites.items()}, None, object)
    rate = np.ones(len(d))
    used: list[dict[str, Any]] = []
    for cur in sorted(set(d["currency"].tolist())):
        idx = np.flatnonzero(d["currency"] == cur)
        r, u = convert(d["date"][idx], str(cur), currency, fx)
        rate[idx] = r
        used += u
    d["fx_rate"] = rate
    for c in MONEY:
        d[f"{c}_rep"] = d[c] * rate
    return used


def _gases(d: _Days, s1: pd.DataFrame, rs: ReadingSet, evd: np.ndarray,
           fsets: Mapping[str, FactorSet], used: _Used) -> pd.DataFrame:
    """Scope 1 by gas of each day (in place); the per-gas rows."""
    editions = {s: fs.gwp_edition for s, fs in fsets.items()}
    g = scope1.gas_daily(s1, rs, evd, editions, load_gases())
    used.gwp(g, editions)
    sums = scope1.gas_sums(g)
    rows = d.rows_of(sums["site"].to_numpy(), sums["date"].to_numpy())
    ok = rows >= 0
    for c in scope1.SUM_COLUMNS:
        col = np.zeros(len(d))
        np.add.at(col, rows[ok], sums[c].to_numpy(float)[ok])
        d[c] = col
    return g


_INSTRUMENT_DAYS = ("contracts_kwh", "certificates_kwh", "pv_sold_kwh", "contracts_counted_kwh", "certificates_counted_kwh",
                    "pv_sold_counted_kwh", "re_excluded_kwh", "certificates_bought_mwh", "contract_hydro_kwh",
                    "contract_green_power_kwh", "certificates_invalid_kwh")


def _instruments(d: _Days, rs: ReadingSet, sites: Mapping[str, SiteInfo], fsets: Mapping[str, FactorSet],
                 framework: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Registry, eligibility, allocation and coverage of certificates and contracts, as day columns of ``d``
    (in place); the instrument table and what could not be allocated."""
    own = {f"{m.site}/{m.meter}" for m in rs.meters if m.kind == "pv"}
    inst = instrument_table(rs.events, sites, framework, own).reset_index(drop=True)
    n = len(d)
    out: dict[str, Any] = {c: np.zeros(n) for c in _INSTRUMENT_DAYS}
    lost = pd.DataFrame(columns=["item", "site", "kwh", "reason"])
    if inst.empty:
        d.update(out, certificates_valid_kwh=np.zeros(n))
        return inst.assign(counted_mwh=np.zeros(0)), lost
    live = inst[inst["status"].isin(["counted", "sold"])]
    sold = (live["status"] == "sold").to_numpy()
    items = live.assign(
        item=live.index, cls=np.where(sold, "pv_sold", np.where(live["instrument"] == "PPA", "contract", "certificate")),
        start=np.where(sold, live["vintage_start"], live["period_start"]), end=np.where(sold, live["vintage_end"], live["period_end"]))
    days, offered, counted, lost = cover(items, pd.DataFrame({c: d[c] for c in ("site", "date", "grid_import_kwh", "pv_consumed_kwh")}))
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
    d.update(out, certificates_valid_kwh=out["certificates_kwh"])
    return inst, lost


def _on_retirement_day(d: _Days, inst: pd.DataFrame, out: dict[str, np.ndarray]) -> None:
    """Certificates bought [MWh] and refused [kWh] on the local day of their retirement (in place)."""
    c = inst[inst["instrument"] != "PPA"]
    rows = d.rows_of(c["site"].to_numpy(), c["retired_on"].to_numpy())
    ok = rows >= 0
    mwh = c["mwh"].to_numpy(float)
    bought = ok & (c["action"] == "retire").to_numpy()
    bad = ok & (c["status"] == "refused").to_numpy()
    np.add.at(out["certificates_bought_mwh"], rows[bought], mwh[bought])
    np.add.at(out["certificates_invalid_kwh"], rows[bad], mwh[bad] * 1000.0)


def _market(d: _Days, f: Mapping[str, np.ndarray]) -> None:
    """Green kWh, market-based Scope 2 and the dual-control exclusion of each day (in place)."""
    covered = d["contracts_counted_kwh"] + d["certificates_counted_kwh"]
    d["market_covered_kwh"] = covered
    d["green_kwh"] = d["pv_consumed_kwh"] - d["pv_sold_counted_kwh"] + covered
    d["scope2_electricity_market_kg"] = (d["grid_import_kwh"] - covered + d["pv_sold_counted_kwh"]) * f["g_res"]
    d["re_excluded_tce_calorific"] = d["re_excluded_kwh"] * f["k_el"] / 1000.0
    d["re_excluded_tce_coal_equivalent"] = d["re_excluded_kwh"] * f["k_el_ce"] / 1000.0


def _hierarchy(d: _Days, rs: ReadingSet) -> None:
    """Company, park, group, reporting boundary and installed capacities of each (site, day) (in place)."""
    info = {s.site: s for s in rs.sites}
    for c in ("company", "park", "group"):
        d[c] = _per_site(d, {k: getattr(s, c) for k, s in info.items()}, np.nan, object)
    d["in_boundary"] = _per_site(d, {k: bool((s.attrs.get("boundary") or {}).get("included", True))
                                     for k, s in info.items()}, True, bool)
    cap: dict[str, float] = {}
    for m in rs.meters:
        if m.kind == "battery":
            cap[m.site] = cap.get(m.site, 0.0) + float(m.attrs.get("energy_kwh", 0.0) or 0.0)
    d["battery_capacity_kwh"] = _per_site(d, cap, 0.0)
    kwp = np.zeros(len(d))
    for m in rs.meters:
        if m.kind == "pv" and m.attrs.get("kwp"):
            since = m.attrs.get("commissioned")
            on = d["site"] == m.site
            if since:
                on = on & (d["date"] >= np.datetime64(pd.Timestamp(since).to_datetime64(), "ns"))
            kwp += on * float(m.attrs["kwp"])
    d["pv_kwp"] = kwp


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
    _tariff_costs(d, gi, sites)
    ev = rs.events
    evd = _event_days(ev, sites) if len(ev) else np.empty(0, dtype="datetime64[ns]")
    gases = _gases(d, s1, rs, evd, fsets, used)
    inst, lost = _instruments(d, rs, sites, fsets, framework or load_framework())
    _market(d, f)
    fx_used = _costs(d, f, sites, fx, cur)
    d["reporting_currency"] = np.full(len(d), cur, dtype=object)
    _hierarchy(d, rs)
    return d.frame(), inst, lost, gases, fx_used


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
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    if isinstance(period, tuple):
        lo, hi = (np.datetime64(pd.Timestamp(x).date(), "ns") for x in period)
        dates = g["date"].to_numpy("datetime64[ns]")
        g = g[(dates >= lo) & (dates <= hi)]
    names, inv = period_codes(g["date"].to_numpy("datetime64[ns]"), period)
    g = g.assign(period=names[inv] if len(names) else np.zeros(0, dtype=object))
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
