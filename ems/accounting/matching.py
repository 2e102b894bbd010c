"""Hourly matching of green supply to use (24/7 carbon-free energy), per site.

Pure functions over a site's hourly frame (hour starts in UTC as index; energies [kWh] of
each hour, from the register aggregates of stage 1). The annual rule (``docs/kpis.md``,
section 5) pools a whole period: PV consumed, contracts and certificates each count against
the period's consumption. Hourly matching counts a supply only against the use of the hour
in which it was generated (EnergyTag granular certificates; the 24/7 CFE score; the GHG
Protocol's proposed revision of its Scope 2 Guidance).

Steps for one site (each a function below)
------------------------------------------
1. :func:`site_flows`: who supplied whom in each hour. ``load = import + pv + chp +
   discharge - charge - export`` (end uses); PV consumed goes to the load first, its surplus
   charges the battery; the rest of the charge comes from the grid (or CHP). The load is then
   served by the battery, CHP, and the grid.
2. :func:`track_battery`: green and non-green energy through the state of charge. The
   battery is one pool of two colours mixed in proportion; energy charged from PV is green,
   energy charged from the grid (or CHP) is not and never becomes green. A discharge of ``d``
   takes ``d / rte`` from the pool (``rte``: round-trip efficiency), in the pool's proportion;
   the difference is the loss, consumption of that colour, counted in the hour of discharge.
   Energy in the battery before the data begins has no known origin and counts as not green
   (:func:`initial_content` estimates it).
3. :func:`match_hours`: the **use** of an hour is its load plus the battery losses counted
   in it. Green on-site supply (PV to load, green battery output and its losses) is green.
   Contracts with a delivery profile, then granular certificates of the hour, cover what
   the grid supplied directly to the load in that hour, never more (a surplus in one hour
   does not move to another). Grid energy that went into the battery stays unmatched.
4. :func:`period_kpis`: sums per local day, month or year, plus the battery pool's change
   over the period by colour (so a period's use is its electricity consumed as the annual rule
   counts it, and days add up to years); the hourly CFE score and, from the same hours pooled
   over the period, the annual-matched share (annual certificates spread by
   :func:`spread_by_weight`, counted here only); hourly and annual Scope 2 side by side.

The hourly-matched share is never above the annual-matched one (a sum of hourly minima is
never above the minimum of the sums) and both are equal when supply and use have the same
shape.

References
----------
EnergyTag, Granular Certificate Scheme Standard (2024); GHG Protocol, Scope 2 Guidance (2015)
and its proposed revision (public consultation October to December 2025: hourly matching
within a deliverable market boundary); Google, "24/7 by 2030: Realizing a carbon-free
future" (2020, the CFE score).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ems.errors import AccountingError

__all__ = [
    "ADDITIVE",
    "FLOW_INPUTS",
    "battery_inputs",
    "initial_content",
    "match_hours",
    "month_hour_table",
    "period_kpis",
    "period_labels",
    "ratios",
    "round_trip_efficiency",
    "scope2_hourly",
    "site_flows",
    "spread_by_weight",
    "spread_over",
    "track_battery",
]

FLOW_INPUTS = (
    "grid_import_kwh", "grid_export_kwh", "pv_generated_kwh", "pv_exported_kwh",
    "chp_generated_kwh", "battery_charge_kwh", "battery_discharge_kwh",
)
"""Columns :func:`site_flows` reads (absent ones are 0; ``pv_exported_kwh`` defaults to
``min(grid export, PV)`` of the hour)."""

_BATTERY = ("out_green_kwh", "out_other_kwh", "loss_green_kwh", "loss_other_kwh", "stored_green_kwh", "stored_other_kwh")


def _col(h: pd.DataFrame, name: str) -> np.ndarray:
    if name in h:
        v: np.ndarray = h[name].to_numpy(dtype=float)
        if np.isnan(v).any() or (v < 0).any():
            raise AccountingError(f"hourly frame: column {name!r}: expected kWh >= 0; found NaN or a negative value")
        return v
    return np.zeros(len(h))


def site_flows(hourly: pd.DataFrame) -> pd.DataFrame:
    """Split each hour's energy of a site into who supplied whom.

    Parameters
    ----------
    hourly : DataFrame
        Index: hour starts (tz-aware); columns from :data:`FLOW_INPUTS` [kWh].

    Returns
    -------
    DataFrame
        Same index; ``consumed_kwh`` (import + PV + CHP - export, the annual rule's
        consumption), ``load_kwh``, ``pv_to_load_kwh``, ``pv_to_battery_kwh``,
        ``grid_to_battery_kwh``, ``other_to_battery_kwh`` (CHP), ``battery_to_load_kwh``,
        ``battery_exported_kwh``, ``chp_to_load_kwh``, ``grid_to_load_kwh``,
        ``grid_import_kwh``, ``battery_discharge_kwh`` [kWh].
    """
    imp, exp, pv = _col(hourly, "grid_import_kwh"), _col(hourly, "grid_export_kwh"), _col(hourly, "pv_generated_kwh")
    chp, ch, dis = _col(hourly, "chp_generated_kwh"), _col(hourly, "battery_charge_kwh"), _col(hourly, "battery_discharge_kwh")
    pvx = _col(hourly, "pv_exported_kwh") if "pv_exported_kwh" in hourly else np.minimum(exp, pv)
    load = np.clip(imp + pv + chp + dis - ch - exp, 0.0, None)
    pv_cons = np.clip(pv - pvx, 0.0, None)
    pv_load = np.minimum(pv_cons, load)
    pv_batt = np.minimum(pv_cons - pv_load, ch)
    grid_batt = np.minimum(ch - pv_batt, imp)
    rest = load - pv_load
    batt_load = np.minimum(dis, rest)
    rest = rest - batt_load
    chp_load = np.minimum(chp, rest)
    grid_load = np.clip(rest - chp_load, 0.0, None)
    return pd.DataFrame({
        "consumed_kwh": np.clip(imp + pv + chp - exp, 0.0, None),
        "load_kwh": load,
        "pv_to_load_kwh": pv_load,
        "pv_to_battery_kwh": pv_batt,
        "grid_to_battery_kwh": grid_batt,
        "other_to_battery_kwh": ch - pv_batt - grid_batt,
        "battery_to_load_kwh": batt_load,
        "battery_exported_kwh": dis - batt_load,
        "chp_to_load_kwh": chp_load,
        "grid_to_load_kwh": grid_load,
        "grid_import_kwh": imp,
        "battery_discharge_kwh": dis,
    }, index=hourly.index)


def round_trip_efficiency(charge_kwh: float, discharge_kwh: float, stored_change_kwh: float = 0.0) -> float:
    """Round-trip efficiency from a period's totals: ``discharge / (charge - stored change)``.

    Parameters
    ----------
    charge_kwh, discharge_kwh : float [kWh]
        AC energy into and out of the battery over the period.
    stored_change_kwh : float [kWh]
        Energy stored at the end minus at the start (from the state of charge), if known.

    Returns
    -------
    float [-]
        Clipped to ``[0.5, 1.0]``; 1.0 when the battery did not cycle.
    """
    net_in = charge_kwh - stored_change_kwh
    if discharge_kwh <= 0 or net_in <= 0:
        return 1.0
    return float(min(max(discharge_kwh / net_in, 0.5), 1.0))


def initial_content(charged: np.ndarray, out: np.ndarray, rte: float) -> float:
    """The least energy the battery must have held before the first hour for its discharges [kWh].

    ``max(0, max over hours of (sum of out / rte - sum of charged))``, charge before discharge
    within an hour: what the readings show leaving the battery that they never show entering
    it. Its origin is unknown, so :func:`track_battery` counts it not green.

    Parameters
    ----------
    charged, out : array [kWh]
        AC energy charged (any origin) and discharged in each hour.
    rte : float [-]
        Round-trip efficiency.
    """
    need = np.cumsum(np.asarray(out, dtype=float) / rte - np.asarray(charged, dtype=float))
    return float(max(need.max(initial=0.0), 0.0))


def track_battery(
    green_in: np.ndarray,
    other_in: np.ndarray,
    out: np.ndarray,
    rte: float,
    initial_kwh: float = 0.0,
) -> pd.DataFrame:
    """Green and non-green energy through a battery's state of charge, hour by hour.

    Within an hour the charge is taken in before the discharge is taken out.

    Parameters
    ----------
    green_in, other_in : array [kWh]
        AC energy charged from PV (green) and from the grid or CHP (not green) in each hour.
    out : array [kWh]
        AC energy discharged in each hour.
    rte : float [-]
        Round-trip efficiency (see :func:`round_trip_efficiency`), in (0, 1].
    initial_kwh : float [kWh]
        Energy in the battery when the data begins (charge side), origin unknown: not green.

    Returns
    -------
    DataFrame
        Per hour: ``out_green_kwh``, ``out_other_kwh`` (discharged energy by origin),
        ``loss_green_kwh``, ``loss_other_kwh`` (losses counted at discharge), and the pool at
        the end of the hour ``stored_green_kwh``, ``stored_other_kwh`` [kWh, charge side].
    """
    if not 0.0 < rte <= 1.0:
        raise AccountingError(f"track_battery: expected a round-trip efficiency in (0, 1]; found {rte}")
    n = len(out)
    res = np.zeros((n, 6))
    g, o = 0.0, float(initial_kwh)
    gi, oi, d = np.asarray(green_in, float).tolist(), np.asarray(other_in, float).tolist(), np.asarray(out, float).tolist()
    for i in range(n):
        g += gi[i]
        o += oi[i]
        need = d[i] / rte
        if need > 0.0:
            tot = g + o
            take = need if need < tot else tot
            tg = take * g / tot if tot > 0.0 else 0.0
            to = need - tg  # includes any shortfall: energy stored before the data, not green
            g -= tg
            o = max(o - (take - tg), 0.0)
            res[i, 0], res[i, 1] = tg * rte, to * rte
            res[i, 2], res[i, 3] = tg - tg * rte, to - to * rte
        res[i, 4], res[i, 5] = g, o
    return pd.DataFrame(res, columns=list(_BATTERY))


def battery_inputs(flows: pd.DataFrame, pv_sold_share: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Green and non-green energy charged in each hour, for :func:`track_battery`.

    Parameters
    ----------
    flows : DataFrame
        From :func:`site_flows`.
    pv_sold_share : array [-], optional
        Share of each hour's PV whose certificates were sold (that PV is not green).

    Returns
    -------
    green_in, other_in : array [kWh]
    """
    share = _share(pv_sold_share, len(flows))
    pv_in = flows["pv_to_battery_kwh"].to_numpy()
    other = flows["grid_to_battery_kwh"].to_numpy() + flows["other_to_battery_kwh"].to_numpy()
    return pv_in * (1.0 - share), other + pv_in * share


def _share(x: np.ndarray | None, n: int) -> np.ndarray:
    if x is None:
        return np.zeros(n)
    v = np.asarray(x, dtype=float)
    if v.shape != (n,) or np.isnan(v).any() or (v < 0).any() or (v > 1).any():
        raise AccountingError(f"pv_sold_share: expected {n} hourly shares in [0, 1]; found shape {v.shape}")
    return v


def match_hours(
    flows: pd.DataFrame,
    battery: pd.DataFrame | None = None,
    contract_kwh: np.ndarray | pd.Series | None = None,
    granular_kwh: np.ndarray | pd.Series | None = None,
    pv_sold_share: np.ndarray | None = None,
    initial_kwh: float = 0.0,
) -> pd.DataFrame:
    """Match green supply to each hour's use (see the module docs).

    Parameters
    ----------
    flows : DataFrame
        From :func:`site_flows`.
    battery : DataFrame, optional
        From :func:`track_battery` over the same hours (none: the site has no battery).
    initial_kwh : float [kWh]
        Energy in the battery before the first hour (not green), as given to :func:`track_battery`.
    contract_kwh : array [kWh], optional
        Deliveries of contracts (PPAs, green-power trades) in each hour, by their profiles.
    granular_kwh : array [kWh], optional
        Granular certificates generated in each hour (within the site's market boundary).
    pv_sold_share : array [-], optional
        Share of each hour's PV whose certificates were sold: that PV is used on site but is
        not green (give the same shares to :func:`battery_inputs`).

    Returns
    -------
    DataFrame
        Same index as ``flows``; additive columns [kWh]: ``use_kwh``, ``green_onsite_kwh``,
        ``grid_origin_use_kwh``, ``onsite_other_use_kwh`` (CHP, PV whose certificates were
        sold), ``contract_kwh``, ``granular_kwh``,
        ``contract_matched_kwh``, ``granular_matched_kwh``, ``matched_kwh``,
        ``unmatched_kwh``, ``consumed_kwh``, ``grid_import_kwh``, ``covered_import_kwh``,
        ``stored_green_change_kwh``, ``stored_other_change_kwh`` (the battery pool's change in the
        hour, charge side); and the pool at each hour's end (``stored_green_kwh``,
        ``stored_other_kwh``, not additive). An hour shows who served its load (the battery's
        output in the hour it is used); :func:`period_kpis` adds the pool's change over the
        period, so a period's use is its electricity consumed.
    """
    n = len(flows)
    b = _battery_frame(battery, n)
    out_g, out_o, loss_g, loss_o = _battery_to_load(flows, b)
    pv_load = flows["pv_to_load_kwh"].to_numpy()
    sold = _share(pv_sold_share, n) * pv_load
    grid_direct = flows["grid_to_load_kwh"].to_numpy()
    d = {"use_kwh": flows["load_kwh"].to_numpy() + loss_g + loss_o, "green_onsite_kwh": pv_load - sold + out_g + loss_g,
         "grid_origin_use_kwh": grid_direct + out_o + loss_o,
         "onsite_other_use_kwh": flows["chp_to_load_kwh"].to_numpy() + sold,
         **_instruments(_hourly(contract_kwh, n, "contract_kwh"), _hourly(granular_kwh, n, "granular_kwh"), grid_direct)}
    d["matched_kwh"] = d["green_onsite_kwh"] + d["covered_import_kwh"]
    d["unmatched_kwh"] = np.clip(d["use_kwh"] - d["matched_kwh"], 0.0, None)
    for c in ("consumed_kwh", "grid_import_kwh"):
        d[c] = flows[c].to_numpy()
    g, o = b["stored_green_kwh"].to_numpy(), b["stored_other_kwh"].to_numpy()
    d |= {"stored_green_change_kwh": np.diff(g, prepend=0.0), "stored_other_change_kwh": np.diff(o, prepend=float(initial_kwh)),
          "stored_green_kwh": g, "stored_other_kwh": o}
    return pd.DataFrame(d, index=flows.index)


def _instruments(con: np.ndarray, gran: np.ndarray, grid_direct: np.ndarray) -> dict[str, np.ndarray]:
    """Contracts, then granular certificates, against the grid's direct supply of each hour."""
    con_m = np.minimum(con, grid_direct)
    gran_m = np.minimum(gran, grid_direct - con_m)
    return {"contract_kwh": con, "granular_kwh": gran, "contract_matched_kwh": con_m, "granular_matched_kwh": gran_m,
            "covered_import_kwh": con_m + gran_m}


def _battery_to_load(flows: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Green and other battery output to the load (the exported part left out), and the losses."""
    dis = flows["battery_discharge_kwh"].to_numpy()
    to_load = np.divide(flows["battery_to_load_kwh"].to_numpy(), dis, out=np.zeros(len(dis)), where=dis > 0)
    return (b["out_green_kwh"].to_numpy() * to_load, b["out_other_kwh"].to_numpy() * to_load,
            b["loss_green_kwh"].to_numpy(), b["loss_other_kwh"].to_numpy())


def _battery_frame(battery: pd.DataFrame | None, n: int) -> pd.DataFrame:
    if battery is None:  # no battery: nothing in, out or stored
        return pd.DataFrame(np.zeros((n, len(_BATTERY))), columns=list(_BATTERY))
    if len(battery) != n:
        raise AccountingError(f"match_hours: expected battery rows for the {n} hours of flows; found {len(battery)}")
    return battery


def _hourly(x: np.ndarray | pd.Series | None, n: int, name: str) -> np.ndarray:
    if x is None:
        return np.zeros(n)
    v = np.asarray(x, dtype=float)
    if v.shape != (n,) or np.isnan(v).any() or (v < 0).any():
        raise AccountingError(f"match_hours: {name}: expected {n} hourly values >= 0; found shape {v.shape}")
    return v


def spread_by_weight(kwh: float, weights: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    """Spread an amount over the hours of ``[start, end)`` pro rata to a weight.

    The stated rule for annual (non-granular) certificates in the annual-matched figure: pro
    rata to the grid-origin use of each hour of the certificate's period; equally if that is 0.

    Parameters
    ----------
    kwh : float [kWh]
    weights : Series [kWh]
        Indexed by hour start (tz-aware).
    start, end : Timestamp
        The period (tz-aware), end excluded.

    Returns
    -------
    Series [kWh]
        Same index as ``weights``; 0 outside the period. Sums to ``kwh`` unless the period
        holds no hour of ``weights`` (then all 0).
    """
    hours = pd.DatetimeIndex(weights.index)
    return pd.Series(spread_over(kwh, weights.to_numpy(dtype=float), hours.as_unit("ns").asi8, start, end), index=weights.index)


def spread_over(kwh: float, weights: np.ndarray, hours_ns: np.ndarray, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """:func:`spread_by_weight` on arrays: ``hours_ns`` the hour starts [ns since the epoch, UTC]."""
    inside = (hours_ns >= pd.Timestamp(start).value) & (hours_ns < pd.Timestamp(end).value)
    w = np.where(inside, np.clip(weights, 0.0, None), 0.0)
    if w.sum() <= 0:
        w = inside.astype(float)
    total = w.sum()
    out: np.ndarray = kwh * w / total if total > 0 else w
    return out


def scope2_hourly(
    matched: pd.DataFrame,
    factors: pd.DataFrame,
    annual_average: float | np.ndarray,
    annual_residual: float | np.ndarray,
) -> pd.DataFrame:
    """Scope 2 of electricity hour by hour, hourly and annual factors side by side.

    Parameters
    ----------
    matched : DataFrame
        From :func:`match_hours` (``grid_import_kwh``, ``covered_import_kwh``).
    factors : DataFrame
        Same index; ``average_kg_per_kwh``, ``marginal_kg_per_kwh``, ``residual_kg_per_kwh``
        [kgCO2/kWh] (:func:`ems.accounting.intensity.factors_at`).
    annual_average, annual_residual : float or array [kgCO2/kWh]
        The factor set's annual grid average and residual mix (per hour where the hours span
        years); the residual also stands in for hours the series gives none.

    Returns
    -------
    DataFrame [kgCO2]
        ``scope2_location_hourly_kg`` (import x the hour's average), ``scope2_market_hourly_kg``
        (unmatched import x residual), ``scope2_marginal_kg`` (import x the hour's marginal; NaN
        where the series has none), ``scope2_location_annual_kg`` (import x annual average) and
        ``residual_weighted_kg`` (import x annual residual, for the annual market-based figure).
    """
    imp = matched["grid_import_kwh"].to_numpy()
    res_annual = np.broadcast_to(np.asarray(annual_residual, dtype=float), imp.shape)
    res = factors["residual_kg_per_kwh"].to_numpy()
    res = np.where(np.isnan(res), res_annual, res)
    return pd.DataFrame({
        "scope2_location_hourly_kg": imp * factors["average_kg_per_kwh"].to_numpy(),
        "scope2_market_hourly_kg": (imp - matched["covered_import_kwh"].to_numpy()) * res,
        "scope2_marginal_kg": imp * factors["marginal_kg_per_kwh"].to_numpy(),
        "scope2_location_annual_kg": imp * np.asarray(annual_average, dtype=float),
        "residual_weighted_kg": imp * res_annual,
    }, index=matched.index)


ADDITIVE = (
    "use_kwh", "green_onsite_kwh", "grid_origin_use_kwh", "onsite_other_use_kwh", "contract_kwh", "granular_kwh",
    "contract_matched_kwh", "granular_matched_kwh", "matched_kwh", "unmatched_kwh", "consumed_kwh",
    "stored_green_change_kwh", "stored_other_change_kwh", "grid_import_kwh", "covered_import_kwh", "annual_cert_kwh",
    "scope2_location_hourly_kg", "scope2_market_hourly_kg", "scope2_marginal_kg",
    "scope2_location_annual_kg", "residual_weighted_kg",
)
"""Columns of matched hours that add up over hours, periods and sites."""

_PERIOD_FORMAT = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}


def period_kpis(hourly: pd.DataFrame, tz: str, period: str | tuple[Any, Any]) -> pd.DataFrame:
    """Sum a site's matched hours per local period and compute the hourly and annual figures.

    Parameters
    ----------
    hourly : DataFrame
        :func:`match_hours` joined with :func:`scope2_hourly` (optional), and ``annual_cert_kwh``
        (annual certificates spread by :func:`spread_by_weight`; absent: none).
    tz : str
        The site's IANA zone (periods are its local calendar).
    period : str or (date, date)
        ``day``, ``month``, ``year`` or an inclusive range of local dates (one row ``start..end``).

    Returns
    -------
    DataFrame
        One row per period label: the sums of :data:`ADDITIVE`, ``annual_matched_kwh`` (the
        period's supplies pooled, capped per site and period), ``scope2_market_annual_kg``, and
        the ratios of :func:`ratios`.
    """
    names, s = period_sums(hourly, tz, period)
    return pd.DataFrame(s, index=pd.Index(names, name="period"))


def period_sums(hourly: pd.DataFrame, tz: str, period: str | tuple[Any, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`period_kpis` as arrays: the period labels and one array per column."""
    if isinstance(period, tuple):
        hourly, label = _in_range(hourly, tz, period)
        names, inv = np.unique(label, return_inverse=True) if len(label) else (np.array([], dtype=object), np.zeros(0, int))
    else:
        names, inv = _period_codes(hourly.index, tz, period)
    s = _sums(hourly, names, inv)
    _with_storage(s)
    instruments = s["contract_kwh"] + s["granular_kwh"] + s["annual_cert_kwh"]
    s["annual_matched_kwh"] = s["green_onsite_kwh"] + np.minimum(instruments, s["grid_origin_use_kwh"])
    imp = s["grid_import_kwh"]
    residual = np.divide(s["residual_weighted_kg"], imp, out=np.zeros(len(imp)), where=imp > 0)
    s["scope2_market_annual_kg"] = (imp - np.minimum(instruments, imp)) * residual
    _ratios(s)
    return names, s


def _sums(hourly: pd.DataFrame, names: np.ndarray, inv: np.ndarray) -> dict[str, np.ndarray]:
    """Sums of the :data:`ADDITIVE` columns per period (``inv``: each hour's index in ``names``;
    absent columns 0; a period with an hour of unknown marginal factor has no marginal figure)."""
    n = len(names)
    data: dict[str, np.ndarray] = {}
    for c in ADDITIVE:
        if c not in hourly:
            data[c] = np.zeros(n)
            continue
        v = hourly[c].to_numpy(dtype=float)
        nan = np.isnan(v)
        data[c] = np.bincount(inv, weights=np.where(nan, 0.0, v), minlength=n)
        if c == "scope2_marginal_kg" and nan.any():
            data[c][np.bincount(inv, weights=nan, minlength=n) > 0] = np.nan
    return data


def _with_storage(s: dict[str, np.ndarray]) -> None:
    """Count the battery pool's change over each period (in place): green energy stored in the
    period is green use of it, other energy stored is grid-origin use, so that a period's use is
    its electricity consumed whatever the battery holds at its ends."""
    dg, do = s["stored_green_change_kwh"], s["stored_other_change_kwh"]
    s["use_kwh"] = s["use_kwh"] + dg + do
    s["green_onsite_kwh"] = s["green_onsite_kwh"] + dg
    s["matched_kwh"] = s["matched_kwh"] + dg
    s["grid_origin_use_kwh"] = s["grid_origin_use_kwh"] + do
    s["unmatched_kwh"] = s["use_kwh"] - s["matched_kwh"]


def _in_range(hourly: pd.DataFrame, tz: str, period: tuple[Any, Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """The hours of an inclusive range of local dates, all labelled ``start..end``."""
    if len(period) != 2:
        raise AccountingError(f"period: expected (start, end) local dates; found {period!r}")
    lo, hi = (pd.Timestamp(x).date() for x in period)
    day = hourly.index.tz_convert(tz).date
    keep = (day >= lo) & (day <= hi)
    return hourly[keep], np.full(int(keep.sum()), f"{lo}..{hi}", dtype=object)


def period_labels(hours: pd.DatetimeIndex, tz: str, period: str) -> np.ndarray:
    """Local period label (``2024``, ``2024-06``, ``2024-06-01``) of each hour start."""
    names, inv = _period_codes(hours, tz, period)
    out: np.ndarray = names[inv]
    return out


def _period_codes(hours: pd.DatetimeIndex, tz: str, period: str) -> tuple[np.ndarray, np.ndarray]:
    """The local periods' labels, in order, and each hour's index among them."""
    if period not in _PERIOD_FORMAT:
        raise AccountingError(f"period: expected one of {list(_PERIOD_FORMAT)}; found {period!r}")
    local = hours.tz_convert(tz)
    y, m, d = local.year.to_numpy(), local.month.to_numpy(), local.day.to_numpy()
    key = {"year": y, "month": y * 100 + m, "day": (y * 100 + m) * 100 + d}[period].astype(np.int64)
    if not len(key):
        return np.array([], dtype=object), np.zeros(0, dtype=np.int64)
    lo = int(key.min())
    present = np.flatnonzero(np.bincount(key - lo))  # integer keys, in order, without sorting the hours
    where = np.full(int(key.max()) - lo + 1, -1, dtype=np.int64)
    where[present] = np.arange(len(present))
    names = np.array([_label(int(k) + lo, period) for k in present], dtype=object)
    return names, where[key - lo]


def _label(key: int, period: str) -> str:
    if period == "year":
        return f"{key:04d}"
    if period == "month":
        return f"{key // 100:04d}-{key % 100:02d}"
    return f"{key // 10000:04d}-{key // 100 % 100:02d}-{key % 100:02d}"


def ratios(s: pd.DataFrame) -> pd.DataFrame:
    """Shares and differences from summed columns (per site and period, or summed over sites).

    Adds ``cfe`` (hourly-matched share = matched / use), ``annual_matched_share``
    (annual matched / use), ``scope2_location_diff_kg`` and ``scope2_market_diff_kg`` (hourly -
    annual). Shares are NaN where there is no use.
    """
    d = {c: s[c].to_numpy(dtype=float) for c in s.columns}
    _ratios(d)
    return pd.DataFrame(d, index=s.index)


def _ratios(d: dict[str, np.ndarray]) -> None:
    """:func:`ratios` on arrays, in place."""
    use = d["use_kwh"]
    d["cfe"] = np.divide(d["matched_kwh"], use, out=np.full(len(use), np.nan), where=use > 0)
    d["annual_matched_share"] = np.divide(d["annual_matched_kwh"], use, out=np.full(len(use), np.nan), where=use > 0)
    d["scope2_location_diff_kg"] = d["scope2_location_hourly_kg"] - d["scope2_location_annual_kg"]
    d["scope2_market_diff_kg"] = d["scope2_market_hourly_kg"] - d["scope2_market_annual_kg"]


def month_hour_table(hourly: pd.DataFrame, tz: str, column: str) -> pd.DataFrame:
    """Sum a column of a site's hours by local month (rows 1-12) and local hour of day (columns 0-23).

    The table behind the heatmap of matched and unmatched energy: which hours of which months the
    green supply covers.

    Parameters
    ----------
    hourly : DataFrame
        From :func:`match_hours` (index: hour starts, tz-aware).
    tz : str
        The site's IANA zone.
    column : str
        E.g. ``matched_kwh`` or ``unmatched_kwh`` [kWh].

    Returns
    -------
    DataFrame
        12 x 24 [unit of the column]; months or hours without data are 0.
    """
    if column not in hourly:
        raise AccountingError(f"month_hour_table: expected a column {column!r}; found {list(hourly.columns)}")
    local = hourly.index.tz_convert(tz)
    t = hourly[column].groupby([np.asarray(local.month), np.asarray(local.hour)]).sum().unstack(fill_value=0.0)
    out: pd.DataFrame = t.reindex(index=range(1, 13), columns=range(24), fill_value=0.0)
    out.index.name, out.columns.name = "month", "hour"
    return out
