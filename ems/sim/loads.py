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
    run = running_fraction(mid_local, cal)
    ref_run = running_fraction(ref_local, cal)
    out: dict[str, FloatArray] = {}

    def scaled(p: FloatArray, ref: FloatArray, annual: float | None) -> FloatArray:
        if annual is None:
            return p
        e = float(np.sum(ref))  # hourly reference: kW x 1 h
        return p * (annual / e) if e > 0 else p

    if loads.production is not None:
        pl = loads.production
        p = production_kw(run, pl.peak_kw, pl.idle_fraction)
        ref = production_kw(ref_run, pl.peak_kw, pl.idle_fraction)
        out["production"] = scaled(p, ref, pl.annual_kwh) * noise("production")
    if loads.base is not None:
        b = loads.base
        out["base"] = scaled(
            base_kw(mid_local, b.kw), base_kw(ref_local, b.kw), b.annual_kwh
        ) * noise("base")
    if loads.hvac is not None:
        h = loads.hvac
        args = (
            h.cooling_kw_per_degc,
            h.heating_kw_per_degc,
            h.cooling_setpoint_c,
            h.heating_setpoint_c,
            h.max_kw,
            h.occupied_only,
        )
        p = hvac_kw(temp_air, run, *args)
        ref = hvac_kw(ref_temp, ref_run, *args)
        out["hvac"] = scaled(p, ref, h.annual_kwh) * noise("hvac")
    if loads.compressed_air is not None:
        c = loads.compressed_air
        p = compressed_air_kw(run, c.kw, c.leakage_fraction)
        ref = compressed_air_kw(ref_run, c.kw, c.leakage_fraction)
        out["compressed_air"] = scaled(p, ref, c.annual_kwh) * noise("compressed_air")
    if loads.electrified_fleet_kwh_per_year > 0:
        win_h = float(np.sum(_charging_window(ref_local, cal)))
        out["electrified"] = fleet_charging_kw(
            mid_local, cal, loads.electrified_fleet_kwh_per_year, win_h
        )
    return {k: np.clip(v, 0.0, None) for k, v in out.items()}
