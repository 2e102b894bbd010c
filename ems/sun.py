"""The sun seen from a place on Earth: position (NREL SPA) and extraterrestrial irradiance.

One implementation for the whole package: the simulator's weather (:mod:`ems.sim.weather`)
and the accounting's solar shapes (:func:`sun_shape`: the solar output of a grid region's mix
model, :mod:`ems.accounting.gridmix`, and the ``solar`` delivery profile of a contract,
:mod:`ems.accounting.profiles`) all take the sun from here. It lives outside ``ems.sim`` so
that the accounting never imports the simulator (the readings are their only contract).

The Solar Position Algorithm of Reda & Andreas splits into a **geocentric** part
(the sun's right ascension, declination and distance, the nutation and the
obliquity of the ecliptic: 200-odd periodic terms, the same for every place on
Earth, and slow) and a **topocentric** part (hour angle, parallax, elevation,
refraction, azimuth: a handful of trigonometric operations per time and place).
Here the geocentric part is computed once per UTC hour of the year (cached per
year, shared by all sites of a process) and interpolated linearly to each step;
the topocentric part is computed exactly at every step. The geocentric
quantities move smoothly (the right ascension about 1 deg per day, the
declination at most 0.4 deg per day, both with curvatures of a year's period), so
the linear interpolation between hourly values errs by less than 1e-5 deg; the
position differs from SPA evaluated in full at every step by less than 1e-4 deg
(``tests/test_sun.py`` checks this against :func:`pvlib.solarposition.spa_python`
over whole years, every 15 minutes, at the reference sites). The SPA itself claims
+/- 0.0003 deg.

Constants as pvlib uses them by default: Delta T = 67 s, 12 degC air for the
refraction, the pressure of the standard atmosphere at the site's altitude, and a
refraction of 0.5667 deg at sunrise and sunset.

References
----------
Reda, I., Andreas, A. (2004). Solar position algorithm for solar radiation
applications. Solar Energy 76(5), 577-589; revised as NREL/TP-560-34302 (2008),
whose Tables A4.2 and A4.3 are ``ems/data/sun/spa-terms.json``.
Spencer, J. W. (1971). Fourier series representation of the position of the sun.
Search 2(5), 172.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ems.datafiles import data_path

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DELTA_T_S",
    "SOLAR_CONSTANT",
    "TERMS_FILE",
    "extra_radiation",
    "geocentric_sun",
    "pressure_from_altitude",
    "solar_position",
    "sun_shape",
]

FloatArray = npt.NDArray[np.float64]

DELTA_T_S = 67.0
"""Terrestrial time minus UT1 [s] (pvlib's default)."""
SOLAR_CONSTANT = 1366.1
"""Solar constant of the extraterrestrial irradiance model [W/m2] (Spencer; pvlib's default)."""
TEMP_AIR_C = 12.0
"""Air temperature of the refraction correction [degC] (annual mean; pvlib's default)."""
REFRACTION_AT_HORIZON = 0.5667
"""Atmospheric refraction at sunrise and sunset [deg]."""
_SUN_RADIUS = 0.26667
"""Apparent radius of the sun's disc [deg]."""
_KNOT_S = 3600
"""Spacing of the geocentric knots [s]."""
_JD_UNIX_EPOCH = 2440587.5
_OBLIQUITY = (84381.448, -4680.93, -1.55, 1999.25, -51.38, -249.67, -39.05, 7.12, 27.87, 5.79, 2.45)
"""Mean obliquity of the ecliptic [arcsec], polynomial in 10 Julian millennia (eq. 24)."""
_J2000 = 2451545.0
_QUARTER_POINTS_S = np.array([450.0, 1350.0, 2250.0, 3150.0])
"""Where :func:`sun_shape` samples an hour [s after its start]."""


TERMS_FILE = data_path("sun", "spa-terms.json")
"""The SPA's periodic terms (Reda & Andreas Tables A4.2, A4.3)."""


@functools.cache
def _terms() -> tuple[list[FloatArray], list[FloatArray], list[FloatArray], FloatArray]:
    text = TERMS_FILE.read_text()
    d = json.loads(text)
    earth = d["earth"]
    arrays = [[np.asarray(s, dtype=np.float64) for s in earth[k]] for k in ("L", "B", "R")]
    return arrays[0], arrays[1], arrays[2], np.asarray(d["nutation"], dtype=np.float64)


def _series(terms: list[FloatArray], jme: FloatArray) -> FloatArray:
    """``sum_i jme**i * sum_rows A cos(B + C jme) / 1e8`` (Reda & Andreas eq. 9-11)."""
    out = np.zeros_like(jme)
    for i, t in enumerate(terms):
        s = (t[:, :1] * np.cos(t[:, 1:2] + t[:, 2:3] * jme[None, :])).sum(axis=0)
        out += s * jme**i
    res: FloatArray = out / 1e8
    return res


def _nutation(jce: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Nutation in longitude and obliquity [deg] (Reda & Andreas eq. 15-22)."""
    nut = _terms()[3]
    x = np.stack(
        [
            297.85036 + 445267.111480 * jce - 0.0019142 * jce**2 + jce**3 / 189474,
            357.52772 + 35999.050340 * jce - 0.0001603 * jce**2 - jce**3 / 300000,
            134.96298 + 477198.867398 * jce + 0.0086972 * jce**2 + jce**3 / 56250,
            93.27191 + 483202.017538 * jce - 0.0036825 * jce**2 + jce**3 / 327270,
            125.04452 - 1934.136261 * jce + 0.0020708 * jce**2 + jce**3 / 450000,
        ]
    )
    arg = np.radians(nut[:, :5] @ x)
    d_psi = ((nut[:, 5:6] + nut[:, 6:7] * jce) * np.sin(arg)).sum(axis=0) / 36e6
    d_eps = ((nut[:, 7:8] + nut[:, 8:9] * jce) * np.cos(arg)).sum(axis=0) / 36e6
    return d_psi, d_eps


def geocentric_sun(
    unix_s: FloatArray, delta_t_s: float = DELTA_T_S
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """The place-independent part of the SPA at the given times.

    Parameters
    ----------
    unix_s : ndarray [s]
        Seconds since 1970-01-01 00:00 UTC.
    delta_t_s : float [s]
        Terrestrial time minus UT1.

    Returns
    -------
    alpha : ndarray [deg]
        Geocentric right ascension of the sun, 0..360.
    delta : ndarray [deg]
        Geocentric declination.
    r_au : ndarray [AU]
        Earth-sun distance.
    delta_psi : ndarray [deg]
        Nutation in longitude.
    epsilon : ndarray [deg]
        True obliquity of the ecliptic.
    """
    big_l, big_b, big_r = _terms()[:3]
    jde = np.asarray(unix_s, dtype=np.float64) / 86400.0 + _JD_UNIX_EPOCH + delta_t_s / 86400.0
    jce = (jde - _J2000) / 36525.0
    jme = jce / 10.0
    r_au = _series(big_r, jme)
    theta = (np.degrees(_series(big_l, jme)) + 180.0) % 360.0
    beta = -np.degrees(_series(big_b, jme))
    d_psi, d_eps = _nutation(jce)
    eps0 = np.polyval(_OBLIQUITY[::-1], jme / 10.0)  # [arcsec] (eq. 24)
    eps = eps0 / 3600.0 + d_eps
    lam = np.radians(theta + d_psi - 20.4898 / (3600.0 * r_au))
    e, b = np.radians(eps), np.radians(beta)
    alpha = np.degrees(np.arctan2(np.sin(lam) * np.cos(e) - np.tan(b) * np.sin(e), np.cos(lam)))
    delta = np.degrees(np.arcsin(np.sin(b) * np.cos(e) + np.cos(b) * np.sin(e) * np.sin(lam)))
    return alpha % 360.0, delta, r_au, d_psi, eps


@functools.lru_cache(maxsize=64)
def _month_knots(month: int) -> tuple[FloatArray, ...]:
    """Hourly geocentric knots of one UTC month (months since 1970-01), both ends included."""
    m = np.datetime64("1970-01", "M") + np.arange(month, month + 2)
    t0, t1 = (float(x) for x in m.astype("datetime64[s]").astype(np.int64))
    t = np.arange(t0, t1 + _KNOT_S / 2, _KNOT_S, dtype=np.float64)
    out = (t, *geocentric_sun(t))
    for a in out:
        a.setflags(write=False)
    return out


def _knots(t_lo: float, t_hi: float) -> tuple[FloatArray, ...]:
    """Hourly geocentric knots covering ``[t_lo, t_hi]`` [s since the epoch]; alpha unwrapped."""
    m0, m1 = (
        int(np.datetime64(int(np.floor(x)), "s").astype("datetime64[M]").astype(np.int64))
        for x in (t_lo, t_hi)
    )
    parts = [_month_knots(m) for m in range(m0, m1 + 1)]
    cols = [
        np.concatenate([p[i][1:] if k else p[i] for k, p in enumerate(parts)]) for i in range(6)
    ]
    cols[1] = np.unwrap(cols[1], period=360.0)
    return tuple(cols)


def pressure_from_altitude(altitude_m: float) -> float:
    """Air pressure of the standard atmosphere at ``altitude_m`` [Pa].

    ``100 ((44331.514 - h) / 11880.516) ** (1 / 0.1902632)`` (Portland State
    Aerospace Society, "A quick derivation relating altitude to air pressure", 2004).
    """
    return float(100.0 * ((44331.514 - altitude_m) / 11880.516) ** (1.0 / 0.1902632))


def solar_position(
    unix_s: FloatArray, lat: float, lon: float, altitude_m: float = 0.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Solar position at a site (NREL SPA, geocentric part interpolated; see module docs).

    Parameters
    ----------
    unix_s : ndarray [s]
        Times, seconds since 1970-01-01 00:00 UTC.
    lat, lon : float [deg]
        Latitude (north positive) and longitude (east positive).
    altitude_m : float [m]

    Returns
    -------
    apparent_zenith : ndarray [deg]
        Topocentric zenith angle with refraction.
    zenith : ndarray [deg]
        Topocentric zenith angle without refraction.
    azimuth : ndarray [deg]
        Topocentric azimuth, east of north.
    """
    t = np.asarray(unix_s, dtype=np.float64)
    if t.size == 0:
        empty = np.zeros(0)
        return empty, empty.copy(), empty.copy()
    tk, alpha_k, delta_k, r_k, psi_k, eps_k = _knots(float(t.min()), float(t.max()))
    alpha = np.interp(t, tk, alpha_k)
    delta = np.radians(np.interp(t, tk, delta_k))
    xi = np.radians(8.794 / (3600.0 * np.interp(t, tk, r_k)))  # equatorial parallax (eq. 26)
    eps = np.radians(np.interp(t, tk, eps_k))
    jd_2000 = t / 86400.0 + (_JD_UNIX_EPOCH - _J2000)
    jc = jd_2000 / 36525.0
    nu0 = (280.46061837 + 360.98564736629 * jd_2000 + 0.000387933 * jc**2 - jc**3 / 38710000) % 360
    nu = nu0 + np.interp(t, tk, psi_k) * np.cos(eps)  # apparent sidereal time (eq. 12-14)
    h = np.radians((nu + lon - alpha) % 360.0)  # local hour angle (eq. 29)
    return _topocentric(h, delta, xi, lat, altitude_m)


def _topocentric(
    h: FloatArray, delta: FloatArray, xi: FloatArray, lat: float, altitude_m: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Zenith (apparent, true) and azimuth [deg] from hour angle, declination, parallax [rad]."""
    phi = np.radians(lat)
    u = np.arctan(0.99664719 * np.tan(phi))  # eq. 30-32
    x = np.cos(u) + altitude_m / 6378140.0 * np.cos(phi)
    y = 0.99664719 * np.sin(u) + altitude_m / 6378140.0 * np.sin(phi)
    sin_xi = np.sin(xi)
    sin_h, cos_h = np.sin(h), np.cos(h)
    # parallax in right ascension d_alpha and topocentric declination delta' (eq. 33-38), as
    # sines and cosines of their arctan2 arguments: no angle needs to be formed
    den = np.cos(delta) - x * sin_xi * cos_h
    num = -x * sin_xi * sin_h
    r = np.hypot(num, den)
    cos_da, sin_da = den / r, num / r
    num_d = (np.sin(delta) - y * sin_xi) * cos_da
    r_d = np.hypot(num_d, den)
    sin_dp, cos_dp = num_d / r_d, den / r_d
    cos_hp = cos_h * cos_da + sin_h * sin_da  # topocentric hour angle h' = h - d_alpha
    sin_hp = sin_h * cos_da - cos_h * sin_da
    sin_phi, cos_phi = np.sin(phi), np.cos(phi)
    e0 = np.degrees(np.arcsin(np.clip(sin_phi * sin_dp + cos_phi * cos_dp * cos_hp, -1, 1)))
    pressure_hpa = pressure_from_altitude(altitude_m) / 100.0
    refraction = (
        (pressure_hpa / 1010.0)
        * (283.0 / (273.0 + TEMP_AIR_C))
        * 1.02
        / (60.0 * np.tan(np.radians(e0 + 10.3 / (e0 + 5.11))))
    ) * (e0 >= -(_SUN_RADIUS + REFRACTION_AT_HORIZON))  # eq. 42, none below the horizon
    gamma = np.degrees(np.arctan2(sin_hp, cos_hp * sin_phi - (num_d / den) * cos_phi))  # eq. 45
    azimuth: FloatArray = (gamma + 180.0) % 360.0
    return 90.0 - (e0 + refraction), 90.0 - e0, azimuth


def extra_radiation(doy: FloatArray) -> FloatArray:
    """Extraterrestrial normal irradiance [W/m2] on (fractional) day of year ``doy`` (Spencer 1971).

    ``E0 = 1366.1 (1.00011 + 0.034221 cos b + 0.00128 sin b + 0.000719 cos 2b + 7.7e-5 sin 2b)``
    with the day angle ``b = 2 pi (doy - 1) / 365``.
    """
    b = (2.0 * np.pi / 365.0) * (np.asarray(doy, dtype=np.float64) - 1)
    r2 = (
        1.00011
        + 0.034221 * np.cos(b)
        + 0.00128 * np.sin(b)
        + 0.000719 * np.cos(2 * b)
        + 7.7e-05 * np.sin(2 * b)
    )
    out: FloatArray = SOLAR_CONSTANT * r2
    return out


def sun_shape(hours: pd.DatetimeIndex, lat: float, lon: float) -> FloatArray:
    """``max(mean cos(zenith), 0)`` over each hour starting at ``hours`` [-].

    The cosine of the true (unrefracted) zenith from :func:`solar_position` (NREL SPA),
    averaged over the hour's quarter points (7.5, 22.5, 37.5 and 52.5 minutes past), then
    limited to 0: the shape of the sun's path, for generation and delivery profiles.

    Parameters
    ----------
    hours : DatetimeIndex
        Hour starts, tz-aware.
    lat, lon : float [deg]
        Latitude (north positive) and longitude (east positive).

    Returns
    -------
    ndarray [-]
        One value per hour, 0 at night.
    """
    start_s = hours.tz_convert("UTC").as_unit("ns").asi8 / 1e9
    t = (start_s[:, None] + _QUARTER_POINTS_S[None, :]).ravel()
    _apparent, zenith, _azimuth = solar_position(t, lat, lon)
    cos = np.cos(np.radians(zenith)).reshape(len(hours), len(_QUARTER_POINTS_S))
    out: FloatArray = np.clip(cos.mean(axis=1), 0.0, None)
    return out
