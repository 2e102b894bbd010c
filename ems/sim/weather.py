"""Weather: sun position, irradiance and air temperature per step.

Two sources: a seeded synthetic model calibrated to monthly means (default), or
an EPW / TMY3 file read with :mod:`pvlib.iotools`.

Synthetic model
---------------
1. Sun: :func:`ems.sun.solar_position` (NREL SPA) at interval midpoints and
   the extraterrestrial normal irradiance :func:`ems.sun.extra_radiation`;
   horizontal extraterrestrial irradiance ``G0h = E0 * max(cos(zenith), 0)`` [W/m2].
2. Daily clearness index ``kt_d``: a Gaussian AR(1) over days (lag-1 correlation
   ``cloud_persistence``) mapped through a scaled Beta distribution whose mean is
   the month's ``clearness_index``; then each calendar month is rescaled so its
   extraterrestrial-weighted mean equals the target (the definition of the
   monthly mean clearness index: ``sum(GHI) / sum(G0h)``).
3. Within the day a multiplicative AR(1) noise (time constant 1 h) with a
   ``G0h``-weighted mean of one per day, so the day keeps its ``kt_d``;
   ``GHI = kt_d * noise * G0h``, limited to ``KT_MAX`` of ``G0h``.
4. DNI and DHI from GHI with the Erbs decomposition (:func:`erbs`).
5. Air temperature: monthly means interpolated over the year, a cosine daily cycle
   peaking at 15:00 local, a daily AR(1) anomaly and step noise.

References
----------
Erbs, D. G., Klein, S. A., Duffie, J. A. (1982). Estimation of the diffuse radiation
fraction for hourly, daily and monthly-average global radiation. Solar Energy 28(4).
Duffie, J. A., Beckman, W. A. Solar Engineering of Thermal Processes, ch. 1-2
(daily extraterrestrial irradiation, clearness index).
"""

from __future__ import annotations

import calendar
import datetime as dt
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from ems import sun
from ems.errors import ConfigError
from ems.model.site import Location, Weather
from ems.sim.clock import calendar_fields
from ems.sim.stochastic import ar1, beta_ppf, normal_cdf

__all__ = [
    "KT_MAX",
    "daily_clearness",
    "daily_cycle",
    "erbs",
    "extraterrestrial_daily",
    "read_weather_file",
    "reference_temperature",
    "solar_geometry",
    "synthetic_weather",
]

FloatArray = npt.NDArray[np.float64]

KT_MAX = 0.82
"""Largest step clearness index allowed [-] (clear, clean air)."""
_KT_DAILY_MAX = 0.78
_KT_DAILY_STD = 0.13
_NS_PER_DAY = 86_400 * 10**9
_GSC = 1361.0
"""Solar constant of the daily extraterrestrial irradiation [W/m2] (Kopp & Lean 2011); the
step irradiance uses :data:`ems.sun.SOLAR_CONSTANT` (Spencer, 1366.1: pvlib's default)."""


def solar_geometry(
    mid_utc: pd.DatetimeIndex, location: Location
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Sun position and extraterrestrial irradiance at interval midpoints.

    Positions from :func:`ems.sun.solar_position` (NREL SPA, within 1e-4 deg of
    it evaluated in full) at every step; ``dni_extra`` from
    :func:`ems.sun.extra_radiation` on the UTC day of year with its fraction of
    a day (whole minutes).

    Returns
    -------
    zenith, azimuth : ndarray [deg]
        Apparent zenith and azimuth.
    dni_extra : ndarray [W/m2]
        Extraterrestrial normal irradiance.
    g0h : ndarray [W/m2]
        Extraterrestrial horizontal irradiance ``dni_extra * max(cos(zenith), 0)``
        (true, not apparent, zenith).
    """
    ns = mid_utc.as_unit("ns").asi8
    zenith, true_zenith, azimuth = sun.solar_position(
        ns / 1e9, location.lat, location.lon, location.altitude_m
    )
    f = calendar_fields(ns)
    doy = f["doy"] + (f["hour"] + f["minute"] / 60.0) / 24.0
    dni_extra = sun.extra_radiation(doy)
    g0h = dni_extra * np.clip(np.cos(np.radians(true_zenith)), 0.0, None)
    return zenith, azimuth, dni_extra, g0h


def erbs(
    ghi: FloatArray, zenith: FloatArray, dni_extra: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """DNI and DHI [W/m2] from GHI with the Erbs decomposition (Erbs et al. 1982).

    The clearness index ``kt = GHI / (E0 max(cos z, 0.065))`` (limited to 0..1) gives
    the diffuse fraction ``1 - 0.09 kt`` up to 0.22, a quartic in ``kt`` up to 0.8 and
    0.165 above; ``DNI = (GHI - DHI) / cos z``, set to zero (and ``DHI = GHI``) for
    zenith above 87 deg or a negative result. The same as
    :func:`pvlib.irradiance.erbs` with its defaults.

    Parameters
    ----------
    ghi : ndarray [W/m2]
    zenith : ndarray [deg]
        Solar (apparent) zenith.
    dni_extra : ndarray [W/m2]
        Extraterrestrial normal irradiance.

    Returns
    -------
    dni, dhi : ndarray [W/m2]
    """
    cos_z = np.cos(np.radians(zenith))
    kt = np.minimum(np.maximum(ghi / (dni_extra * np.maximum(cos_z, 0.065)), 0), 1)
    df = 1 - 0.09 * kt
    df = np.where(
        (kt > 0.22) & (kt <= 0.8),
        0.9511 - 0.1604 * kt + 4.388 * kt**2 - 16.638 * kt**3 + 12.336 * kt**4,
        df,
    )
    df = np.where(kt > 0.8, 0.165, df)
    dhi = df * ghi
    with np.errstate(divide="ignore", invalid="ignore"):
        dni = (ghi - dhi) / cos_z
    bad = (zenith > 87) | (ghi < 0) | (dni < 0)
    dni_out: FloatArray = np.nan_to_num(np.where(bad, 0, dni))
    dhi_out: FloatArray = np.nan_to_num(np.where(bad, ghi, dhi))
    return dni_out, dhi_out


def extraterrestrial_daily(days: pd.DatetimeIndex, lat: float) -> FloatArray:
    """Daily extraterrestrial irradiation on a horizontal plane [Wh/m2/day].

    Duffie & Beckman eq. 1.10.3 with Cooper's declination.
    """
    doy = np.asarray(days.day_of_year, dtype=float)
    phi = np.radians(lat)
    decl = np.radians(23.45) * np.sin(2 * np.pi * (284 + doy) / 365.0)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    e0 = 1 + 0.033 * np.cos(2 * np.pi * doy / 365.0)
    h0 = (
        (24 / np.pi)
        * _GSC
        * e0
        * (np.cos(phi) * np.cos(decl) * np.sin(ws) + ws * np.sin(phi) * np.sin(decl))
    )
    out: FloatArray = np.clip(h0, 0.0, None)
    return out


def daily_clearness(
    rng: np.random.Generator,
    days: pd.DatetimeIndex,
    kt_monthly: list[float],
    lat: float,
    persistence: float,
) -> FloatArray:
    """Daily clearness index for whole calendar months, calibrated per month.

    Parameters
    ----------
    rng : Generator
    days : DatetimeIndex
        Whole calendar months of local dates (daily frequency).
    kt_monthly : list of 12 float [-]
        Target monthly mean clearness index, Jan..Dec.
    lat : float [deg]
    persistence : float [-]
        Lag-1 autocorrelation of the daily cloudiness.

    Returns
    -------
    ndarray [-]
        ``kt_d``; per month ``sum(kt_d * H0_d) / sum(H0_d)`` equals the target
        (where the cap allows).
    """
    n = len(days)
    z = ar1(rng, n, persistence)
    u = normal_cdf(z)
    month = np.asarray(days.month)
    target = np.clip(np.asarray(kt_monthly, dtype=float)[month - 1], 0.02, _KT_DAILY_MAX * 0.97)
    m = target / _KT_DAILY_MAX
    var = min((_KT_DAILY_STD / _KT_DAILY_MAX) ** 2, 0.9 * float(np.min(m * (1 - m))))
    k = m * (1 - m) / var - 1.0
    kt = _KT_DAILY_MAX * beta_ppf(u, m * k, (1 - m) * k)
    h0 = extraterrestrial_daily(days, lat)
    key = np.asarray(days.year) * 12 + month
    for _ in range(4):  # rescale each month to its target; the cap makes it iterative
        for mk in np.unique(key):
            sel = key == mk
            w = h0[sel]
            now = float(np.sum(kt[sel] * w) / max(np.sum(w), 1e-9))
            if now > 0:
                kt[sel] = np.minimum(kt[sel] * target[sel][0] / now, _KT_DAILY_MAX)
    out: FloatArray = np.asarray(kt, dtype=float)
    return out


def _month_days(start: dt.date, end: dt.date) -> pd.DatetimeIndex:
    first = dt.date(start.year, start.month, 1)
    last_month_end = dt.date(
        (end - dt.timedelta(days=1)).year,
        (end - dt.timedelta(days=1)).month,
        calendar.monthrange((end - dt.timedelta(days=1)).year, (end - dt.timedelta(days=1)).month)[
            1
        ],
    )
    return pd.date_range(first, last_month_end, freq="D")


def daily_cycle(hour: FloatArray, amplitude_c: float) -> FloatArray:
    """Daily cycle of the air temperature about its mean [K]: a cosine peaking at 15:00.

    Parameters
    ----------
    hour : ndarray [h]
        Local hour of the day (with its fraction).
    amplitude_c : float [K]
        Peak-to-peak amplitude (``temp_daily_amplitude_c``).
    """
    out: FloatArray = 0.5 * amplitude_c * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
    return out


def reference_temperature(weather: Weather, ref_local: pd.DatetimeIndex) -> FloatArray:
    """Noise-free synthetic air temperature [degC] at the hourly midpoints ``ref_local``.

    The monthly means interpolated over the year plus :func:`daily_cycle` at the middle of
    each local hour: the basis of the ``annual_*`` scaling of loads and heat.
    """
    if weather.temp_air_c is None:
        raise ConfigError("synthetic weather needs 'temp_air_c'")
    tm = _monthly_interp(weather.temp_air_c, ref_local)
    hour = np.asarray(ref_local.hour, dtype=float) + 0.5
    out: FloatArray = tm + daily_cycle(hour, weather.temp_daily_amplitude_c)
    return out


def _monthly_interp(values: list[float], local: pd.DatetimeIndex) -> FloatArray:
    """Interpolate 12 monthly means periodically over the year at ``local`` times."""
    wall = local.tz_localize(None) if local.tz is not None else local
    f = calendar_fields(wall.as_unit("ns").asi8)
    return _monthly_at(values, f["doy"], f["hour"])


def _monthly_at(values: list[float], day_of_year: FloatArray, hour: FloatArray) -> FloatArray:
    """:func:`_monthly_interp` at local day of year and (whole) hour [-]."""
    doy = day_of_year + hour / 24.0
    mid = np.array([15.5, 45, 74.5, 105, 135.5, 166, 196.5, 227.5, 258, 288.5, 319, 349.5])
    xs = np.concatenate([mid - 365.0, mid, mid + 365.0])
    ys = np.tile(np.asarray(values, dtype=float), 3)
    out: FloatArray = np.interp(doy, xs, ys)
    return out


def synthetic_weather(
    rng: np.random.Generator,
    mid_local: pd.DatetimeIndex,
    dt_h: float,
    location: Location,
    weather: Weather,
    zenith: FloatArray,
    dni_extra: FloatArray,
    g0h: FloatArray,
) -> dict[str, FloatArray]:
    """Synthetic GHI, DNI, DHI [W/m2] and air temperature [degC] per step.

    See the module docs for the model. ``rng`` is consumed in a fixed order.
    """
    if weather.clearness_index is None or weather.temp_air_c is None:
        raise ConfigError("synthetic weather needs 'clearness_index' and 'temp_air_c'")
    start = mid_local[0].date()
    end = mid_local[-1].date() + dt.timedelta(days=1)
    days = _month_days(start, end)
    kt_days = daily_clearness(
        rng, days, weather.clearness_index, location.lat, weather.cloud_persistence
    )
    temp_anom_days = 1.8 * ar1(rng, len(days), 0.7)
    # map each step to its local day
    wall_ns = mid_local.tz_localize(None).as_unit("ns").asi8
    f = calendar_fields(wall_ns)
    di = wall_ns // _NS_PER_DAY - days[0].as_unit("ns").value // _NS_PER_DAY
    kt_d = kt_days[di]
    # intra-day variability, time constant 1 h, stronger on broken-cloud days
    rho = float(np.exp(-dt_h / 1.0))
    amp = 0.35 * 4.0 * (kt_d / _KT_DAILY_MAX) * (1 - kt_d / _KT_DAILY_MAX)
    noise = np.exp(amp * ar1(rng, len(mid_local), rho))
    # normalise per day: G0h-weighted mean of the noise = 1
    w = noise * g0h
    num = np.bincount(di, weights=w, minlength=len(days))
    den = np.bincount(di, weights=g0h, minlength=len(days))
    scale = np.where(num > 0, den / np.where(num > 0, num, 1.0), 1.0)
    kt_step = np.minimum(kt_d * noise * scale[di], KT_MAX)
    ghi = kt_step * g0h
    e0_of_day = sun.extra_radiation(np.arange(1.0, 367.0))  # erbs takes E0 of the local day
    dni, dhi = erbs(ghi, zenith, e0_of_day[f["doy"].astype(np.int64) - 1])
    # temperature
    tmean = _monthly_at(weather.temp_air_c, f["doy"], f["hour"])
    hour = f["hour"] + f["minute"] / 60.0
    cycle = daily_cycle(hour, weather.temp_daily_amplitude_c)
    clear_amp = 0.6 + 0.8 * (kt_d - 0.5)  # clear days swing more
    temp = tmean + cycle * clear_amp + temp_anom_days[di] + 0.3 * ar1(rng, len(mid_local), rho)
    return {
        "ghi": ghi,
        "dni": dni,
        "dhi": dhi,
        "temp_air": temp,
        "kt_day": kt_d,
        "dni_extra": dni_extra,
        "g0h": g0h,
    }


_FILE_COLUMNS = ("ghi", "dni", "dhi", "temp_air")
"""What a weather file must give: irradiance [W/m2] and air temperature [degC]."""


def read_weather_file(
    path: str | Path, kind: str, mid_local: pd.DatetimeIndex
) -> dict[str, FloatArray]:
    """Read an EPW or TMY3 file and map it onto the steps.

    The file's typical year is placed on the simulated years by day of year and
    hour (its own year is ignored); values are interpolated linearly between the
    middles of the file's hours (EPW hours 1-24 end at the stated hour, in local
    standard time; pvlib labels them by their start).

    Parameters
    ----------
    path : str or Path
    kind : {"epw", "tmy3"}
    mid_local : DatetimeIndex
        Step midpoints in the site's zone.

    Returns
    -------
    dict of ndarray
        ``ghi``, ``dni``, ``dhi`` [W/m2] and ``temp_air`` [degC].
    """
    data = _read_typical_year(Path(path), kind)
    idx = pd.DatetimeIndex(data.index)
    hoy_file, order = _file_hours(idx)
    hoy = _step_hours(mid_local, idx.tz)
    out: dict[str, FloatArray] = {}
    for c in _FILE_COLUMNS:
        vals = data[c].to_numpy(dtype=float)[order]
        out[c] = np.interp(hoy, hoy_file, vals, period=8760.0)
    for c in ("ghi", "dni", "dhi"):
        out[c] = np.clip(out[c], 0.0, None)
    return out


def _read_typical_year(p: Path, kind: str) -> pd.DataFrame:
    """The file's hours (coerced to the non-leap year 2019) with pvlib's column names.

    Raises
    ------
    ConfigError
        No file, a file pvlib cannot read, or one without :data:`_FILE_COLUMNS`.
    """
    import pvlib  # only weather files need it (its import takes a third of a second)

    if not p.exists():
        raise ConfigError(f"weather file: expected an {kind.upper()} file, found nothing at {p}")
    try:
        if kind == "epw":
            data, _meta = pvlib.iotools.read_epw(str(p), coerce_year=2019)
        else:
            data, _meta = pvlib.iotools.read_tmy3(str(p), coerce_year=2019, map_variables=True)
    except Exception as exc:
        raise ConfigError(
            f"weather file {p}: expected a readable {kind.upper()} file; {exc}"
        ) from exc
    need = list(_FILE_COLUMNS)
    missing = [c for c in need if c not in data.columns]
    if missing:
        raise ConfigError(f"weather file {p}: expected columns {need}, missing {missing}")
    frame: pd.DataFrame = data
    return frame


def _file_hours(idx: pd.DatetimeIndex) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """Hour of the typical year [h] at the middle of each file hour, sorted; and the sort order.

    pvlib labels each hour of the file by its start.
    """
    naive = idx.tz_localize(None) if idx.tz is not None else idx
    hoy = np.asarray((naive - pd.Timestamp(2019, 1, 1)) / pd.Timedelta(hours=1), dtype=float) + 0.5
    order = np.argsort(hoy)
    return hoy[order], order


def _step_hours(mid_local: pd.DatetimeIndex, file_tz: dt.tzinfo | None) -> FloatArray:
    """Hour of the typical year [h] of each step, on the file's clock (local standard time: no DST).

    Day 366 of a leap year takes the file's day 365.
    """
    std_offset = file_tz.utcoffset(None) if file_tz is not None else None
    if std_offset is not None:
        mid = (mid_local.tz_convert("UTC") + std_offset).tz_localize(None)
    else:
        mid = mid_local.tz_localize(None)
    doy = np.minimum(np.asarray(mid.day_of_year), 365)
    out: FloatArray = (doy - 1) * 24 + np.asarray(mid.hour) + np.asarray(mid.minute) / 60.0
    return out
