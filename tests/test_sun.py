"""The sun (of the simulation and of the accounting's solar shapes) against pvlib: NREL SPA
position, extraterrestrial irradiance and the hourly shape of the sun's path.

:mod:`ems.sun` evaluates the geocentric part of the SPA hourly and interpolates
it; its documented bound is 1e-4 deg from SPA evaluated in full at every step
(pvlib's ``spa_python``), checked here over whole years every 15 minutes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib
import pytest

from ems import sun
from ems.accounting.gridmix import year_hours

BOUND_DEG = 1e-4

PLACES = {  # lat, lon, altitude [m]
    "qingdao": (36.07, 120.38, 20.0),
    "guiyang": (26.65, 106.63, 1100.0),
    "velenje": (46.36, 15.11, 400.0),
    "sydney": (-33.87, 151.21, 0.0),
    "reykjavik": (64.15, -21.94, 50.0),
    "quito": (-0.18, -78.47, 2850.0),
}


def _unix(idx: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray((idx - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1), dtype=float)


def _separation_deg(z1, a1, z2, a2) -> np.ndarray:
    """Angle between two directions on the sky [deg]."""

    def vec(z, a):
        z, a = np.radians(z), np.radians(a)
        return np.stack([np.sin(z) * np.cos(a), np.sin(z) * np.sin(a), np.cos(z)])

    dot = (vec(z1, a1) * vec(z2, a2)).sum(axis=0)
    return np.degrees(np.arccos(np.clip(dot, -1.0, 1.0)))


@pytest.mark.parametrize("place", sorted(PLACES))
def test_position_within_bound_of_full_spa_over_a_year(place):
    lat, lon, alt = PLACES[place]
    # a local year seen from UTC+8: starts on 31 December, crosses a month and a year end
    idx = pd.date_range("2023-12-31 16:07:30", "2025-01-01 00:00", freq="15min", tz="UTC")
    ref = pvlib.solarposition.get_solarposition(idx, lat, lon, altitude=alt)
    app, true, az = sun.solar_position(_unix(idx), lat, lon, alt)
    assert np.abs(app - ref["apparent_zenith"].to_numpy()).max() < BOUND_DEG
    assert np.abs(true - ref["zenith"].to_numpy()).max() < BOUND_DEG
    sep = _separation_deg(true, az, ref["zenith"].to_numpy(), ref["azimuth"].to_numpy())
    assert sep.max() < BOUND_DEG
    assert ((az >= 0) & (az < 360)).all()


def test_position_at_one_minute_across_the_equinox():
    """Right ascension wraps from 360 to 0 deg at the March equinox: no jump."""
    idx = pd.date_range("2024-03-19 00:00:30", "2024-03-22", freq="1min", tz="UTC")
    lat, lon, alt = PLACES["velenje"]
    ref = pvlib.solarposition.get_solarposition(idx, lat, lon, altitude=alt)
    app, _true, az = sun.solar_position(_unix(idx), lat, lon, alt)
    assert np.abs(app - ref["apparent_zenith"].to_numpy()).max() < BOUND_DEG
    sep = _separation_deg(app, az, ref["apparent_zenith"].to_numpy(), ref["azimuth"].to_numpy())
    assert sep.max() < BOUND_DEG


def test_geocentric_part_equals_pvlib_spa():
    """The hourly knots themselves are SPA (pvlib's sst output: sidereal time, RA, declination)."""
    t = _unix(pd.date_range("2024-01-01", "2024-12-31", freq="37h", tz="UTC"))
    alpha, delta, r_au, _psi, _eps = sun.geocentric_sun(t)
    _v, alpha_ref, delta_ref = pvlib.spa.solar_position_numpy(
        t, 0.0, 0.0, 0.0, 1013.25, 12.0, 67.0, 0.5667, 1, sst=True
    )
    assert np.abs(alpha - alpha_ref).max() < 1e-9
    assert np.abs(delta - delta_ref).max() < 1e-9
    (r_ref,) = pvlib.spa.solar_position_numpy(
        t, 0.0, 0.0, 0.0, 1013.25, 12.0, 67.0, 0.5667, 1, esd=True
    )
    assert np.abs(r_au - r_ref).max() < 1e-12


def test_extra_radiation_and_pressure_equal_pvlib():
    doy = np.linspace(1.0, 366.99, 5000)
    assert np.array_equal(sun.extra_radiation(doy), pvlib.irradiance.get_extra_radiation(doy))
    for alt in (0.0, 20.0, 1100.0, 2850.0):
        assert sun.pressure_from_altitude(alt) == pytest.approx(
            pvlib.atmosphere.alt2pres(alt), rel=1e-15
        )


def test_empty_and_single_time():
    app, true, az = sun.solar_position(np.zeros(0), 36.0, 120.0)
    assert app.shape == true.shape == az.shape == (0,)
    t = _unix(pd.DatetimeIndex(["2024-06-21 04:00"], tz="UTC"))
    app, _true, _az = sun.solar_position(t, 36.07, 120.38, 20.0)
    ref = pvlib.solarposition.get_solarposition(
        pd.DatetimeIndex(["2024-06-21 04:00"], tz="UTC"), 36.07, 120.38, altitude=20.0
    )
    assert app[0] == pytest.approx(ref["apparent_zenith"].iloc[0], abs=BOUND_DEG)


@pytest.mark.parametrize(
    ("lat", "lon", "tz"),
    [(36.1, 120.4, "Asia/Shanghai"), (46.36, 15.11, "Europe/Ljubljana"), (-33.9, 18.4, "Africa/Johannesburg")],
)
def test_sun_shape_is_the_mean_cosine_of_the_spa_zenith(lat, lon, tz):
    """The hourly shape of solar output (grid mix models, delivery profiles): the cosine of
    pvlib's SPA zenith at the hour's quarter points, averaged and limited to 0."""
    hours = year_hours(2024, tz)
    ours = sun.sun_shape(hours, lat, lon)
    spa = np.mean(
        [
            np.cos(np.radians(pvlib.solarposition.get_solarposition(
                hours + pd.Timedelta(minutes=m), lat, lon, method="nrel_numpy")["zenith"].to_numpy()))
            for m in (7.5, 22.5, 37.5, 52.5)
        ],
        axis=0,
    ).clip(0.0)
    assert ours.shape == (len(hours),)
    assert np.abs(ours - spa).max() < 2e-6  # cos(zenith): 1e-4 deg of zenith at most
    assert ours.sum() == pytest.approx(spa.sum(), rel=1e-7)
    assert sun.sun_shape(hours[:0], lat, lon).shape == (0,)
