"""Stage 3 of the rollup: the daily frame's days summed per grouping and period, and every KPI
recomputed from the sums.

The daily frame (:func:`ems.accounting.kpis.daily_frame`) has one row per (site, local day).
:func:`rollup` sums its additive columns per (site, period) and then, above site level, per
(company, park or group, period) over the sites inside the reporting boundary; ratios are
computed from the sums, never averaged. It works on NumPy arrays (one sort, one
``reduceat`` per kind of column), so a year of ten sites rolls up in a few milliseconds and
one day of one site (the live dashboard's today) in well under one.

Formulas, units and sources are in ``docs/kpis.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ems.errors import AccountingError

__all__ = ["BY", "FLOWS", "MONEY", "ONSITE_RE", "TCE_METHODS", "combine", "kpis_of", "period_codes", "rollup",
           "site_period_sums"]

BY = ("site", "company", "park", "group")
TCE_METHODS = {
    "calorific": "calorific value (当量值), GB/T 2589-2020: electricity 0.1229 kgce/kWh",
    "coal_equivalent": "coal equivalent (等价值), GB/T 2589-2020: electricity at the year's power-supply coal rate",
}
ONSITE_RE = ("excluded", "included")
FLOW_OF = {
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
"""Flow column of a (meter kind, quantity) series in the daily frame."""
FLOWS = (*dict.fromkeys(FLOW_OF.values()), "diesel_kg", "gasoline_kg")
MONEY = ("energy_cost", "demand_charge", "export_revenue", "steam_cost", "natural_gas_cost", "fuel_cost", "certificate_cost")
"""Cost columns [currency of the row]; the daily frame also holds each one converted (``<name>_rep``)."""
ADDITIVE_EXTRA = (
    "electricity_consumed_kwh", "pv_consumed_kwh", "battery_losses_kwh",
    "electricity_tce_calorific", "electricity_tce_coal_equivalent", "pv_consumed_tce_calorific",
    "pv_consumed_tce_coal_equivalent", "steam_tce", "natural_gas_tce", "diesel_tce", "gasoline_tce",
    "scope1_natural_gas_kg", "scope1_diesel_kg", "scope1_gasoline_kg", "scope1_refrigerant_kg", "scope1_fugitive_kg",
    "scope1_process_kg", "memo_non_kyoto_kgco2e", "memo_non_kyoto_gas_kg", "refrigerant_kg", "unknown_gas_kg",
    "scope2_electricity_location_kg", "scope2_electricity_market_kg", "scope2_heat_kg", "hours",
    "contracts_kwh", "certificates_kwh", "contracts_counted_kwh", "certificates_counted_kwh", "pv_sold_kwh",
    "pv_sold_counted_kwh", "certificates_bought_mwh", "contract_hydro_kwh", "contract_green_power_kwh",
    "certificates_valid_kwh", "certificates_invalid_kwh", "green_kwh", "market_covered_kwh", "re_excluded_kwh",
    "re_excluded_tce_calorific", "re_excluded_tce_coal_equivalent",
)
"""Daily-frame columns besides the flows that add up over days and sites."""
_LAST = ("company", "park", "group", "battery_capacity_kwh", "pv_kwp")
_UNIT = {"day": "D", "month": "M", "year": "Y"}

Cols = dict[str, np.ndarray]


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
        From :func:`ems.accounting.kpis.daily_frame`.
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
        One row per (``by`` value, ``period``), sorted by them; see ``docs/kpis.md``.
    """
    return kpis_of(site_period_sums(daily, by, period), by, period, tce_method=tce_method,
                   onsite_renewables=onsite_renewables)


def site_period_sums(daily: pd.DataFrame, by: str = "site", period: str | tuple[Any, Any] = "month") -> Cols:
    """The first step of :func:`rollup`: per (site, period) sums of the days that ``by`` counts
    (above site level: the sites inside the reporting boundary, money converted), one array per
    column, sorted by site and period. Sums of disjoint sets of days add up (:func:`combine`)."""
    rows, names, inv = _select(daily, by, period)
    return _site_periods(daily, rows, names, inv, by)


def combine(parts: list[Cols]) -> Cols:
    """Per (site, period) sums of disjoint sets of days (:func:`site_period_sums` of each) added up:
    what one call over all the days gives, up to the order of the additions."""
    parts = [p for p in parts if p and len(p["site"])]
    if len(parts) <= 1:
        return parts[0] if parts else {}
    names = list(dict.fromkeys(c for p in parts for c in p))  # a tariff period may be in some days only: 0 elsewhere
    cols = {c: np.concatenate([p[c] if c in p else np.zeros(len(p["site"])) for p in parts]) for c in names}
    pnames, pc = np.unique(cols["period"], return_inverse=True)
    snames, sc = np.unique(cols["site"], return_inverse=True)
    g = _Groups(sc.astype(np.int64) * len(pnames) + pc)
    out: Cols = {"site": snames[g.codes // len(pnames)], "period": pnames[g.codes % len(pnames)]}
    for c, v in cols.items():
        if c in ("site", "period"):
            continue
        if c in (*_LAST, "currency"):
            out[c] = g.last(v)
        elif c == "in_boundary":
            out[c] = g.reduce(np.logical_and, v)
        else:
            out[c] = g.reduce(np.maximum if c == "peak_import_kw" else np.add, v)
    return out


def kpis_of(sp: Cols, by: str = "site", period: str | tuple[Any, Any] = "month", *, tce_method: str = "calorific",
            onsite_renewables: str = "excluded") -> pd.DataFrame:
    """The rest of :func:`rollup`: the grouping's sums and every KPI from per (site, period) sums."""
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    if tce_method not in TCE_METHODS:
        raise AccountingError(f"tce_method: expected one of {list(TCE_METHODS)}; found {tce_method!r}")
    if onsite_renewables not in ONSITE_RE:
        raise AccountingError(f"onsite_renewables: expected one of {list(ONSITE_RE)}; found {onsite_renewables!r}")
    if not sp:
        raise AccountingError("no days to roll up")
    o = {"key" if k == "site" else k: v for k, v in sp.items()} if by == "site" else _grouped(sp, by)
    cols = _Cols({"by": np.full(len(o["key"]), by, dtype=object), **o})
    _derive(cols, tce_method, onsite_renewables)
    _ratios(cols, period)
    return cols.frame()


def period_codes(dates: np.ndarray, period: str | tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the local periods of ``dates`` (local days, datetime64), in order, and each
    date's index among them: ``2024``, ``2024-06``, ``2024-06-01``, or ``start..end`` for a range."""
    if isinstance(period, tuple) and len(period) == 2:
        return np.array([f"{period[0]}..{period[1]}"], dtype=object), np.zeros(len(dates), dtype=np.int64)
    if not isinstance(period, str) or period not in _UNIT:
        raise AccountingError(f"period: expected 'day', 'month', 'year' or (start, end) local dates; found {period!r}")
    uniq, inv = np.unique(np.asarray(dates, dtype="datetime64[ns]").astype(f"datetime64[{_UNIT[period]}]"),
                          return_inverse=True)
    return np.array([str(u) for u in uniq], dtype=object), inv.astype(np.int64)


def _select(daily: pd.DataFrame, by: str, period: str | tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``daily`` to roll up (boundary, date range), their periods' labels and codes."""
    if by not in BY:
        raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
    keep = np.ones(len(daily), dtype=bool)
    if by != "site" and "in_boundary" in daily:
        keep &= daily["in_boundary"].to_numpy(dtype=bool)
    dates = daily["date"].to_numpy("datetime64[ns]")
    if isinstance(period, tuple):
        if len(period) != 2:
            raise AccountingError(f"period: expected (start, end) local dates; found {period!r}")
        lo, hi = (np.datetime64(pd.Timestamp(x).date(), "ns") for x in period)
        keep &= (dates >= lo) & (dates <= hi)
    rows = np.flatnonzero(keep)
    names, inv = period_codes(dates[rows], period)
    return rows, names, inv


class _Groups:
    """Rows grouped by an integer code: the order that brings each group together, where each
    group starts in it, and the codes of the groups (sorted)."""

    def __init__(self, code: np.ndarray) -> None:
        self.codes, g = np.unique(code, return_inverse=True)
        self.order = np.argsort(g, kind="stable")
        self.starts = np.flatnonzero(np.r_[True, np.diff(g[self.order]) != 0]) if len(g) else np.zeros(0, np.int64)
        self.ends = np.r_[self.starts[1:], len(g)] - 1 if len(g) else np.zeros(0, np.int64)
        self.of_row = g

    def __len__(self) -> int:
        return len(self.codes)

    def reduce(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        """``ufunc`` over each group's rows (2-D: per column), in row order."""
        if not len(self):
            return np.zeros((0, *values.shape[1:]), dtype=values.dtype)
        out: np.ndarray = ufunc.reduceat(values[self.order], self.starts, axis=0)
        return out

    def last(self, values: np.ndarray) -> np.ndarray:
        out: np.ndarray = values[self.order][self.ends]
        return out


def _sums(frame: pd.DataFrame, columns: list[str], rows: np.ndarray, groups: _Groups) -> Cols:
    """Sums per group of numeric columns (integers stay integers)."""
    out: Cols = {}
    kinds = dict(zip(frame.columns, (t.kind for t in frame.dtypes), strict=True))
    for kind in ("f", "i"):
        cs = [c for c in columns if (kinds[c] in "iub") == (kind == "i")]
        if cs:
            m = frame[cs].to_numpy(dtype=np.float64 if kind == "f" else np.int64)[rows]
            out |= dict(zip(cs, groups.reduce(np.add, m).T, strict=True))
    return {c: out[c] for c in columns}


def _site_periods(d: pd.DataFrame, rows: np.ndarray, names: np.ndarray, inv: np.ndarray, by: str) -> Cols:
    """Per (site, period) sums; money in the site's currency (site rows) or converted (other groupings)."""
    add = list(dict.fromkeys([c for c in (*FLOWS, *ADDITIVE_EXTRA) if c in d]
                             + [c for c in d if c.startswith("import_") and c.endswith("_kwh")]))
    su, sc = np.unique(d["site"].to_numpy(dtype=object)[rows], return_inverse=True)
    g = _Groups(sc.astype(np.int64) * max(len(names), 1) + inv)
    out: Cols = {"site": su[g.codes // max(len(names), 1)], "period": names[g.codes % max(len(names), 1)]}
    out |= _sums(d, add, rows, g)
    money = list(MONEY) if by == "site" else [f"{c}_rep" for c in MONEY]
    out |= dict(zip(MONEY, _sums(d, money, rows, g).values(), strict=True))
    out["currency"] = _one_currency(d["currency" if by == "site" else "reporting_currency"].to_numpy(dtype=object)[rows],
                                    g, out)
    out["peak_import_kw"] = g.reduce(np.maximum, d["peak_import_kw"].to_numpy(dtype=float)[rows])
    day = d["date"].to_numpy("datetime64[D]").astype(np.int64)[rows]
    span = int(day.max() - day.min() + 1) if len(day) else 1
    pairs = np.unique(g.of_row.astype(np.int64) * span + (day - (day.min() if len(day) else 0)))
    out["days"] = np.bincount(pairs // span, minlength=len(g)).astype(np.int64)
    for c in _LAST:
        out[c] = g.last(d[c].to_numpy()[rows])
    ib = d["in_boundary"].to_numpy(dtype=bool)[rows] if "in_boundary" in d else np.ones(len(rows), dtype=bool)
    out["in_boundary"] = g.reduce(np.logical_and, ib)
    return out


def _one_currency(cur: np.ndarray, g: _Groups, out: Cols) -> np.ndarray:
    """The currency of each group, refusing a group that holds amounts in more than one."""
    codes, names = pd.factorize(cur)
    lo, hi = g.reduce(np.minimum, codes), g.reduce(np.maximum, codes)
    if (lo != hi).any():
        i = int(np.flatnonzero(lo != hi)[0])
        raise AccountingError(f"refusing to add {sorted(set(names[[lo[i], hi[i]]]))} in group "
                              f"{(out['site'][i], out['period'][i])!r}: expected one currency; convert with fx rates first")
    first: np.ndarray = np.asarray(names, dtype=object)[g.last(codes)] if len(g) else np.zeros(0, dtype=object)
    return first


def _grouped(sp: Cols, by: str) -> Cols:
    """Sums of the (site, period) rows per (``by`` value, period)."""
    skip = ("site", "period", "company", "park", "group", "hours", "days", "currency", "in_boundary")
    keys, kc = np.unique(sp[by], return_inverse=True)
    pnames, pc = np.unique(sp["period"], return_inverse=True)
    g = _Groups(kc.astype(np.int64) * max(len(pnames), 1) + pc)
    out: Cols = {"key": keys[g.codes // max(len(pnames), 1)], "period": pnames[g.codes % max(len(pnames), 1)]}
    for c, v in sp.items():
        if c not in skip:
            out[c] = g.reduce(np.add, v)
    out["hours"] = g.reduce(np.maximum, sp["hours"])
    out["days"] = g.reduce(np.maximum, sp["days"])
    out["sites"] = np.diff(np.r_[g.starts, len(g.order)]).astype(np.int64)  # one row per site and period
    out["currency"] = sp["currency"][g.order][g.starts] if len(g) else np.zeros(0, dtype=object)
    return out


class _Cols:
    """Derived columns collected apart and joined once (no fragmented frame)."""

    def __init__(self, base: Cols) -> None:
        self.base = base
        self.new: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.new[key] if key in self.new else self.base[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.new[key] = value

    def frame(self) -> pd.DataFrame:
        n = len(self.base["key"])
        cols = {k: v for k, v in self.base.items() if k not in self.new}
        cols |= {k: (v if np.ndim(v) else np.full(n, v)) for k, v in self.new.items()}
        out = pd.DataFrame(cols)
        if self.base["by"][:1].tolist() == ["site"]:  # a site's own currency, as the daily frame holds it
            out["currency"] = out["currency"].astype(object)
        return out


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


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    an, bn = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = np.full(len(an), np.nan)
    np.divide(an, bn, out=out, where=bn != 0)
    return out


_INTENSITIES = (
    ("total_tce", "tce_per_10k_rmb"), ("total_excl_re_tce", "tce_excl_re_per_10k_rmb"),
    ("grid_import_kwh", "grid_import_kwh_per_10k_rmb"), ("electricity_consumed_kwh", "electricity_kwh_per_10k_rmb"),
    ("steam_gj", "steam_gj_per_10k_rmb"), ("natural_gas_m3", "natural_gas_m3_per_10k_rmb"),
    ("diesel_kg", "diesel_kg_per_10k_rmb"), ("gasoline_kg", "gasoline_kg_per_10k_rmb"),
    ("scope12_location_t", "scope12_location_intensity_t_per_10k_rmb"),
    ("scope12_market_t", "scope12_market_intensity_t_per_10k_rmb"),
)


def _ratios(o: _Cols, period: str | tuple[Any, Any]) -> None:
    """Shares, intensities and the energy-saving rate (in place); NaN where a denominator is zero, with a note."""
    o["green_share"] = _div(o["green_kwh"], o["electricity_consumed_kwh"])
    o["self_consumption"] = _div(o["pv_consumed_kwh"], o["pv_generated_kwh"])
    o["self_sufficiency"] = 1.0 - _div(o["grid_import_kwh"], o["electricity_consumed_kwh"])
    o["load_factor"] = _div(o["grid_import_kwh"], o["peak_import_kw"] * o["hours"])
    o["battery_efc"] = _div(o["battery_discharge_kwh"], o["battery_capacity_kwh"])
    o["residual_factor"] = _div(o["scope2_electricity_market_kg"], o["grid_import_kwh"] - o["market_covered_kwh"] + o["pv_sold_counted_kwh"])
    out10k = o["output_rmb"] / 1e4
    for num, name in _INTENSITIES:
        o[name] = _div(o[num], out10k)
    o["intensity_note"] = np.where(o["output_rmb"] > 0, "", "output value is zero or not metered: intensities are not defined")
    o["green_share_note"] = np.where(o["electricity_consumed_kwh"] > 0, "", "no electricity consumed: share not defined")
    o["self_consumption_note"] = np.where(o["pv_generated_kwh"] > 0, "", "no PV generation")
    o["tce_per_10k_rmb_last_year"] = last = _last_year(o["key"], o["period"], o["tce_per_10k_rmb"], period)
    o["energy_saving_rate"] = 1.0 - _div(o["tce_per_10k_rmb"], last)


def _last_year(key: np.ndarray, label: np.ndarray, value: np.ndarray, period: str | tuple[Any, Any]) -> np.ndarray:
    """``value`` of the same key and period a year before (NaN where it is not in the rows)."""
    if period not in ("day", "month", "year"):
        return np.full(len(key), np.nan)
    at = dict(zip(zip(key.tolist(), label.tolist(), strict=True), value.tolist(), strict=True))
    prev = [(k, f"{int(p[:4]) - 1:04d}{p[4:]}") for k, p in zip(key.tolist(), label.tolist(), strict=True)]
    return np.array([at.get(kp, np.nan) for kp in prev], dtype=float)
