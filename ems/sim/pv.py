"""PV arrays: plane-of-array irradiance, cell temperature, DC and AC power.

Chain per array, the models of pvlib with their defaults (each the same as the
pvlib function named, up to rounding; ``tests/test_sim_physics.py`` compares them),
written here so that a simulation does not import pvlib:

1. Plane-of-array irradiance ``poa_global`` [W/m2]: beam on the plane, Hay-Davies
   sky diffuse and isotropic ground reflection with albedo 0.2
   (:func:`pvlib.irradiance.get_total_irradiance`, ``model="haydavies"``).
2. Cell temperature [degC]: Faiman with u0 = 25 W/m2K, u1 = 6.84 W/m2K/(m/s) and
   1 m/s wind (:func:`pvlib.temperature.faiman`).
3. DC power [kW]: PVWatts ``P = kWp * poa/1000 * (1 + gamma_pdc * (T_cell - 25))``
   (:func:`pvlib.pvsystem.pvwatts_dc`), times ``(1 - losses_pct/100)`` and the
   degradation factor ``(1 - degradation_pct_per_year/100) ** years`` since
   commissioning.
4. AC power [kW]: PVWatts inverter with ``pdc0 = inverter_kw / inverter_efficiency``:
   part-load efficiency curve and clipping at ``inverter_kw``
   (:func:`pvlib.inverter.pvwatts`, reference efficiency 0.9637).

References
----------
Dobos, A. P. (2014). PVWatts Version 5 Manual. NREL/TP-6A20-62641.
Faiman, D. (2008). Assessing the outdoor operating temperature of photovoltaic
modules. Progress in Photovoltaics 16(4).
Hay, J. E., Davies, J. A. (1980). Calculations of the solar radiation incident on
an inclined surface.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt

from ems.model.site import PvArray

__all__ = ["ac_power", "degradation_factor", "in_service", "inverter_kw", "poa_global"]

FloatArray = npt.NDArray[np.float64]

ALBEDO = 0.2
"""Ground reflectance used for the reflected POA component [-]."""
FAIMAN_U0 = 25.0
"""Faiman constant heat loss factor [W/m2/K] (Faiman 2008, pvlib's default)."""
FAIMAN_U1 = 6.84
"""Faiman wind heat loss factor [W/m2/K per m/s] (Faiman 2008, pvlib's default)."""
WIND_MS = 1.0
"""Wind speed at module height assumed for the cell temperature [m/s]."""
DC_AC_RATIO = 1.1
"""Array DC rating over inverter AC rating [-] assumed when a site file gives no ``inverter_kw``
(a modelling assumption: give ``inverter_kw`` in the site file where the plant's rating is known)."""
INVERTER_ETA_REF = 0.9637
"""Reference efficiency of the PVWatts inverter curve [-] (Dobos 2014)."""


def inverter_kw(array: PvArray) -> float:
    """AC rating of the array's inverters [kW]; ``kwp /`` :data:`DC_AC_RATIO` when not given."""
    return float(array.inverter_kw if array.inverter_kw is not None else array.kwp / DC_AC_RATIO)


def poa_global(
    tilt_deg: float,
    azimuth_deg: float,
    zenith: FloatArray,
    azimuth: FloatArray,
    dni: FloatArray,
    ghi: FloatArray,
    dhi: FloatArray,
    dni_extra: FloatArray,
) -> FloatArray:
    """Plane-of-array global irradiance [W/m2] (Hay-Davies transposition).

    Parameters
    ----------
    tilt_deg, azimuth_deg : float [deg]
        Surface tilt from horizontal and azimuth east of north.
    zenith, azimuth : ndarray [deg]
        Solar apparent zenith and azimuth.
    dni, ghi, dhi, dni_extra : ndarray [W/m2]
    """
    cos_tilt = np.cos(np.radians(tilt_deg))
    cos_z = np.cos(np.radians(zenith))
    projection = np.clip(
        cos_tilt * cos_z
        + np.sin(np.radians(tilt_deg))
        * np.sin(np.radians(zenith))
        * np.cos(np.radians(azimuth - azimuth_deg)),
        -1,
        1,
    )  # cosine of the angle of incidence
    rb = np.maximum(projection, 0) / np.maximum(cos_z, 0.01745)  # beam ratio tilted / horizontal
    with np.errstate(divide="ignore", invalid="ignore"):
        ai = dni / dni_extra  # anisotropy index
    sky = np.maximum(dhi * (1 - ai) * (0.5 * (1 + cos_tilt)), 0) + np.maximum(dhi * (ai * rb), 0)
    ground = ghi * ALBEDO * (1 - cos_tilt) * 0.5
    poa = np.maximum(dni * projection, 0) + (sky + ground)
    out: FloatArray = np.clip(np.nan_to_num(poa), 0.0, None)
    return out


def degradation_factor(array: PvArray, on: dt.date) -> float:
    """Remaining power fraction [-] on date ``on``: ``(1 - d/100) ** years`` since commissioning."""
    if array.commissioned is None:
        return 1.0
    years = max((on - array.commissioned).days / 365.25, 0.0)
    return float((1.0 - array.degradation_pct_per_year / 100.0) ** years)


def in_service(array: PvArray, local_dates: npt.ArrayLike) -> FloatArray:
    """1 on and after the array's commissioning date, 0 before it [-].

    Parameters
    ----------
    array : PvArray
    local_dates : array-like of datetime64
        Site-local (naive) date or time of each step; compared by calendar date.

    Returns
    -------
    ndarray [-]
        Ones where the array exists; all ones when ``commissioned`` is not set.
    """
    d = np.asarray(local_dates, dtype="datetime64[D]")
    if array.commissioned is None:
        return np.ones(d.shape, dtype=np.float64)
    out: FloatArray = (d >= np.datetime64(array.commissioned, "D")).astype(np.float64)
    return out


def ac_power(
    array: PvArray,
    poa: FloatArray,
    temp_air: FloatArray,
    degradation: float | FloatArray = 1.0,
) -> FloatArray:
    """AC power available from the array [kW] (before outages and curtailment).

    Parameters
    ----------
    array : PvArray
    poa : ndarray [W/m2]
        Plane-of-array global irradiance.
    temp_air : ndarray [degC]
    degradation : float or ndarray [-]
        Remaining power fraction.

    Returns
    -------
    ndarray [kW]
        Inverter AC output, clipped at the inverter rating.
    """
    t_cell = temp_air + poa / (FAIMAN_U0 + FAIMAN_U1 * WIND_MS)
    pdc = poa * 0.001 * array.kwp * (1 + array.gamma_pdc * (t_cell - 25.0))
    pdc = np.clip(pdc, 0.0, None) * (1.0 - array.losses_pct / 100.0) * degradation
    pac0 = inverter_kw(array)
    out: FloatArray = np.clip(
        np.nan_to_num(
            pvwatts_inverter(pdc, pac0 / array.inverter_efficiency, array.inverter_efficiency)
        ),
        0.0,
        pac0,
    )
    return out


def pvwatts_inverter(pdc: FloatArray, pdc0: float, eta_nom: float) -> FloatArray:
    """AC output of the PVWatts inverter model [kW] (Dobos 2014, eq. 10-11).

    Efficiency ``eta = eta_nom / 0.9637 (-0.0162 z - 0.0059 / z + 0.9858)`` with
    ``z = pdc / pdc0``; output ``eta * pdc`` within ``[0, eta_nom * pdc0]``.

    Parameters
    ----------
    pdc : ndarray [kW]
        DC input.
    pdc0 : float [kW]
        DC input at the inverter's rating.
    eta_nom : float [-]
        Nominal efficiency.
    """
    zeta = pdc / pdc0
    inv = np.divide(0.0059, zeta, out=np.zeros_like(pdc, dtype=float), where=pdc != 0)
    eta = eta_nom / INVERTER_ETA_REF * (-0.0162 * zeta - inv + 0.9858)
    out: FloatArray = np.maximum(0, np.minimum(eta_nom * pdc0, eta * pdc))
    return out
