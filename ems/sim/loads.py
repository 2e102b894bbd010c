"""Electrical loads: production calendar and the load of each end use.

All functions are pure: they take local step times (interval midpoints in the
site's zone), weather arrays and the site's load settings, and return power per
step [kW]. Random noise comes in as arrays drawn by the caller.

Models
------
* production: ``peak_kw * (idle + (1 - idle) * running)`` x noise
* base: ``kw * (0.85 + 0.3 * daytime)`` with ``daytime`` a smooth 7-19 h bump
* hvac: ``cooling_kw_per_degc * max(T - T_cool, 0) + heating_kw_per_degc *
  max(T_heat - T, 0)`` (degree-hours), capped at ``max_kw``, in shifts only if
  ``occupied_only``
* compressed air: ``kw * (leakage + (1 - leakage) * running)``
* electrified fleet: charging 22:00-06:00 after each workday, flat power so the
  year sums to ``electrified_fleet_kwh_per_year``

When ``annual_kwh`` is given, a component is scaled so that its noise-free
profile over a reference calendar year (hourly, monthly-mean temperatures)
sums to it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pandas as pd

from ems.model.site import Calendar, Loads
from ems.sim.clock import local_day_hour

__all__ = [
    "END_USES",
    "base_kw",
    "compressed_air_kw",
    "fleet_charging_kw",
    "hvac_kw",
    "production_kw",
    "running_fraction",
    "scale_to_annual",
    "workdays",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

END_USES = ("production", "base", "hvac", "compressed_air", "electrified")
"""Load end uses, in meter order (meter id ``load-<end use>``)."""


def workdays(dates: pd.DatetimeIndex, cal: Calendar) -> BoolArray:
    """Whether each local date is a production day [-].

    A day works when its weekday is in ``workdays`` and it is neither a holiday
    nor inside a shutdown.
    """
    day, _hour = local_day_hour(dates)
    if len(day) == 0:
        return np.zeros(0, dtype=bool)
    d0 = int(day.min())
    out: BoolArray = _workday_table(d0, int(day.max()), cal)[day - d0]
    return out


def _workday_table(d0: int, d1: int, cal: Calendar) -> BoolArray:
    """Production day flags of the days ``d0..d1`` [days since 1970-01-01]."""
    days = np.arange(d0, d1 + 1, dtype=np.int64)
    weekday_ok = np.zeros(7, dtype=bool)
    weekday_ok[list(cal.workdays)] = True
    ok: BoolArray = weekday_ok[(days + 3) % 7]  # 1970-01-01 was a Thursday (3)
    if cal.holidays:
        ok &= ~np.isin(days, np.array(cal.holidays, dtype="datetime64[D]").astype(np.int64))
    for s in cal.shutdowns:
        start, end = (np.datetime64(x, "D").astype(np.int64) for x in (s.start, s.end))
        ok &= ~((days >= start) & (days <= end))
    return ok


def running_fraction(mid_local: pd.DatetimeIndex, cal: Calendar) -> FloatArray:
    """1 where production runs (in a shift of a production day), else 0 [-].

    A shift wrapping midnight (``end_h < start_h``) belongs to the day it starts (the
    calendar day before, also across a change of daylight saving time).
    """
    today, yesterday, hour = _days_and_hours(mid_local, cal)
    run = np.zeros(len(mid_local), dtype=bool)
    for sh in cal.shifts:
        if sh.start_h <= sh.end_h:
            run |= today & (hour >= sh.start_h) & (hour < sh.end_h)
        else:
            run |= today & (hour >= sh.start_h)
            run |= yesterday & (hour < sh.end_h)
    out: FloatArray = run.astype(float)
    return out


def _days_and_hours(
    mid_local: pd.DatetimeIndex, cal: Calendar
) -> tuple[BoolArray, BoolArray, FloatArray]:
    """Whether each step's local date and the date before are production days; local hour."""
    day, hour = local_day_hour(mid_local)
    if len(day) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool), hour
    d0 = int(day.min()) - 1
    table = _workday_table(d0, int(day.max()), cal)
    return table[day - d0], table[day - d0 - 1], hour


def production_kw(running: FloatArray, peak_kw: float, idle_fraction: float) -> FloatArray:
    """Production lines [kW] from the running fraction [-]."""
    out: FloatArray = peak_kw * (idle_fraction + (1.0 - idle_fraction) * running)
    return out


def _daytime(mid_local: pd.DatetimeIndex) -> FloatArray:
    _day, hour = local_day_hour(mid_local)
    out: FloatArray = np.clip(np.sin(np.pi * (hour - 7.0) / 12.0), 0.0, None)
    return out


def base_kw(mid_local: pd.DatetimeIndex, kw: float) -> FloatArray:
    """Lighting, IT and offices [kW]: ``kw`` with a daytime bump."""
    out: FloatArray = kw * (0.85 + 0.3 * _daytime(mid_local))
    return out


def hvac_kw(
    temp_air: FloatArray,
    occupied: FloatArray,
    cooling_kw_per_degc: float,
    heating_kw_per_degc: float,
    cooling_setpoint_c: float,
    heating_setpoint_c: float,
    max_kw: float | None,
    occupied_only: bool,
) -> FloatArray:
    """HVAC electricity [kW] by degree-hours of the air temperature [degC]."""
    p = cooling_kw_per_degc * np.clip(temp_air - cooling_setpoint_c, 0.0, None)
    p = p + heating_kw_per_degc * np.clip(heating_setpoint_c - temp_air, 0.0, None)
    if max_kw is not None:
        p = np.minimum(p, max_kw)
    if occupied_only:
        p = p * occupied
    out: FloatArray = np.asarray(p, dtype=float)
    return out


def compressed_air_kw(running: FloatArray, kw: float, leakage_fraction: float) -> FloatArray:
    """Compressors [kW]: production-driven share plus leakage."""
    out: FloatArray = kw * (leakage_fraction + (1.0 - leakage_fraction) * running)
    return out


def _charging_window(mid_local: pd.DatetimeIndex, cal: Calendar) -> FloatArray:
    today, yesterday, hour = _days_and_hours(mid_local, cal)
    win = (today & (hour >= 22.0)) | (yesterday & (hour < 6.0))
    out: FloatArray = win.astype(float)
    return out


def fleet_charging_kw(
    mid_local: pd.DatetimeIndex, cal: Calendar, kwh_per_year: float, window_h_per_year: float
) -> FloatArray:
    """Electric forklift charging [kW]: flat power in the night window after workdays.

    Parameters
    ----------
    window_h_per_year : float [h]
        Charging-window hours in the reference year (power = kWh / hours).
    """
    if kwh_per_year <= 0 or window_h_per_year <= 0:
        return np.zeros(len(mid_local))
    out: FloatArray = _charging_window(mid_local, cal) * (kwh_per_year / window_h_per_year)
    return out


def reference_year(year: int, tz: str) -> pd.DatetimeIndex:
    """Hourly midpoints of local calendar ``year`` (the basis of ``annual_*`` scaling)."""
    t0 = pd.Timestamp(dt.date(year, 1, 1)).tz_localize(tz)
    t1 = pd.Timestamp(dt.date(year + 1, 1, 1)).tz_localize(tz)
    n = int((t1 - t0) / pd.Timedelta(hours=1))
    return pd.date_range(
        t0.tz_convert("UTC") + pd.Timedelta(minutes=30), periods=n, freq="h"
    ).tz_convert(tz)


def scale_to_annual(p: FloatArray, ref: FloatArray, annual_kwh: float | None) -> FloatArray:
    """Scale a load ``p`` [kW] so that its reference-year profile ``ref`` sums to ``annual_kwh``.

    Parameters
    ----------
    p : ndarray [kW]
        The load at the steps.
    ref : ndarray [kW]
        The same load, noise-free, at the hourly midpoints of the reference year
        (:func:`reference_year`): its sum is the year's energy [kWh].
    annual_kwh : float or None [kWh]
        The year's energy to match; None (or a reference year without energy): ``p`` as it is.

    Returns
    -------
    ndarray [kW]
    """
    if annual_kwh is None:
        return p
    e = float(np.sum(ref))  # hourly reference: kW x 1 h
    return p * (annual_kwh / e) if e > 0 else p


def _unscaled_kw(
    loads: Loads, local: pd.DatetimeIndex, temp_air: FloatArray, running: FloatArray
) -> dict[str, tuple[FloatArray, float | None]]:
    """Noise-free, unscaled power [kW] of every modelled end use the site has, and its ``annual_kwh``.

    Parameters
    ----------
    loads : Loads
    local : DatetimeIndex
        Local times (step or reference-year midpoints).
    temp_air : ndarray [degC]
        Air temperature at those times.
    running : ndarray [-]
        Running fraction at those times (:func:`running_fraction`).

    Returns
    -------
    dict
        ``end use -> (power [kW], annual_kwh [kWh] or None)`` in :data:`END_USES` order, without
        the electrified fleet (its power is set by its yearly energy, :func:`fleet_charging_kw`).
    """
    out: dict[str, tuple[FloatArray, float | None]] = {}
    if (pl := loads.production) is not None:
        out["production"] = (production_kw(running, pl.peak_kw, pl.idle_fraction), pl.annual_kwh)
    if (b := loads.base) is not None:
        out["base"] = (base_kw(local, b.kw), b.annual_kwh)
    if (h := loads.hvac) is not None:
        p = hvac_kw(
            temp_air,
            running,
            h.cooling_kw_per_degc,
            h.heating_kw_per_degc,
            h.cooling_setpoint_c,
            h.heating_setpoint_c,
            h.max_kw,
            h.occupied_only,
        )
        out["hvac"] = (p, h.annual_kwh)
    if (c := loads.compressed_air) is not None:
        out["compressed_air"] = (compressed_air_kw(running, c.kw, c.leakage_fraction), c.annual_kwh)
    return out


def electrical_loads(
    mid_local: pd.DatetimeIndex,
    temp_air: FloatArray,
    loads: Loads,
    noise: Callable[[str], FloatArray],
    ref_local: pd.DatetimeIndex,
    ref_temp: FloatArray,
) -> dict[str, FloatArray]:
    """Power of every end use present [kW], scaled and with noise.

    Parameters
    ----------
    mid_local : DatetimeIndex
        Step midpoints, local.
    temp_air : ndarray [degC]
    loads : Loads
    noise : callable
        ``noise(end_use)`` returns a multiplicative noise array (mean about 1)
        for the steps; it is called once per end use present, in
        :data:`END_USES` order.
    ref_local, ref_temp : DatetimeIndex, ndarray [degC]
        Hourly reference year and its noise-free temperature for ``annual_kwh``.

    Returns
    -------
    dict
        ``end use -> power [kW]``; only the end uses the site has.
    """
    cal = loads.calendar
    now = _unscaled_kw(loads, mid_local, temp_air, running_fraction(mid_local, cal))
    ref = _unscaled_kw(loads, ref_local, ref_temp, running_fraction(ref_local, cal))
    out = {
        use: scale_to_annual(p, ref[use][0], annual) * noise(use)
        for use, (p, annual) in now.items()
    }
    if loads.electrified_fleet_kwh_per_year > 0:
        win_h = float(np.sum(_charging_window(ref_local, cal)))
        out["electrified"] = fleet_charging_kw(
            mid_local, cal, loads.electrified_fleet_kwh_per_year, win_h
        )
    return {k: np.clip(v, 0.0, None) for k, v in out.items()}
